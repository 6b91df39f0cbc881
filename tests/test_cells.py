"""Expression per cell (``hx.tl.to_cells``): bins split between cells by area, from polygons or label images, nuclei
grown into cells without overlaps, and bad input refused with the SpatialData untouched."""

import itertools
import warnings

import geopandas as gpd
import numpy as np
import pytest
import shapely
import spatialdata as sd
from helpers import fingerprint
from spatialdata.models import Labels2DModel, ShapesModel
from spatialdata.transformations import Identity, Scale, get_transformation, set_transformation

import histex as hx
from histex import cells as cells_math
from histex.geometry import BinGrid


@pytest.fixture(scope="module")
def resolved(small_toy):
    sdata = sd.deepcopy(small_toy)
    hx.tl.super_resolve(sdata, epochs=1, n_states=2, show_progress=False)
    return sdata


def _bin(table, row, col):
    hit = np.flatnonzero((table.obs["array_row"].to_numpy() == row) & (table.obs["array_col"].to_numpy() == col))
    return int(hit[0]) if len(hit) else None


def _two_neighbours(table):
    """A tissue bin whose right-hand neighbour is a tissue bin too: (row, col, index, index of the neighbour)."""
    for i, (r, c) in enumerate(zip(table.obs["array_row"], table.obs["array_col"], strict=True)):
        j = _bin(table, r, c + 1)
        if j is not None and i > 50:
            return int(r), int(c), i, j
    raise AssertionError("no two neighbouring tissue bins")


def _with_cells(sdata, polygons, key="cells"):
    out = sd.deepcopy(sdata)
    transformations = get_transformation(out.shapes["histex_bins"], get_all=True)  # the image's pixels
    out.shapes[key] = ShapesModel.parse(gpd.GeoDataFrame(geometry=polygons), transformations=transformations)
    return out


def test_cells_take_the_share_of_each_bin_inside_them(resolved):
    table = resolved.tables["histex"]
    b = table.uns["histex"]["data"]["bin_px"]
    r, c, i, j = _two_neighbours(table)
    cells = [
        shapely.box(c * b, r * b, (c + 1) * b, (r + 1) * b),  # exactly bin i
        shapely.box((c + 0.5) * b, r * b, (c + 1.5) * b, (r + 1) * b),  # half of i, half of j
        shapely.box(c * b, r * b, (c + 0.25) * b, (r + 1) * b),  # a quarter of i ...
        shapely.box((c + 0.25) * b, r * b, (c + 1) * b, (r + 1) * b),  # ... and the rest of it
        shapely.box(-40, -40, -10, -10),  # off the image
    ]
    sdata = _with_cells(resolved, cells)
    with pytest.warns(UserWarning, match="1 of 5 cells have no bin"):
        key = hx.tl.to_cells(sdata, cells_key="cells")
    assert key == "histex_cells"
    out = sdata.tables[key]
    x, std = np.asarray(table.X), np.asarray(table.layers["ensemble_sd"])
    np.testing.assert_allclose(out.X[0], x[i], rtol=1e-6)
    np.testing.assert_allclose(out.X[1], 0.5 * x[i] + 0.5 * x[j], rtol=1e-5)
    np.testing.assert_allclose(out.X[2] + out.X[3], x[i], rtol=1e-5)  # a bin shared by two cells is split by area
    np.testing.assert_allclose(out.X[2], 0.25 * x[i], rtol=1e-5)
    assert not out.X[4].any()
    np.testing.assert_allclose(out.layers["ensemble_sd"][0], std[i], rtol=1e-6)
    np.testing.assert_allclose(
        out.layers["ensemble_sd"][1], np.sqrt(0.25 * std[i] ** 2 + 0.25 * std[j] ** 2), rtol=1e-5
    )
    mpp = table.uns["histex"]["data"]["mpp"]
    np.testing.assert_allclose(out.obs["area_um2"].to_numpy()[:2], (b * mpp) ** 2)
    np.testing.assert_allclose(out.obs["bin_coverage"], [1, 1, 1, 1, 0])
    assert out.obs["has_bins"].tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(out.obsm["spatial"][0], [(c + 0.5) * b, (r + 0.5) * b])
    assert list(out.var_names) == list(table.var_names)
    # a table that annotates the cells, as spatialdata expects
    from spatialdata.models import get_table_keys

    assert get_table_keys(out) == ("cells", "region", "cell_id")
    assert out.obs["cell_id"].tolist() == sdata.shapes["cells"].index.tolist()
    assert out.uns["histex"]["data"]["n_without_bins"] == 1


