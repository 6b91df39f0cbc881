"""histex.pl.domains over the H&E, and histex.pl.enrichment."""

import logging

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from helpers import compartment_markers, figure_of
from scipy import ndimage

import histex as hx
from histex import _sdata
from histex.pl._underlay import _locate_image, fit_grid_affine

matplotlib.use("Agg")

IMAGE_KEY = "toy_full_image"


@pytest.fixture(scope="module")
def annotated():
    sdata = hx.datasets.toy(size_um=800, n_genes=40, seed=0)
    markers = compartment_markers(sdata.tables["truth"])
    hx.tl.annotate(sdata, "truth", n_domains=6, use="expression", markers=markers, boundary=True)
    return sdata


def _known_affine(truth) -> np.ndarray:
    """The toy's grid: bin (row, col) covers pixels [col, col + 1) x [row, row + 1) times bin_size_um / mpp."""
    b = truth.uns["toy"]["bin_size_um"] / truth.uns["toy"]["mpp"]
    return np.array([[b, 0.0, b / 2], [0.0, b, b / 2], [0.0, 0.0, 1.0]])


def _pixels_of(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)


def _rendered_at(fig, ax, xs, ys, pixels) -> np.ndarray:
    """Rendered colour at data points of ``ax``."""
    disp = ax.transData.transform(np.column_stack([xs, ys]))
    cols = np.floor(disp[:, 0]).astype(int)
    rows = pixels.shape[0] - 1 - np.floor(disp[:, 1]).astype(int)
    return pixels[rows, cols]


def _he_at(he, xs, ys, half: float = 0.0) -> np.ndarray:
    """Mean colour of the drawn H&E over the square of half-width ``half`` (bin units) around bin coordinates."""
    rgb = np.asarray(he.get_array(), dtype=float)
    left, right, bottom, top = he.get_extent()
    fx, fy = rgb.shape[1] / (right - left), rgb.shape[0] / (bottom - top)
    out = []
    for x, y in zip(xs, ys, strict=True):
        c0, c1 = int(np.floor((x - half - left) * fx)), int(np.floor((x + half - left) * fx)) + 1
        r0, r1 = int(np.floor((y - half - top) * fy)), int(np.floor((y + half - top) * fy)) + 1
        out.append(rgb[max(r0, 0) : r1, max(c0, 0) : c1].reshape(-1, 3).mean(0))
    return np.array(out)


def test_grid_affine_of_toy_truth_bins_matches_the_known_mapping(annotated):
    truth = annotated.tables["truth"]
    known = _known_affine(truth)
    assert known[0, 0] == 16.0  # 8 µm bins at 0.5 µm/px
    np.testing.assert_allclose(fit_grid_affine(annotated, truth, IMAGE_KEY), known, atol=1e-9)
    # A few bins spread over the table pin it down as well.
    np.testing.assert_allclose(fit_grid_affine(annotated, truth, IMAGE_KEY, max_bins=50), known, atol=1e-9)
    # A table of super_resolve is placed from its own record, the same mapping.
    meta = truth.copy()
    meta.uns["histex"] = {"data": {"image_key": IMAGE_KEY, "bin_px": 16.0}}
    key, affine = _locate_image(annotated, meta, "truth", None)
    assert key == IMAGE_KEY
    np.testing.assert_allclose(affine, known)


