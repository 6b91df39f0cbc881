"""Cells downstream of ``to_cells``: cell types by markers (``annotate``), enrichment per cell type (``enrich``), and
cells drawn as their outlines over the H&E (``pl.domains``, ``pl.genes``)."""

import warnings

import geopandas as gpd
import matplotlib
import numpy as np
import pytest
import shapely
import spatialdata as sd
from helpers import figure_of
from matplotlib.collections import PatchCollection, PolyCollection
from spatialdata.models import Labels2DModel
from spatialdata.transformations import get_transformation

import histex as hx
from histex import domains as dm

matplotlib.use("Agg")

CLASSES = ("tumour", "immune", "stroma")


@pytest.fixture(scope="module")
def section():
    """900 nuclei of three classes in three regions (tumour left, immune top right, stroma bottom right), with
    their truth per cell, super-resolved (briefly) and summed into the true nuclei."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(40, 1160, size=(900, 2))
    classes = np.where(centres[:, 0] < 600, "tumour", np.where(centres[:, 1] < 600, "immune", "stroma"))
    nuclei = gpd.GeoDataFrame({"class_name": classes}, geometry=[shapely.Point(*c).buffer(6.0) for c in centres])
    image = np.clip(rng.normal((215, 150, 190), 12, size=(1200, 1200, 3)), 0, 255).astype(np.uint8)  # eosin pink
    sdata = hx.sim.from_nuclei(image, nuclei, mpp=0.5, n_genes=30, seed=3)
    hx.pp.extract_features(sdata, show_progress=False)
    hx.tl.super_resolve(sdata, epochs=2, n_states=1, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nuclei beyond the tissue's bins
        hx.tl.to_cells(sdata, cells_key="truth_cells_boundaries")
    return sdata


def _markers(sdata) -> dict[str, list[str]]:
    """Each class's genes: those its programme expresses well above every other class."""
    programmes = sdata.tables["truth"].uns["programmes"]
    out = {}
    for name in CLASSES:
        others = programmes.drop(index=name).max(axis=0)
        out[name] = programmes.columns[programmes.loc[name] > others + 0.5].tolist()
    assert all(out.values())
    return out


def test_cell_types_by_markers_recover_the_classes(section):
    sdata = sd.deepcopy(section)
    cells = sdata.tables["truth_cells"]
    hx.tl.annotate(sdata, "truth_cells", n_domains=3, markers=_markers(sdata), boundary=True, key_added="cell_type")
    settings = cells.uns["cell_type"]
    assert settings["observations"] == "cells" and settings["use"] == "expression" and settings["smooth"] == 0
    labels = cells.obs["cell_type_label"].astype(str).to_numpy()
    assert (labels == cells.obs["class"].astype(str).to_numpy()).mean() > 0.95
    # boundary cells are those with a cell of another type near them: along x = 600 and y = 600 (right half)
    xy = cells.obsm["spatial"]
    edge = cells.obs["cell_type_boundary"].to_numpy()

    def near(distance):
        return (np.abs(xy[:, 0] - 600) < distance) | ((np.abs(xy[:, 1] - 600) < distance) & (xy[:, 0] > 600))

    assert edge.any() and near(60)[edge].mean() > 0.9  # 1.5 cell spacings is about 30 px here
    assert edge[near(10)].mean() > 0.6


def test_annotate_and_enrich_take_the_to_cells_table(section):
    sdata = sd.deepcopy(section)
    cells = sdata.tables["histex_cells"]
    hx.tl.annotate(sdata, "histex_cells", n_domains=3, smooth=2.0, key_added="niche")
    assert cells.uns["niche"]["observations"] == "cells" and cells.uns["niche"]["smooth"] == 2.0
    assert cells.obs["niche"].nunique() == 3
    truth = sdata.tables["truth_cells"]
    hx.tl.annotate(sdata, "truth_cells", n_domains=3, markers=_markers(sdata), key_added="cell_type")
    results = hx.tl.enrich(sdata, "truth_cells", gene_sets=_markers(sdata), groupby="cell_type_label")
    best = results[results["rank"] == 1].set_index("group")["term"].to_dict()
    assert best == {name: name for name in CLASSES}  # each cell type's best set is its own markers
    scores = truth.obsm["enrichment_scores"]
    assert scores.shape == (truth.n_obs, 3)
    own = scores.to_numpy()[np.arange(truth.n_obs), [CLASSES.index(c) for c in truth.obs["class"]]]
    assert (own >= scores.to_numpy().max(axis=1) - 1e-6).mean() > 0.9  # most cells score highest on their type


