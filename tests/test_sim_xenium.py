"""Pseudo-Visium from a Xenium run: a miniature SpatialData laid out as spatialdata_io.xenium (0.7) writes it."""

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
import xarray as xr
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, PointsModel, ShapesModel, TableModel
from spatialdata.transformations import Affine, Identity, Scale

import histex as hx
from histex._sdata import read_section
from histex.geometry import BinGrid

PIXEL_SIZE = 0.2125  # µm per morphology pixel: 'global' is the morphology image's pixel grid
HE_MPP = 0.5
HE_OFFSET_UM = (100.0, 50.0)  # where H&E pixel (0, 0) lies in Xenium µm
BIN_UM = 8.0
BIN_PX = BIN_UM / HE_MPP
GENES = ["G0", "G1", "G2", "G3", "A_only", "B_only"]
CELL_A = (4, 3)  # bin (row, col) holding cell A entirely
CELL_B = (10, 5)  # cell B: 2 µm in this bin, 6 µm in the next column


def um_box(row: float, col: float, dx0: float, dy0: float, w: float, h: float):
    """A box in Xenium µm, placed relative to H&E bin (row, col)."""
    x = HE_OFFSET_UM[0] + col * BIN_UM + dx0
    y = HE_OFFSET_UM[1] + row * BIN_UM + dy0
    return shapely.box(x, y, x + w, y + h)


def make_xenium(*, he_px: int = 800, extra_cells=(), he_transform=None, he_image=True, seed: int = 0):
    rng = np.random.default_rng(seed)
    # cells: disks on a jittered 10 µm lattice over the H&E, plus cells A and B
    side = he_px * HE_MPP
    gx, gy = np.meshgrid(np.arange(8.0, side - 8, 10.0), np.arange(8.0, side - 8, 10.0))
    centres = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-1.5, 1.5, (gx.size, 2)) + HE_OFFSET_UM
    polygons = list(shapely.buffer(shapely.points(centres), rng.uniform(2.0, 4.0, len(centres)), quad_segs=4))
    polygons += [um_box(*CELL_A, 1.0, 1.0, 6.0, 6.0), um_box(*CELL_B, BIN_UM - 2.0, 1.0, 8.0, 6.0), *extra_cells]
    n = len(polygons)
    cell_id = np.array([f"cell{i:05d}-1" for i in range(n)])
    counts = np.zeros((n, len(GENES)))
    counts[:, :4] = rng.poisson(2.0, (n, 4))
    counts[n - len(extra_cells) - 2, 4] = 12  # A
    counts[n - len(extra_cells) - 1, 5] = 20  # B
    to_global = {"global": Scale([1 / PIXEL_SIZE, 1 / PIXEL_SIZE], axes=("x", "y"))}

    boundaries = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=polygons, index=pd.Index(cell_id, name="cell_id")), transformations=to_global
    )
    # nuclei: index label_index, a cell_id column; the first cell has two nuclei
    nuclei_geoms = [shapely.affinity.scale(p, 0.5, 0.5) for p in polygons]
    nuclei_ids = list(cell_id)
    first = polygons[0].centroid
    nuclei_geoms.append(shapely.Point(first.x + 2.5, first.y).buffer(0.5))
    nuclei_ids.append(cell_id[0])
    nuclei = ShapesModel.parse(
        gpd.GeoDataFrame({"geometry": nuclei_geoms, "cell_id": nuclei_ids}, index=np.arange(1, len(nuclei_ids) + 1)),
        transformations=to_global,
    )
    cent = np.array([[p.centroid.x, p.centroid.y] for p in polygons])
    area = shapely.area(np.asarray(polygons, dtype=object))
    circles = ShapesModel.parse(
        cent, geometry=0, radius=np.sqrt(area / np.pi), index=pd.Index(cell_id), transformations=to_global
    )
    obs = pd.DataFrame(
        {"cell_id": cell_id, "transcript_counts": counts.sum(1), "cell_area": area, "region": "cell_circles"},
        index=pd.Index(cell_id),
    )
    obs["region"] = obs["region"].astype("category")
    adata = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=pd.DataFrame(index=GENES))
    adata.obsm["spatial"] = cent
    table = TableModel.parse(adata, region="cell_circles", region_key="region", instance_key="cell_id")

    # transcripts: mostly in cells, with controls and low-quality ones
    n_tx = 4000
    xy = HE_OFFSET_UM + rng.uniform(0, side, (n_tx, 2))
    features = rng.choice([*GENES, "NegControlProbe_00042", "BLANK_0001"], n_tx)
    tx = pd.DataFrame(
        {
            "x_location": xy[:, 0],
            "y_location": xy[:, 1],
            "z_location": rng.uniform(0, 10, n_tx),
            "feature_name": pd.Categorical(features),
            "cell_id": "UNASSIGNED",
            "qv": rng.uniform(5, 40, n_tx),
        }
    )
    transcripts = PointsModel.parse(
        tx,
        coordinates={"x": "x_location", "y": "y_location", "z": "z_location"},
        feature_key="feature_name",
        instance_key="cell_id",
        transformations=to_global,
    )

    morphology = Image2DModel.parse(
        xr.DataArray(rng.integers(0, 1000, (4, 64, 64), dtype=np.uint16), dims=("c", "y", "x")),
        c_coords=["DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin"],
        transformations={"global": Identity()},
    )
    images = {"morphology_focus": morphology}
    if he_image:
        # the alignment: H&E pixels -> µm -> morphology pixels ('global')
        s = HE_MPP / PIXEL_SIZE
        matrix = np.array([[s, 0, HE_OFFSET_UM[0] / PIXEL_SIZE], [0, s, HE_OFFSET_UM[1] / PIXEL_SIZE], [0, 0, 1]])
        transform = he_transform or {"global": Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))}
        images["he_image"] = Image2DModel.parse(
            xr.DataArray(rng.integers(0, 255, (3, he_px, he_px), dtype=np.uint8), dims=("c", "y", "x")),
            c_coords=["r", "g", "b"],
            scale_factors=[2],
            transformations=transform,
        )
    sdata = SpatialData(
        images=images,
        shapes={"cell_boundaries": boundaries, "nucleus_boundaries": nuclei, "cell_circles": circles},
        points={"transcripts": transcripts},
        tables={"table": table},
    )
    return sdata, counts


