"""Gene maps: measured spots beside super-resolved bins (and ground truth when there is one), and their spread."""

from __future__ import annotations

import logging

import numpy as np

from histex.pl._underlay import check_alpha, draw_underlay, underlay

logger = logging.getLogger("histex")


def raster(table, values: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Place per-bin values on the bin grid by ``obs["array_row"]``/``obs["array_col"]``; NaN where no bin is."""
    rows = table.obs["array_row"].to_numpy()
    cols = table.obs["array_col"].to_numpy()
    if shape is None:
        shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    out = np.full(shape, np.nan, dtype=np.float32)
    keep = (rows < shape[0]) & (cols < shape[1])
    out[rows[keep], cols[keep]] = np.asarray(values, dtype=np.float32)[keep]
    return out


def _genes_in(table, genes: str | list[str], table_key: str) -> list[str]:
    """The genes as a list, checked to be in the table."""
    genes = [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in table.var_names]
    if missing:
        raise ValueError(f"Gene(s) {missing} are not in table {table_key!r}.")
    return genes


def _column(table, gene: str, layer: str | None = None) -> np.ndarray:
    x = table[:, gene].layers[layer] if layer else table[:, gene].X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x).ravel()


def genes(
    sdata,
    genes: str | list[str],
    *,
    table_key: str = "histex",
    truth_key: str | None = None,
    spots: bool = True,
    image: bool = True,
    image_key: str | None = None,
    alpha: float = 0.8,
    cmap: str = "viridis",
    panel_size: float = 3.2,
    save: str | None = None,
):
    """Plot genes as measured by the spots, as super-resolved on bins, and as ground truth when given, over the H&E.

    One row per gene, one colour scale per row (counts per 8 µm bin; spots are shown as counts per bin too, their
    counts divided by the number of bins in a spot), so that the panels compare directly. The H&E is read once, at
    about one pixel per bin (see :func:`histex.pl.domains`), and drawn beneath every panel.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve`.
    genes
        Gene name(s).
    table_key
        The table written by :func:`histex.tl.super_resolve`.
    truth_key
        A table of ground-truth bins on the same grid (``obs["array_row"]``, ``obs["array_col"]``), e.g.
        ``"truth"`` of :func:`histex.datasets.toy`.
    spots
        Show the measured spots (not for a table predicted without spots, from an H&E-only slide).
    image
        Draw the H&E beneath the maps (when one is found; else the maps are drawn alone and the reason logged).
    image_key
        The H&E image; by default the one :func:`histex.tl.super_resolve` read.
    alpha
        Opacity of the maps over the H&E.
    cmap
        Matplotlib colour map.
    panel_size
        Inches per panel.
    save
        Path to save the figure to.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`; its axes are ``fig.axes`` row by row.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    from histex import _sdata

    table = sdata.tables[table_key]
    genes = _genes_in(table, genes, table_key)
    check_alpha(alpha)
    beneath = underlay(sdata, table, table_key, image_key) if image else None
    opacity = alpha if beneath is not None else 1.0
    meta = table.uns["histex"]["data"]
    if spots and str(meta.get("spots_key", "None")) == "None":
        logger.info("Table %r was predicted without spots (an H&E-only slide): no spot panels.", table_key)
        spots = False
    shape = tuple(int(v) for v in meta["grid_shape"])
    truth = sdata.tables[truth_key] if truth_key is not None else None
    titles = (["ground truth"] if truth is not None else []) + (["spots"] if spots else []) + ["super-resolution"]
    if spots:
        sp = _sdata.read_spots(
            sdata, meta["spots_key"], meta["table_key"], meta["image_key"], meta["coordinate_system"]
        )
        bin_px = float(meta["bin_px"])
        centres = sp.xy_px / bin_px - 0.5  # imshow puts bin c at [c - 0.5, c + 0.5)
        radius = sp.radius_px / bin_px
        per_spot = float(meta["bins_per_spot"])
        spot_layer = _sdata.fitted_layer(table)  # the values the network was trained on, which need not be X

    fig, axes = plt.subplots(
        len(genes), len(titles), figsize=(panel_size * len(titles), panel_size * len(genes)), squeeze=False
    )
    for i, gene in enumerate(genes):
        pred = raster(table, _column(table, gene), shape)
        panels = {"super-resolution": pred}
        if truth is not None:
            panels["ground truth"] = raster(truth, _column(truth, gene), shape)
        vmax = float(np.nanpercentile(np.concatenate([p[np.isfinite(p)] for p in panels.values()]), 99.5)) or 1.0
        for j, title in enumerate(titles):
            ax = axes[i, j]
            ax.set_facecolor("0.92")
            if title == "spots":
                values = _column(sp.table, gene, spot_layer) / per_spot
                patches = [Circle((x, y), radius) for x, y in centres]
                coll = PatchCollection(patches, cmap=cmap, linewidths=0, alpha=opacity)
                coll.set_array(values)
                coll.set_clim(0, vmax)
                ax.add_collection(coll)
                ax.set_xlim(-0.5, shape[1] - 0.5)
                ax.set_ylim(shape[0] - 0.5, -0.5)
                ax.set_aspect("equal")
            else:
                im = ax.imshow(panels[title], cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest", alpha=opacity)
            if beneath is not None:
                draw_underlay(ax, *beneath)
            ax.set_title(f"{gene}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=list(axes[i]), shrink=0.8, label="counts per bin")
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    return fig


def uncertainty(
    sdata,
    genes: str | list[str],
    *,
    table_key: str = "histex",
    cmap: str = "magma",
    panel_size: float = 3.2,
    save: str | None = None,
):
    """Predicted expression beside its ensemble spread (``layers["std"]`` of :func:`histex.tl.super_resolve`).

    One row per gene: the prediction (counts per bin) and the standard deviation across ensemble states, on one
    colour scale, so that where the states disagree is seen against how much is predicted.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve` with ``n_states > 1``.
    genes
        Gene name(s).
    table_key
        Its table.
    cmap
        Matplotlib colour map.
    panel_size
        Inches per panel.
    save
        Path to save the figure to.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`; its axes are ``fig.axes`` row by row.
    """
    import matplotlib.pyplot as plt

    table = sdata.tables[table_key]
    if "std" not in table.layers:
        raise ValueError(f"Table {table_key!r} has no layers['std'] (the ensemble spread of super_resolve).")
    genes = _genes_in(table, genes, table_key)
    fig, axes = plt.subplots(len(genes), 2, figsize=(panel_size * 2, panel_size * len(genes)), squeeze=False)
    for i, gene in enumerate(genes):
        panels = {"prediction": _column(table, gene), "ensemble std": _column(table, gene, "std")}
        vmax = float(np.percentile(panels["prediction"], 99.5)) or 1.0
        for ax, (title, values) in zip(axes[i], panels.items(), strict=True):
            im = ax.imshow(raster(table, values), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{gene}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=list(axes[i]), shrink=0.8, label="counts per bin")
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    return fig