def test_smoothing_over_points_keeps_a_constant_field_and_averages_neighbours():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, size=(400, 2))
    constant = np.full((400, 2), 3.0, np.float32)
    np.testing.assert_allclose(dm.smooth_on_points(constant, xy, 5.0), constant, rtol=1e-6)
    noisy = rng.normal(size=(400, 1)).astype(np.float32)
    smoothed = dm.smooth_on_points(noisy, xy, 10.0)
    assert smoothed.std() < 0.5 * noisy.std()
    np.testing.assert_array_equal(dm.smooth_on_points(noisy, xy, 0.0), noisy)
    assert dm.typical_spacing(np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])) == pytest.approx(3.0)


def test_boundary_points_are_where_labels_meet():
    xs, ys = np.meshgrid(np.arange(10.0), np.arange(4.0))
    xy = np.column_stack([xs.ravel(), ys.ravel()])
    labels = np.where(xy[:, 0] < 5, "a", "b")
    edge = dm.boundary_points(labels, xy, 1.5)
    np.testing.assert_array_equal(edge, np.isin(xy[:, 0], [4, 5]))
    ignored = np.where(xy[:, 0] < 5, "a", "unknown")
    assert not dm.boundary_points(ignored, xy, 1.5).any()


def _face_at(collection, index) -> np.ndarray:
    return np.asarray(collection.get_facecolors())[index, :3]


def test_domains_draw_cells_as_polygons_over_the_he(section, tmp_path):
    sdata = sd.deepcopy(section)
    hx.tl.annotate(sdata, "truth_cells", n_domains=3, markers=_markers(sdata), boundary=True, key_added="cell_type")
    fig = figure_of(
        hx.pl.domains(sdata, table_key="truth_cells", key="cell_type", save=tmp_path / "cells.png", show=False)
    )
    ax = fig.axes[0]
    assert (tmp_path / "cells.png").stat().st_size > 0
    assert len(ax.images) == 1  # the H&E, read from the simulated section's image
    he = ax.images[0]
    left, right, bottom, top = he.get_extent()
    assert left <= 60 and right >= 1140 and top <= 60 and bottom >= 1140  # in the H&E's pixels
    filled, outlined = [c for c in ax.collections if isinstance(c, PolyCollection)]
    cells = sdata.tables["truth_cells"]
    assert len(filled.get_paths()) == cells.n_obs
    # the outline of cell i sits where the nucleus is
    vertices = filled.get_paths()[0].vertices
    np.testing.assert_allclose(vertices.mean(0), cells.obsm["spatial"][0], atol=1.0)
    # every type one colour, and the tumour cells another colour than the immune ones
    fig.canvas.draw()
    label = cells.obs["cell_type_label"].astype(str).to_numpy()
    colours = {name: _face_at(filled, np.flatnonzero(label == name)) for name in CLASSES}
    for name, rgb in colours.items():
        assert np.ptp(rgb, axis=0).max() < 1e-6, name
    assert not np.allclose(colours["tumour"][0], colours["immune"][0])
    assert len(outlined.get_paths()) == int(cells.obs["cell_type_boundary"].sum())