def truth_grid(result, n_bins_side: int) -> np.ndarray:
    truth = result.tables["truth"]
    out = np.zeros((n_bins_side, n_bins_side, truth.n_vars))
    out[truth.obs["array_row"].to_numpy(), truth.obs["array_col"].to_numpy()] = truth.X.toarray()
    return out


@pytest.fixture(scope="module")
def run():
    sdata, counts = make_xenium()
    return sdata, counts, hx.sim.from_xenium(sdata)


def test_counts_are_conserved_and_cells_split_by_area(run):
    _, counts, result = run
    truth = result.tables["truth"]
    assert list(truth.var_names) == GENES
    assert truth.X.sum() == pytest.approx(counts.sum(), rel=1e-6)
    assert np.allclose(np.asarray(truth.X.sum(axis=0)).ravel(), counts.sum(0), rtol=1e-5)
    grid = truth_grid(result, 50)
    a, b = GENES.index("A_only"), GENES.index("B_only")
    assert grid[CELL_A][a] == pytest.approx(12) and grid[..., a].sum() == pytest.approx(12)
    assert grid[CELL_B][b] == pytest.approx(20 * 2 / 8)
    assert grid[CELL_B[0], CELL_B[1] + 1, b] == pytest.approx(20 * 6 / 8)
    info = truth.uns["xenium"]
    assert info["n_cells_dropped"] == 0 and info["mpp"] == pytest.approx(HE_MPP)
    # the truth per cell: the run's counts of every cell, with its outline on the H&E
    cells = result.tables["truth_cells"]
    assert cells.n_obs == len(counts) and list(cells.var_names) == GENES
    np.testing.assert_allclose(cells.X.toarray(), counts, rtol=1e-6)
    outlines = result.shapes["truth_cells_boundaries"]
    assert len(outlines) == len(counts) and outlines.geometry.is_valid.all()


def test_spots_sum_the_truth_bins_and_section_reads_back(run):
    _, _, result = run
    section = read_section(result)
    assert section.mpp == pytest.approx(HE_MPP)
    assert section.image_key == "xenium_full_image" and section.shape_yx == (800, 800)
    assert section.coordinate_system == "global"
    assert len(result.tables["table"]) >= 10
    truth = result.tables["truth"]
    grid = BinGrid.for_image((800, 800), mpp=HE_MPP, bin_size_um=BIN_UM)
    expected = hx.sim.sum_into_spots(
        section.spots.xy_px, grid, truth.obs["array_row"].to_numpy(), truth.obs["array_col"].to_numpy(), truth.X,
        radius_px=55 / 2 / HE_MPP,
    )  # fmt: skip
    assert np.allclose(section.spots.table.X.toarray(), expected.toarray(), rtol=1e-5)
    # brute force: bins whose centres lie in the 55 µm disk
    centres = truth.obsm["spatial"]
    for xy, row in zip(section.spots.xy_px[:5], section.spots.table.X.toarray()[:5], strict=True):
        inside = np.hypot(*(centres - xy).T) <= 55 / 2 / HE_MPP
        assert np.allclose(row, truth.X.toarray()[inside].sum(0), rtol=1e-5)
    # the H&E is kept, with its alignment
    he = result.images["xenium_full_image"]
    assert "global" in hx._sdata.element_transformations(he)