def test_domains_are_drawn_over_the_he(annotated, tmp_path):
    truth = annotated.tables["truth"]
    fig = figure_of(hx.pl.domains(annotated, table_key="truth", save=tmp_path / "domains.png", show=False))
    assert (tmp_path / "domains.png").stat().st_size > 20000
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "truth: domain_label"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == list(truth.obs["domain_label"].cat.categories)
    domain_img, edge_img = ax.get_images()  # the domains, then the boundary bins
    assert domain_img.get_alpha() == 0.6 and edge_img.get_alpha() is None
    # The H&E lies beneath, in a child axes sharing the limits.
    (he_ax,) = ax.child_axes
    (he,) = he_ax.get_images()
    assert he_ax.get_zorder() < domain_img.get_zorder()
    assert he_ax.get_xlim() == ax.get_xlim() and he_ax.get_ylim() == ax.get_ylim()
    rows, cols = truth.obs["array_row"].to_numpy(), truth.obs["array_col"].to_numpy()
    grid_box = (cols.min() - 0.5, cols.max() + 0.5, rows.max() + 0.5, rows.min() - 0.5)
    np.testing.assert_allclose(he.get_extent(), grid_box, atol=1 / 16 + 1e-9)  # within one image pixel
    # It is the image itself, pixel for pixel, where the extent says (the toy's image is small: full resolution).
    left, _, _, top = he.get_extent()
    x0, y0 = round((left + 0.5) * 16), round((top + 0.5) * 16)
    full = np.asarray(_sdata.image_array(annotated, IMAGE_KEY).data).transpose(1, 2, 0)
    drawn = np.asarray(he.get_array())
    np.testing.assert_array_equal(drawn, full[y0 : y0 + drawn.shape[0], x0 : x0 + drawn.shape[1]])

    pixels = _pixels_of(fig)
    assert (pixels.sum(-1) < 30).mean() > 0.001  # black boundary bins
    assert (np.abs(np.diff(pixels, axis=-1)).sum(-1) > 30).mean() > 0.2  # coloured, not blank
    grid = domain_img.get_array()
    # Glass: within the H&E but two bins or more from any bin, where the H&E shows as it is (light).
    gy, gx = np.mgrid[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    no_bin = ndimage.binary_erosion(np.isnan(grid), iterations=2, border_value=1)[gy, gx]
    glass_x, glass_y = gx[no_bin], gy[no_bin]
    assert len(glass_x) > 100
    glass = _rendered_at(fig, ax, glass_x, glass_y, pixels)
    glass_he = _he_at(he, glass_x, glass_y)
    assert glass.mean() > 200 and np.abs(glass - glass_he).mean() < 10  # measured 239 and 4.1
    # Tissue: bins deep inside the stroma carry its colour at 60 %, blended with the H&E beneath.
    label = truth.obs["domain_label"].cat.categories.get_loc("Str")
    inside = ndimage.binary_erosion(grid == label, iterations=2)
    in_y, in_x = np.nonzero(inside)
    in_y, in_x = in_y[::20], in_x[::20]
    tissue = _rendered_at(fig, ax, in_x, in_y, pixels)
    colour = np.asarray(domain_img.cmap(label)[:3]) * 255
    under = _he_at(he, in_x, in_y, half=0.5)
    blended = 0.6 * colour + 0.4 * under
    error = np.abs(tissue - blended).mean()
    assert error < 8  # measured 2.5 (33 from the pure colour, 50 from the H&E)
    assert np.abs(tissue - colour).mean() > 2 * error and np.abs(tissue - under).mean() > 4 * error
    assert np.abs(tissue.mean(0) - blended.mean(0)).max() < 3  # measured 0.4


@pytest.mark.filterwarnings("ignore:The table is annotating")
def test_domains_grid_only_or_without_an_image(annotated, caplog):
    truth = annotated.tables["truth"]
    over = figure_of(hx.pl.domains(annotated, table_key="truth", show=False))
    alone = figure_of(hx.pl.domains(annotated, table_key="truth", image=False, boundary=False, show=False))
    ax = alone.axes[0]
    assert not ax.child_axes and len(ax.get_images()) == 1 and ax.get_images()[0].get_alpha() == 1.0
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), over.axes[0].get_images()[0].get_array())
    white_alone, white_over = ((_pixels_of(f).min(-1) > 250).mean() for f in (alone, over))
    assert white_over < white_alone - 0.03  # the glass is drawn, not left white: measured 0.52 and 0.60

    # No image at all: the grid alone, without an error.
    bare = sd.SpatialData(shapes={"truth_bins": annotated.shapes["truth_bins"]}, tables={"truth": truth})
    fig = figure_of(hx.pl.domains(bare, table_key="truth", show=False))
    assert not fig.axes[0].child_axes and len(fig.axes[0].get_images()) == 2
    with pytest.raises(KeyError, match="No image 'nope'"):
        hx.pl.domains(annotated, table_key="truth", image_key="nope", show=False)

    # An image on which the bins cannot be placed (they annotate no shapes here): an error if named, else a warning.
    unplaced = sd.SpatialData(images={IMAGE_KEY: annotated.images[IMAGE_KEY]}, tables={"truth": truth})
    with pytest.raises(ValueError, match="Cannot place the bins of table 'truth' on image 'toy_full_image'"):
        hx.pl.domains(unplaced, table_key="truth", image_key=IMAGE_KEY, show=False)
    with caplog.at_level(logging.WARNING, logger="histex"):
        fig = figure_of(hx.pl.domains(unplaced, table_key="truth", show=False))
    assert not fig.axes[0].child_axes and "drawn without the H&E" in caplog.text
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        hx.pl.domains(annotated, table_key="truth", alpha=1.5, show=False)