def test_domains_draw_a_label_image_of_cells(section):
    from skimage.draw import disk

    sdata = sd.deepcopy(section)
    polygons = sdata.shapes["truth_cells_boundaries"].geometry
    labels = np.zeros((1200, 1200), np.int32)
    for i, poly in enumerate(polygons, start=1):
        rr, cc = disk((poly.centroid.y, poly.centroid.x), 6, shape=labels.shape)
        labels[rr, cc] = i
    transformations = get_transformation(sdata.shapes["truth_cells_boundaries"], get_all=True)
    sdata.labels["masks"] = Labels2DModel.parse(labels, dims=("y", "x"), transformations=transformations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        key = hx.tl.to_cells(sdata, cells_key="masks", key_added="mask_cells")
    hx.tl.annotate(sdata, key, n_domains=2, key_added="cluster")
    fig = figure_of(hx.pl.domains(sdata, table_key=key, key="cluster", show=False))
    ax = fig.axes[0]
    _he, drawn = ax.images
    grid = np.asarray(drawn.get_array())
    cluster = sdata.tables[key].obs["cluster"].cat.codes.to_numpy()
    # the raster holds each labelled pixel's cluster (sampled at the centre of nucleus 1)
    y, x = (round(v) for v in (polygons.iloc[0].centroid.y, polygons.iloc[0].centroid.x))
    row = sdata.tables[key].obs_names.get_loc(str(labels[y, x]))
    assert grid[y, x] == cluster[row]
    assert np.isnan(grid[0, 0])


def test_genes_draw_truth_spots_and_cells(section):
    sdata = sd.deepcopy(section)
    fig = figure_of(hx.pl.genes(sdata, ["G000", "G001"], table_key="histex_cells", truth_key="truth_cells", show=False))
    assert len(fig.axes) == 2 * 3 + 2  # three panels a gene, and a colour bar each
    assert [a.get_title() for a in fig.axes[:3]] == ["G000: ground truth", "G000: spots", "G000: cells"]
    cells = sdata.tables["histex_cells"]
    drawn = next(c for c in fig.axes[2].collections if isinstance(c, PolyCollection))
    np.testing.assert_allclose(drawn.get_array(), np.asarray(cells[:, "G000"].X).ravel(), rtol=1e-6)
    truth = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    np.testing.assert_allclose(truth.get_array(), sdata.tables["truth_cells"][:, "G000"].X.toarray().ravel())
    spots = next(c for c in fig.axes[1].collections if isinstance(c, PatchCollection))
    assert len(spots.get_paths()) == sdata.tables["table"].n_obs
    # spots in counts per median cell: their counts times the median cell's area over a spot's
    spot_um2 = np.pi * 27.5**2
    factor = np.median(cells.obs["area_um2"]) / spot_um2
    np.testing.assert_allclose(
        np.sort(spots.get_array()), np.sort(sdata.tables["table"][:, "G000"].X.toarray().ravel() * factor), rtol=0.02
    )
    with pytest.raises(ValueError, match="does not hold"):
        hx.pl.genes(sdata, "G000", table_key="histex_cells", truth_key="truth", show=False)
    # cells grown from the true nuclei are drawn beside the truth of the nuclei they grew from
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        hx.tl.to_cells(sdata, cells_key="truth_cells_boundaries", expand_um=2.0, key_added="grown")
    fig = figure_of(hx.pl.genes(sdata, "G000", table_key="grown", truth_key="truth_cells", spots=False, show=False))
    truth = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    _, part_of = shapely.get_parts(sdata.shapes["grown_boundaries"].geometry.values, return_index=True)
    expected = sdata.tables["truth_cells"][:, "G000"].X.toarray().ravel()[part_of]  # a grown cell may have parts
    np.testing.assert_allclose(truth.get_array(), expected)
    # both panels draw the grown outlines (nuclei of 12 px across, grown by 2 µm = 4 px on every side)
    for ax in fig.axes[:2]:
        drawn = next(c for c in ax.collections if isinstance(c, PolyCollection))
        assert np.median([np.ptp(p.vertices, axis=0).max() for p in drawn.get_paths()]) > 18


def test_uncertainty_draws_the_cells_and_their_spread(section):
    cells = section.tables["histex_cells"]
    fig = figure_of(hx.pl.uncertainty(section, "G000", table_key="histex_cells", show=False))
    prediction, width, spread = (
        next(c for c in ax.collections if isinstance(c, PolyCollection)) for ax in fig.axes[:3]
    )
    gene = cells[:, "G000"]
    np.testing.assert_allclose(prediction.get_array(), np.asarray(gene.X).ravel(), rtol=1e-6)
    np.testing.assert_allclose(width.get_array(), (gene.layers["upper90"] - gene.layers["lower90"]).ravel())
    np.testing.assert_allclose(spread.get_array(), np.asarray(gene.layers["ensemble_sd"]).ravel(), rtol=1e-6)
    assert fig.axes[3].get_ylabel() == "counts per cell"


def test_cells_carry_the_bins_interval(section):
    """A cell's count: the shares of its bins' transcripts summed, negative binomial with their mean and variance."""
    cells = section.tables["histex_cells"]
    lower, upper = cells.layers["lower90"], cells.layers["upper90"]
    assert (lower <= upper).all() and np.array_equal(upper, np.round(upper)) and (lower >= 0).all()
    has = cells.obs["has_bins"].to_numpy()
    mean, width = np.asarray(cells.X)[has], (upper - lower)[has]
    assert width[mean > 0.1].mean() > width[mean <= 0.1].mean() + 0.2  # wider where more is predicted