def test_nuclei_share_their_cells_counts(run):
    sdata, counts, _ = run
    result = hx.sim.from_xenium(sdata, shapes_key="nucleus_boundaries")
    assert result.tables["truth"].X.sum() == pytest.approx(counts.sum(), rel=1e-6)
    circles = hx.sim.from_xenium(sdata, shapes_key="cell_circles")
    assert circles.tables["truth"].X.sum() == pytest.approx(counts.sum(), rel=1e-6)


def test_transcripts_match_a_brute_force_count(run):
    sdata, _, _ = run
    result = hx.sim.from_xenium(sdata, use_transcripts=True)
    truth = result.tables["truth"]
    tissue = set(zip(truth.obs["array_row"], truth.obs["array_col"], strict=True))
    expected = np.zeros((50, 50, len(GENES)))
    tx = sdata.points["transcripts"].compute()
    for x, y, feature, qv in zip(tx["x"], tx["y"], tx["feature_name"], tx["qv"], strict=True):
        if qv < 20 or feature not in GENES:
            continue
        r = int(np.floor((y - HE_OFFSET_UM[1]) / BIN_UM))
        c = int(np.floor((x - HE_OFFSET_UM[0]) / BIN_UM))
        if (r, c) in tissue:
            expected[r, c, GENES.index(feature)] += 1
    assert expected.sum() > 1000
    assert np.array_equal(truth_grid(result, 50), expected)
    assert truth.uns["xenium"]["source"] == "transcripts"


def test_a_few_cells_off_the_image_are_dropped(caplog):
    outside = um_box(60, 60, 0, 0, 6, 6)  # beyond the 50 x 50 bins
    sdata, counts = make_xenium(extra_cells=[outside])
    result = hx.sim.from_xenium(sdata)
    assert result.tables["truth"].uns["xenium"]["n_cells_dropped"] == 1
    assert result.tables["truth"].X.sum() == pytest.approx(counts[:-1].sum(), rel=1e-6)
    assert "Dropped 1 of" in caplog.text


def test_cells_outside_the_image_are_refused():
    sdata, _ = make_xenium(he_px=800)
    sdata.images["he_image"] = Image2DModel.parse(
        xr.DataArray(np.zeros((3, 400, 400), np.uint8), dims=("c", "y", "x")), c_coords=["r", "g", "b"],
        transformations=hx._sdata.element_transformations(sdata.images["he_image"]),
    )  # fmt: skip
    with pytest.raises(ValueError, match="outside the H&E 'he_image'"):
        hx.sim.from_xenium(sdata)


def test_no_he_image_is_refused():
    sdata, _ = make_xenium(he_image=False)
    with pytest.raises(ValueError, match=r"no RGB H&E image.*morphology"):
        hx.sim.from_xenium(sdata)
    sdata, _ = make_xenium()
    with pytest.raises(ValueError, match=r"'morphology_focus' is a Xenium morphology.*RGB images: 'he_image'"):
        hx.sim.from_xenium(sdata, image_key="morphology_focus")


def test_unaligned_he_is_refused():
    sdata, _ = make_xenium(he_transform={"he": Identity()})
    with pytest.raises(ValueError, match="share no coordinate system"):
        hx.sim.from_xenium(sdata)


def test_rotated_alignment_is_followed():
    # H&E pixel (u, v) -> µm (x0 + 400 - v / 2, y0 + u / 2): a quarter turn, as alignments of turned slides are
    r = np.array([[0, -HE_MPP, HE_OFFSET_UM[0] + 400], [HE_MPP, 0, HE_OFFSET_UM[1]], [0, 0, 1]])
    to_global = np.diag([1 / PIXEL_SIZE, 1 / PIXEL_SIZE, 1]) @ r
    sdata, counts = make_xenium(he_transform={"global": Affine(to_global, ("x", "y"), ("x", "y"))})
    result = hx.sim.from_xenium(sdata)
    truth = result.tables["truth"]
    assert truth.uns["xenium"]["mpp"] == pytest.approx(HE_MPP)
    assert truth.X.sum() == pytest.approx(counts.sum(), rel=1e-6)
    # cell A, at µm bin (4, 3) of the unturned H&E, lands at H&E bin (row = 49 - 3, col = 4)
    grid = truth_grid(result, 50)
    assert grid[46, 4, GENES.index("A_only")] == pytest.approx(12)
    assert read_section(result).mpp == pytest.approx(HE_MPP)