@pytest.mark.parametrize("turn", ["rotated", "flipped"])
def test_domains_follow_bins_turned_on_the_image(annotated, turn):
    from spatialdata.transformations import Affine, set_transformation

    sdata = sd.deepcopy(annotated)
    truth = sdata.tables["truth"]
    size = 1600.0
    if turn == "rotated":  # 30° about the centre of the image, shrunk a little
        a = np.deg2rad(30.0)
        turn_m = 0.8 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    else:  # array_row counts up the image
        turn_m = np.array([[1.0, 0.0], [0.0, -1.0]])
    centre = np.array([size / 2, size / 2])
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = turn_m, centre - turn_m @ centre
    set_transformation(
        sdata.shapes["truth_bins"],
        Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y")),
        to_coordinate_system="toy",
    )
    fitted = fit_grid_affine(sdata, truth, IMAGE_KEY)
    np.testing.assert_allclose(fitted, matrix @ _known_affine(truth), atol=1e-6)

    fig = figure_of(hx.pl.domains(sdata, table_key="truth", show=False))
    ax = fig.axes[0]
    (he,) = ax.child_axes[0].get_images()
    pixels = _pixels_of(fig)
    assert (np.abs(np.diff(pixels, axis=-1)).sum(-1) > 30).mean() > 0.1
    # Every bin's centre in image pixels lands where the bin is drawn.
    rows, cols = truth.obs["array_row"].to_numpy()[::97], truth.obs["array_col"].to_numpy()[::97]
    centres_px = np.column_stack([cols, rows, np.ones(len(rows))]) @ fitted[:2].T
    at_bins = ax.transData.transform(np.column_stack([cols, rows]))
    if turn == "rotated":  # the image is drawn in pixels through the affine
        np.testing.assert_allclose(he.get_transform().transform(centres_px), at_bins, atol=1e-6)
    else:  # axis-aligned: an extent in bin coordinates, upside down
        rows, cols = truth.obs["array_row"].to_numpy(), truth.obs["array_col"].to_numpy()
        grid_box = (cols.min() - 0.5, cols.max() + 0.5, rows.min() - 0.5, rows.max() + 0.5)
        np.testing.assert_allclose(he.get_extent(), grid_box, atol=1 / 16 + 1e-9)


# --- enrichment ------------------------------------------------------------------------------------------------------

GROUPS = ["10", "0", "1"]  # as a result might list them; drawn 0, 1, 10


def _enrichment_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for i, group in enumerate(GROUPS):
        terms = [f"SET_{group}_{k}" for k in range(3)] + ["SHARED_A", "SHARED_B", "SHARED_C"]
        score = np.array([4.0, 3.0, 2.0, 0.5, -1.0, -2.5]) + i * 0.1 + rng.normal(0, 0.01, 6)
        padj = np.array([1e-8, 1e-5, 1e-3, 0.2, 0.05, 1e-4]) * (i + 1)
        frame = pd.DataFrame({"group": group, "term": terms, "score": score, "pvalue": padj / 3, "padj": padj})
        frame["n_genes"] = 12
        frame["rank"] = np.argsort(np.argsort(padj)) + 1  # rank by padj: the SHARED_C set ranks 3rd
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture
def enriched():
    table = ad.AnnData(np.zeros((3, 2), dtype=np.float32), uns={"enrichment": _enrichment_frame()})
    return sd.SpatialData(tables={"truth": table})


