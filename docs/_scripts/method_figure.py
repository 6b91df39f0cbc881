"""Draw the schematic of the HISTEX network and its disk loss for the "The method" page.

Run from the repository root:

    python docs/_scripts/method_figure.py

It writes docs/_images/method.png (pure matplotlib, deterministic, a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

OUT = Path(__file__).resolve().parents[1] / "_images" / "method.png"

IMAGE = "#c0568a"  # image path
GENE = "#2f7d4f"  # expression path
FUSE = "#4a5fa8"  # fusion
GREY = "#444444"
S = 1.15  # scale of every font size
plt.rcParams.update({"font.size": 9, "font.family": "DejaVu Sans", "mathtext.fontset": "dejavusans"})


def box(ax, x, y, w, h, text, color, *, fill=0.12, fontsize=S * 9, weight="normal", text_y=None):
    """A rounded box with centred text; returns its (x, y, w, h)."""
    face = to_rgba(color, fill)
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", fc=face, ec=color, lw=1.4, zorder=2)
    )
    ty = y + h / 2 if text_y is None else text_y
    ax.text(x + w / 2, ty, text, ha="center", va="center", fontsize=fontsize, weight=weight, zorder=3, color="black")
    return x, y, w, h


def arrow(ax, start, end, color=GREY, *, rad=0.0, lw=1.5, style="-|>", label=None, label_xy=None, **text):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=12,
            lw=lw,
            color=color,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=0,
            shrinkB=0,
            zorder=4,
        )
    )
    if label is not None:
        ax.text(
            *label_xy, label, color=color, zorder=5, **{"ha": "center", "va": "center", "fontsize": S * 8.5, **text}
        )


def token_grid(ax, x, y, size, n, values, cmap, edge="white"):
    """An n x n grid of squares of edge ``size / n`` with lower-left corner (x, y), coloured by ``values``."""
    cell = size / n
    colours = plt.get_cmap(cmap)(values)
    for r in range(n):
        for c in range(n):
            ax.add_patch(
                Rectangle(
                    (x + c * cell, y + (n - 1 - r) * cell), cell, cell, fc=colours[r, c], ec=edge, lw=0.6, zorder=3
                )
            )


def he_patch(rng, n=96):
    """A fake H&E texture: pink stroma with purple nuclei."""
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.ones((n, n, 3)) * np.array([0.93, 0.72, 0.82])
    img += rng.normal(0, 0.025, (n, n, 3))
    for _ in range(55):
        cy, cx = rng.uniform(0, n, 2)
        r = rng.uniform(2.0, 3.6)
        nucleus = (yy - cy) ** 2 / r**2 + (xx - cx) ** 2 / (0.75 * r) ** 2 < 1
        img[nucleus] = np.array([0.42, 0.26, 0.58]) + rng.normal(0, 0.03, 3)
    return np.clip(img, 0, 1)


def network_panel(ax, rng):
    ax.set_xlim(0, 16)
    ax.set_ylim(-0.5, 6.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(0.0, 6.45, "a   The network (one 7 × 7 window of 8 µm bins)", fontsize=S * 11.5, weight="bold", va="center")

    # --- inputs ---------------------------------------------------------------------------------------------------
    ax.imshow(he_patch(rng), extent=(0.2, 2.4, 3.5, 5.7), zorder=2, interpolation="bilinear")
    ax.add_patch(Rectangle((0.2, 3.5), 2.2, 2.2, fill=False, ec=IMAGE, lw=1.4, zorder=3))
    ax.text(1.3, 3.25, "H&E, full resolution", ha="center", va="center", fontsize=S * 9)

    # spots on a hexagonal lattice, with the midpoints of neighbours
    pitch = 0.7
    centres = []
    for i in range(3):
        for j in range(3):
            centres.append((0.45 + j * pitch + (pitch / 2 if i % 2 else 0), 0.75 + i * pitch * np.sqrt(3) / 2))
    centres = np.array(centres)
    spot_values = rng.uniform(0.2, 0.9, len(centres))
    for (cx, cy), v in zip(centres, spot_values, strict=True):
        ax.add_patch(Circle((cx, cy), 0.19, fc=plt.get_cmap("Greens")(v), ec=GENE, lw=1.0, zorder=3))
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    for i, j in zip(*np.nonzero((d > 0) & (d < 1.2 * pitch)), strict=True):
        if i < j:
            mid = (centres[i] + centres[j]) / 2
            ax.add_patch(Circle(mid, 0.06, fc=GENE, ec="none", zorder=3))
    ax.text(1.3, 0.22, "spots + midpoints", ha="center", va="center", fontsize=S * 9)

    # --- encoders -------------------------------------------------------------------------------------------------
    box(ax, 2.95, 4.05, 1.95, 1.1, "image encoder\n(UNI, …, texture)\n+ mean colour", IMAGE, fontsize=S * 8.5)
    arrow(ax, (2.45, 4.6), (2.95, 4.6), IMAGE)
    box(ax, 2.95, 1.05, 1.95, 1.1, "k = 5 context\npoints nearest\nto the window", GENE, fontsize=S * 8.5)
    arrow(ax, (2.45, 1.6), (2.95, 1.6), GENE)

    # --- tokens ---------------------------------------------------------------------------------------------------
    token_grid(ax, 5.45, 3.75, 1.7, 7, rng.uniform(0.25, 0.85, (7, 7)), "RdPu")
    ax.text(6.3, 3.45, "49 image tokens\n(features per bin)", ha="center", va="top", fontsize=S * 8.5)
    arrow(ax, (4.95, 4.6), (5.4, 4.6), IMAGE)
    for i in range(5):
        vals = rng.uniform(0.2, 0.95, 8)
        for g, v in enumerate(vals):
            ax.add_patch(
                Rectangle(
                    (5.55 + i * 0.3, 0.75 + g * 0.2),
                    0.22,
                    0.2,
                    fc=plt.get_cmap("Greens")(v),
                    ec="white",
                    lw=0.5,
                    zorder=3,
                )
            )
    ax.text(6.3, 0.55, "5 gene tokens\n(G genes each)", ha="center", va="top", fontsize=S * 8.5)
    arrow(ax, (4.95, 1.6), (5.45, 1.6), GENE)

    # --- fusion ---------------------------------------------------------------------------------------------------
    fx, fw = 7.7, 3.85
    ax.add_patch(
        FancyBboxPatch(
            (fx, 0.55), fw, 5.0, boxstyle="round,pad=0.02,rounding_size=0.15", fc="#f3f5fb", ec=FUSE, lw=1.6, zorder=1
        )
    )
    ax.text(fx + fw / 2, 5.2, "fusion block  × 2", ha="center", va="center", fontsize=S * 10, weight="bold", color=FUSE)
    box(ax, fx + 0.15, 3.75, 2.0, 1.1, "C: image → gene\nimage tokens read\nthe gene tokens", IMAGE, fontsize=S * 7.6)
    box(ax, fx + 0.15, 1.0, 2.0, 1.1, "D: gene → image\ngene tokens read\nthe image tokens", GENE, fontsize=S * 7.6)
    box(ax, fx + 2.45, 2.3, 1.2, 1.3, "CA(C → D)\n+ linear\n(residual)\n= fused\ntokens", FUSE, fontsize=S * 7.8)
    arrow(ax, (7.2, 4.6), (fx + 0.15, 4.3), IMAGE)
    arrow(ax, (7.2, 4.4), (fx + 0.15, 1.75), IMAGE, rad=-0.05)
    arrow(ax, (7.1, 1.55), (fx + 0.15, 1.55), GENE)
    arrow(ax, (7.1, 1.75), (fx + 0.15, 4.05), GENE, rad=0.05)
    arrow(ax, (fx + 2.15, 4.3), (fx + 2.75, 3.6), FUSE)
    arrow(ax, (fx + 2.15, 1.55), (fx + 2.75, 2.3), FUSE)
    ax.text(
        fx + fw / 2, 0.75, "cross-attention: 8 heads, 128 dims", ha="center", va="center", fontsize=S * 8, color=FUSE
    )

    # --- MLP and head ---------------------------------------------------------------------------------------------
    mx, mw = 11.9, 1.75
    box(ax, mx, 2.0, mw, 1.9, "concatenate\nper bin\n↓\nMLP\n↓\nlinear head,\nELU + 0.01", FUSE, fontsize=S * 8.3)
    arrow(ax, (fx + fw, 2.95), (mx, 2.95), FUSE)
    # each bin's own image token goes to the MLP as well
    top = 6.0
    ax.plot([6.3, 6.3, mx + mw / 2, mx + mw / 2], [5.5, top, top, 4.2], color=IMAGE, lw=1.3, zorder=4)
    arrow(ax, (mx + mw / 2, 4.25), (mx + mw / 2, 3.9), IMAGE, lw=1.3)
    ax.text(9.6, top + 0.17, "each bin's own image token", ha="center", va="bottom", fontsize=S * 8.3, color=IMAGE)
    # the mean gene token (variant "histex")
    low = 0.05
    ax.plot(
        [7.25, 7.45, 7.45, mx + mw / 2, mx + mw / 2], [0.9, 0.9, low, low, 1.7], color=GENE, lw=1.3, ls="--", zorder=4
    )
    arrow(ax, (mx + mw / 2, 1.65), (mx + mw / 2, 2.0), GENE, lw=1.3)
    ax.text(
        9.6,
        low - 0.17,
        'mean of the gene tokens (variant "histex")',
        ha="center",
        va="top",
        fontsize=S * 8.3,
        color=GENE,
    )

    # --- output ---------------------------------------------------------------------------------------------------
    yy, xx = np.mgrid[0:7, 0:7]
    out = 0.5 + 0.35 * np.sin(xx / 2.0) * np.cos(yy / 2.5)
    token_grid(ax, 14.2, 2.1, 1.7, 7, out, "viridis")
    arrow(ax, (mx + mw, 2.95), (14.15, 2.95), GREY)
    ax.text(15.05, 4.15, "expression of\nthe 49 bins\n(G genes)", ha="center", va="bottom", fontsize=S * 8.5)
    ax.text(15.05, 1.85, "8 µm bins", ha="center", va="top", fontsize=S * 8.5)


def loss_panel(ax, rng):
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 5.1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(0.0, 4.95, "b   The disk loss (training, for each spot)", fontsize=S * 11.5, weight="bold", va="center")

    # bin grid with a spot disk
    n, cell, x0, y0 = 9, 0.47, 0.35, 0.2
    radius = 55 / 2 / 8  # spot radius in bins
    centre = np.array([4.35, 4.6])  # (col, row) of the spot centre in bins, not on a bin centre
    values = np.clip(0.55 + 0.25 * rng.normal(size=(n, n)), 0.05, 0.95)
    inside_count = 0
    for r in range(n):
        for c in range(n):
            inside = (c + 0.5 - centre[0]) ** 2 + (r + 0.5 - centre[1]) ** 2 <= radius**2
            inside_count += inside
            fc = plt.get_cmap("viridis")(values[r, c]) if inside else "#eeeeee"
            ax.add_patch(Rectangle((x0 + c * cell, y0 + r * cell), cell, cell, fc=fc, ec="white", lw=0.8, zorder=2))
    ax.add_patch(
        Circle((x0 + centre[0] * cell, y0 + centre[1] * cell), radius * cell, fill=False, ec=GENE, lw=2.2, zorder=3)
    )
    ax.plot(x0 + centre[0] * cell, y0 + centre[1] * cell, "+", color="white", ms=9, mew=2, zorder=4)
    for text, point, y, color in (
        ("spot disk, 55 µm", centre + radius * 0.71, 4.3, GENE),
        ("8 µm bin", (8.5, 0.5), 0.45, GREY),
    ):
        ax.annotate(
            text,
            (x0 + point[0] * cell, y0 + point[1] * cell),
            (4.95, y),
            fontsize=S * 8.5,
            color=color,
            ha="left",
            va="center",
            arrowprops={"arrowstyle": "-", "color": color, "lw": 1.0},
        )
    ax.text(
        4.95,
        2.35,
        f"predicted bins\nwhose centres\nlie in the disk\n({inside_count} here)",
        fontsize=S * 8.5,
        va="center",
    )

    # aggregation and comparison
    box(
        ax,
        7.3,
        1.6,
        2.6,
        1.6,
        "mean over the\ndisk's bins\n" + r"$\hat{y}_s = \frac{1}{|B_s|}\sum_{b \in B_s} \hat{y}_b$",
        FUSE,
        fontsize=S * 8.5,
    )
    arrow(ax, (6.85, 2.4), (7.3, 2.4), FUSE)
    box(ax, 7.3, 3.55, 2.6, 1.0, "spot's counts, min-max\nscaled per gene: $y_s$", GENE, fontsize=S * 8.5)
    box(
        ax,
        10.45,
        2.15,
        2.3,
        1.3,
        "loss = mean over\ngenes and spots of\n" + r"$(\hat{y}_s - y_s)^2$",
        GREY,
        fontsize=S * 8.5,
        fill=0.06,
    )
    arrow(ax, (9.9, 2.4), (10.45, 2.6), GREY)
    arrow(ax, (9.9, 4.05), (10.45, 3.1), GREY)

    # ensemble and output
    box(
        ax,
        13.2,
        1.95,
        2.75,
        1.7,
        'ensemble of 5 seeded\nstates predicts every\nin-tissue bin:\nmedian → X\nstd → layers["ensemble_sd"]',
        FUSE,
        fontsize=S * 8.2,
    )
    arrow(ax, (12.75, 2.8), (13.2, 2.8), GREY)
    ax.text(
        14.575,
        1.7,
        "X and std in counts per bin\n(÷ bins per spot disk)",
        ha="center",
        va="top",
        fontsize=S * 8.2,
        color=GREY,
    )


def main() -> None:
    rng = np.random.default_rng(0)
    fig = plt.figure(figsize=(10.7, 8.3), dpi=150, facecolor="white")
    ax_net = fig.add_axes((0.01, 0.42, 0.98, 0.57))
    ax_loss = fig.add_axes((0.01, 0.0, 0.98, 0.41))
    network_panel(ax_net, rng)
    loss_panel(ax_loss, rng)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=150, facecolor="white")
    plt.close(fig)
    print(f"wrote {OUT.name}")


if __name__ == "__main__":
    main()