def test_all_cells_together_hold_all_counts_of_the_bins_they_tile(resolved):
    """Cells tiling the whole grid (a 3 x 3 block of bins each, cut off-centre) sum to the bins' counts."""
    table = resolved.tables["histex"]
    data = table.uns["histex"]["data"]
    b, (n_rows, n_cols) = data["bin_px"], data["grid_shape"]
    edges_x = np.append(np.arange(0, n_cols, 3.3), n_cols) * b
    edges_y = np.append(np.arange(0, n_rows, 2.7), n_rows) * b
    cells = [
        shapely.box(x0, y0, x1, y1) for y0, y1 in itertools.pairwise(edges_y) for x0, x1 in itertools.pairwise(edges_x)
    ]
    sdata = _with_cells(resolved, cells)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cells on glass have no bins
        hx.tl.to_cells(sdata, cells_key="cells", key_added="tiles")
    np.testing.assert_allclose(sdata.tables["tiles"].X.sum(0), np.asarray(table.X).sum(0), rtol=1e-4)


def test_a_label_image_gives_what_its_polygons_give(resolved):
    """The same cells as a label image at half the H&E's resolution (a Scale transformation) and as polygons."""
    table = resolved.tables["histex"]
    data = table.uns["histex"]["data"]
    b = data["bin_px"]  # 16 H&E pixels: 8 label pixels
    rows, cols = data["grid_shape"]
    labels = np.zeros((rows * 8, cols * 8), dtype=np.int32)
    polygons = []
    rng = np.random.default_rng(0)
    for cell_id in range(1, 40):
        y0, x0 = rng.integers(0, rows * 8 - 20, 2)
        h, w = rng.integers(3, 20, 2)
        labels[y0 : y0 + h, x0 : x0 + w] = cell_id
    for cell_id in range(1, 40):
        ys, xs = np.nonzero(labels == cell_id)
        if len(ys):  # the cell as drawn (later cells paint over earlier ones): the union of its pixels
            polygons.append(shapely.union_all(shapely.box(xs * 2, ys * 2, xs * 2 + 2, ys * 2 + 2)))
    sdata = _with_cells(resolved, polygons)
    image_cs = data["coordinate_system"]
    sdata.labels["masks"] = Labels2DModel.parse(
        labels, dims=("y", "x"), transformations={image_cs: Scale([2, 2], ("y", "x"))}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        hx.tl.to_cells(sdata, cells_key="cells", key_added="from_polygons")
        hx.tl.to_cells(sdata, cells_key="masks", key_added="from_labels")
    by_polygons, by_labels = sdata.tables["from_polygons"], sdata.tables["from_labels"]
    assert by_labels.obs["cell_id"].tolist() == sorted(set(np.unique(labels)) - {0})
    assert len(by_labels) == len(by_polygons)
    # label pixels are counted whole in the bin of their centre: bins of 8 label pixels are cut exactly
    np.testing.assert_allclose(by_labels.X, by_polygons.X, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(by_labels.obs["area_um2"], by_polygons.obs["area_um2"], rtol=1e-9)
    np.testing.assert_allclose(
        by_labels.obsm["spatial"] * 2, shapely.get_coordinates(shapely.centroid(polygons)), atol=1e-6
    )
    assert b == pytest.approx(16)


def test_grown_polygons_do_not_overlap_and_keep_their_nuclei():
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 200, (60, 2))
    nuclei = shapely.buffer(shapely.points(centres), 2.0)
    keep = np.ones(len(nuclei), bool)  # nuclei apart from each other, as segmented nuclei are
    for i in range(len(nuclei)):
        keep[i] = not any(shapely.intersects(nuclei[i], nuclei[j]) for j in range(i) if keep[j])
    nuclei = nuclei[keep]
    grown = cells_math.expand_polygons(nuclei, 6.0)
    assert all(shapely.contains(g.buffer(1e-9), n) for g, n in zip(grown, nuclei, strict=True))
    assert (shapely.area(grown) > shapely.area(nuclei) * 1.5).all()
    assert (shapely.area(grown) <= shapely.area(shapely.buffer(nuclei, 6.0)) + 1e-9).all()
    union = shapely.area(shapely.union_all(grown))
    assert union == pytest.approx(shapely.area(grown).sum(), rel=1e-9)  # no overlaps
    assert np.array_equal(cells_math.expand_polygons(nuclei, 0.0), nuclei)


def test_grown_labels_have_no_seams_between_blocks(monkeypatch):
    from skimage.segmentation import expand_labels

    from histex.tl import _cells

    rng = np.random.default_rng(2)
    labels = np.zeros((300, 260), dtype=np.int32)
    for cell_id, (y, x) in enumerate(rng.integers(0, 290, (80, 2)), start=1):
        labels[y : y + 4, min(x, 255) : min(x, 255) + 4] = cell_id
    monkeypatch.setattr(_cells, "_LABEL_BLOCK", 64)
    grown = _cells._expand_labels(labels, 5.5)
    assert grown.numblocks[0] > 3
    np.testing.assert_array_equal(np.asarray(grown), expand_labels(labels, 5.5))


def test_expand_um_grows_the_cells_in_a_new_element(resolved):
    table = resolved.tables["histex"]
    b = table.uns["histex"]["data"]["bin_px"]
    r, c, _i, _ = _two_neighbours(table)
    nuclei = [shapely.box((c + 0.3) * b, (r + 0.3) * b, (c + 0.7) * b, (r + 0.7) * b)]
    sdata = _with_cells(resolved, nuclei, key="nuclei")
    key = hx.tl.to_cells(sdata, cells_key="nuclei", expand_um=2.0, key_added="grown")
    grown = sdata.shapes["grown_boundaries"]
    mpp = table.uns["histex"]["data"]["mpp"]
    assert grown.geometry.iloc[0].area > nuclei[0].area
    assert sdata.tables[key].obs["region"].iloc[0] == "grown_boundaries"
    assert sdata.tables[key].obs["area_um2"].iloc[0] == pytest.approx(grown.geometry.iloc[0].area * mpp**2)
    assert sdata.tables[key].uns["histex"]["params"]["expand_um"] == 2.0
    # run again: the earlier output is replaced, not refused
    hx.tl.to_cells(sdata, cells_key="nuclei", expand_um=1.0, key_added="grown")
    assert sdata.shapes["grown_boundaries"].geometry.iloc[0].area < grown.geometry.iloc[0].area
    # without growing, the grown cells of the earlier call, which nothing annotates any more, go; growing again works
    hx.tl.to_cells(sdata, cells_key="nuclei", key_added="grown")
    assert "grown_boundaries" not in sdata.shapes
    assert sdata.tables[key].obs["region"].iloc[0] == "nuclei"
    hx.tl.to_cells(sdata, cells_key="nuclei", expand_um=1.0, key_added="grown")
    assert sdata.tables[key].obs["region"].iloc[0] == "grown_boundaries"


def test_cells_are_found_when_there_is_one_candidate(resolved):
    table = resolved.tables["histex"]
    b = table.uns["histex"]["data"]["bin_px"]
    sdata = _with_cells(resolved, [shapely.box(0, 0, b, b)], key="segmentation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        hx.tl.to_cells(sdata)
    assert sdata.tables["histex_cells"].obs["region"].iloc[0] == "segmentation"
    sdata.shapes["other"] = sdata.shapes["segmentation"]
    with pytest.raises(ValueError, match="cells_key="):
        hx.tl.to_cells(sdata)


@pytest.mark.slow
def test_written_into_a_backed_store(resolved, tmp_path):
    table = resolved.tables["histex"]
    b = table.uns["histex"]["data"]["bin_px"]
    sdata = _with_cells(
        resolved, [shapely.box(5 * b, 5 * b, 9 * b, 8 * b), shapely.box(20 * b, 20 * b, 23 * b, 26 * b)]
    )
    sdata.write(tmp_path / "s.zarr")
    backed = sd.read_zarr(tmp_path / "s.zarr")
    warnings.simplefilter("ignore", UserWarning)  # a cell on glass
    key = hx.tl.to_cells(backed, cells_key="cells", expand_um=1.0)
    again = sd.read_zarr(tmp_path / "s.zarr")
    assert key in again.tables and "histex_cells_boundaries" in again.shapes
    np.testing.assert_allclose(np.asarray(again.tables[key].X), backed.tables[key].X)
    hx.tl.to_cells(sdata, cells_key="cells", expand_um=1.0)  # in memory, from the bins in memory
    np.testing.assert_allclose(sdata.tables[key].X, backed.tables[key].X, rtol=1e-6)


def test_bad_input_names_the_fix_and_leaves_the_data_alone(resolved):
    table = resolved.tables["histex"]
    b = table.uns["histex"]["data"]["bin_px"]
    sdata = _with_cells(resolved, [shapely.box(5 * b, 5 * b, 9 * b, 8 * b)])
    before = fingerprint(sdata)
    with pytest.raises(KeyError, match="super_resolve"):
        hx.tl.to_cells(sdata, cells_key="cells", table_key="nothing")
    with pytest.raises(ValueError, match="expand_um"):
        hx.tl.to_cells(sdata, cells_key="cells", expand_um=-1)
    with pytest.raises(ValueError, match="names an element of the input"):
        hx.tl.to_cells(sdata, cells_key="cells", key_added="histex")
    taken = sd.deepcopy(sdata)
    taken.shapes["mine_boundaries"] = taken.shapes["cells"]  # not written by to_cells
    with pytest.raises(ValueError, match="did not write"):
        hx.tl.to_cells(taken, cells_key="cells", key_added="mine", expand_um=1.0)
    with pytest.raises(ValueError, match="did not write"):  # a name taken by an element of another kind
        hx.tl.to_cells(sdata, cells_key="cells", key_added="histex_bins")
    elsewhere = sd.deepcopy(sdata)
    set_transformation(elsewhere.shapes["cells"], {"other": Identity()}, set_all=True)
    with pytest.raises(ValueError, match="set_transformation"):
        hx.tl.to_cells(elsewhere, cells_key="cells")
    image_cs = table.uns["histex"]["data"]["coordinate_system"]
    floats = sd.deepcopy(sdata)
    floats.labels["masks"] = Labels2DModel.parse(
        np.ones((50, 50), np.float32), dims=("y", "x"), transformations={image_cs: Identity()}
    )
    with pytest.raises(TypeError, match="integer"):
        hx.tl.to_cells(floats, cells_key="masks")
    no_grid = sd.deepcopy(sdata)
    no_grid.tables["histex"].obs = no_grid.tables["histex"].obs.drop(columns=["array_row"])
    with pytest.raises(ValueError, match="grid columns"):
        hx.tl.to_cells(no_grid, cells_key="cells")
    assert fingerprint(sdata) == before


def test_label_overlap_streams_blocks_of_rows():
    grid = BinGrid(bin_px=4.0, n_rows=5, n_cols=5)
    labels = np.zeros((20, 20), np.int32)
    labels[2:11, 3:9] = 7
    labels[15:20, 0:20] = 3
    affine = np.eye(3)
    whole_ids, whole = cells_math.label_overlap(labels, affine, grid, block_rows=100)
    ids, streamed = cells_math.label_overlap(labels, affine, grid, block_rows=3)
    assert ids.tolist() == whole_ids.tolist() == [3, 7]
    assert (streamed.overlap != whole.overlap).nnz == 0
    np.testing.assert_allclose(streamed.area, [100, 54])
    np.testing.assert_allclose(streamed.centroid, [[10, 17.5], [6, 6.5]])
    assert streamed.overlap.sum() == 154