def test_enrichment_dot_plot_shows_top_terms_by_score_and_padj(enriched, tmp_path):
    frame = enriched.tables["truth"].uns["enrichment"]
    fig = figure_of(hx.pl.enrichment(enriched, table_key="truth", n_terms=3, save=tmp_path / "dots.png", show=False))
    assert (tmp_path / "dots.png").stat().st_size > 5000
    ax, cbar = fig.axes
    assert ax.get_title() == "truth: enrichment" and cbar.get_ylabel() == "score"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "10"]
    terms = ["SET_0_0", "SET_0_1", "SHARED_C", "SET_1_0", "SET_1_1", "SET_10_0", "SET_10_1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == terms
    (dots,) = ax.collections
    xs, ys = dots.get_offsets().T.astype(int)
    # One dot per term a group has: SET_g_k only in group g, SHARED_C in every group.
    assert len(xs) == 3 * 2 + 3
    drawn = pd.DataFrame({"group": np.array(["0", "1", "10"])[xs], "term": np.array(terms)[ys]})
    drawn = drawn.merge(frame, on=["group", "term"], how="left", validate="one_to_one")
    assert drawn["score"].notna().all()
    score = drawn["score"].to_numpy()
    assert dots.norm.vmin == -dots.norm.vmax == -score.max()  # centred at 0
    colours = dots.get_facecolors()
    np.testing.assert_allclose(colours, matplotlib.colormaps["RdBu_r"](dots.norm(score)))  # colour follows score
    deepest = colours[np.argmax(score)]
    assert deepest[0] > 2 * (deepest[1] + deepest[2])  # the biggest score draws the reddest dot
    assert (colours[:, 0] - colours[:, 2])[score < 0].max() < 0  # and the negative ones blue
    strength = -np.log10(drawn["padj"].to_numpy())
    sizes = dots.get_sizes()
    assert (np.diff(sizes[np.argsort(strength)]) >= 0).all() and np.corrcoef(strength, sizes)[0, 1] > 0.999  # area
    assert ax.get_legend().get_title().get_text() == "-log10 padj"
    pixels = _pixels_of(fig)
    assert (np.abs(np.diff(pixels, axis=-1)).sum(-1) > 60).mean() > 0.005  # coloured dots


def test_enrichment_heatmap_and_errors(enriched):
    fig = figure_of(hx.pl.enrichment(enriched, table_key="truth", kind="heatmap", n_terms=1, show=False))
    ax, cbar = fig.axes
    assert ax.get_title() == "truth: enrichment" and cbar.get_ylabel() == "score"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["SET_0_0", "SET_1_0", "SET_10_0"]
    (heat,) = ax.get_images()
    values = np.ma.filled(heat.get_array(), np.nan)
    frame = enriched.tables["truth"].uns["enrichment"]
    assert np.isfinite(values).sum() == 3  # each term is tested in its own group only
    np.testing.assert_allclose(
        np.diag(values), frame[frame["rank"] == 1].set_index("group").loc[["0", "1", "10"], "score"]
    )
    assert heat.norm.vmin == -heat.norm.vmax
    assert (np.abs(np.diff(_pixels_of(fig), axis=-1)).sum(-1) > 60).mean() > 0.05
    every = figure_of(hx.pl.enrichment(enriched, table_key="truth", n_terms=100, show=False))
    assert len(every.axes[0].get_yticklabels()) == 3 * 3 + 3

    with pytest.raises(ValueError, match=r"no uns\['gsea'\]; run histex.tl.enrich"):
        hx.pl.enrichment(enriched, table_key="truth", key="gsea", show=False)
    with pytest.raises(ValueError, match="kind must be one of"):
        hx.pl.enrichment(enriched, table_key="truth", kind="bar", show=False)
    with pytest.raises(ValueError, match="n_terms must be"):
        hx.pl.enrichment(enriched, table_key="truth", n_terms=0, show=False)
    enriched.tables["truth"].uns["enrichment"] = frame.drop(columns="padj")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['padj'\]"):
        hx.pl.enrichment(enriched, table_key="truth", show=False)
