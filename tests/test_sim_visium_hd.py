"""Pseudo-Visium sections from Visium HD: squares split over histex's bins by area, in spatialdata_io's layout."""

import warnings

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
import xarray as xr
from helpers import fingerprint
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale, set_transformation

import histex as hx
from histex._sdata import read_section

DS = "mini"
HIRES, LOWRES = 0.25, 0.0625


def visium_hd_like(
    *,
    mpp: float,
    image_px: tuple[int, int],
    n_rc: tuple[int, int],
    origin_px: tuple[float, float] = (0.0, 0.0),
    angle_deg: float = 0.0,
    sizes: tuple[int, ...] = (2, 8),
    tissue=None,
    full_image: bool = True,
    as_circles: bool = False,
    seed: int = 0,
) -> SpatialData:
    """A miniature of what ``spatialdata_io.visium_hd(..., bin_size=sizes)`` returns (spatialdata_io 0.7.1).

    ``n_rc`` 2 µm squares (multiples of 4) on a lattice at ``origin_px``, turned by ``angle_deg``; genes: ``left``
    (1 per 2 µm square in the left half of the lattice), ``rand`` (Poisson), ``row3`` (lattice row mod 3).
    ``tissue(i, j)`` marks the in-tissue 2 µm squares; a filtered table holds only those.
    """
    rng = np.random.default_rng(seed)
    n_r, n_c = n_rc
    ii, jj = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
    fine = np.stack(
        [(jj < n_c // 2).astype(float), rng.poisson(0.3, (n_r, n_c)).astype(float), (ii % 3).astype(float)], axis=-1
    )  # (n_r, n_c, 3)
    fine_tissue = np.ones((n_r, n_c), bool) if tissue is None else tissue(ii, jj)
    theta = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    # Identity to the full-resolution pixels, scales to the hires/lowres pixels (visium_hd.py, `transformations`)
    transformations = {
        DS: Identity(),
        f"{DS}_downscaled_hires": Scale([HIRES, HIRES], axes=("x", "y")),
        f"{DS}_downscaled_lowres": Scale([LOWRES, LOWRES], axes=("x", "y")),
    }
    shapes, tables = {}, {}
    for size in sizes:
        k = size // 2
        counts = fine.reshape(n_r // k, k, n_c // k, k, 3).sum(axis=(1, 3)).reshape(-1, 3)
        in_tissue = fine_tissue.reshape(n_r // k, k, n_c // k, k).any(axis=(1, 3)).ravel()
        rows, cols = np.divmod(np.arange(len(counts)), n_c // k)
        side = size / mpp  # spot_diameter_fullres of the bins: bin_size_um / microns_per_pixel
        xy = np.stack([(cols + 0.5) * side, (rows + 0.5) * side], axis=1) @ rot.T + np.asarray(origin_px)
        keep = np.flatnonzero(in_tissue)  # filtered_feature_bc_matrix: in-tissue barcodes only
        name = f"square_{size:03d}um"
        shapes_name = f"{DS}_{name}"
        obs = pd.DataFrame(
            {
                "in_tissue": np.ones(len(keep), np.int64),
                "array_row": rows[keep],
                "array_col": cols[keep],
                "location_id": np.arange(len(keep)),
            },
            index=pd.Index([f"s_{size:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows[keep], cols[keep], strict=True)]),
        )
        obs["region"] = pd.Categorical([shapes_name] * len(keep))
        table = ad.AnnData(
            X=sp.csr_matrix(counts[keep], dtype=np.float32),
            obs=obs,
            var=pd.DataFrame({"gene_ids": ["E1", "E2", "E3"]}, index=pd.Index(["left", "rand", "row3"])),
        )
        table.obsm["spatial"] = xy[keep]
        circles = ShapesModel.parse(
            xy[keep], geometry=0, radius=side / 2, index=obs["location_id"].copy(), transformations=transformations
        )
        if as_circles:
            shapes[shapes_name] = circles
        else:
            squares = circles.buffer(side / 2, cap_style=3)
            shapes[shapes_name] = ShapesModel.parse(gpd.GeoDataFrame(geometry=squares), transformations=transformations)
        tables[name] = TableModel.parse(table, region=shapes_name, region_key="region", instance_key="location_id")

    he = rng.integers(0, 255, (3, *image_px), dtype=np.uint8)
    images = {}
    if full_image:
        images[f"{DS}_full_image"] = Image2DModel.parse(
            xr.DataArray(he, dims=("c", "y", "x")), scale_factors=[2], rgb=None, transformations={DS: Identity()}
        )
    for suffix, scale in (("hires", HIRES), ("lowres", LOWRES)):
        step = round(1 / scale)
        small = Image2DModel.parse(xr.DataArray(he[:, ::step, ::step], dims=("c", "y", "x")), rgb=None)
        set_transformation(
            small,
            {f"{DS}_downscaled_{suffix}": Identity(), DS: Scale([1 / scale, 1 / scale], axes=("x", "y"))},
            set_all=True,
        )
        images[f"{DS}_{suffix}_image"] = small
    return SpatialData(images=images, shapes=shapes, tables=tables)


def brute_force_truth(sdata, name: str, grid: hx.geometry.BinGrid) -> np.ndarray:
    """Bin x gene counts: for every bin, each square's counts times the share of its area inside the bin."""
    table = sdata.tables[name]
    gdf = sdata.shapes[f"{DS}_{name}"]
    polygons = np.asarray(gdf.geometry.loc[table.obs["location_id"].to_numpy()].values, dtype=object)
    counts = table.X.toarray()
    tree = shapely.STRtree(polygons)
    out = np.zeros((grid.n_rows * grid.n_cols, counts.shape[1]))
    b = grid.bin_px
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            box = shapely.box(c * b, r * b, (c + 1) * b, (r + 1) * b)
            idx = tree.query(box, predicate="intersects")
            share = shapely.area(shapely.intersection(polygons[idx], box)) / shapely.area(polygons[idx])
            out[r * grid.n_cols + c] = share @ counts[idx]
    return out


def truth_on_grid(result) -> tuple[np.ndarray, hx.geometry.BinGrid]:
    truth = result.tables["truth"]
    mpp = truth.uns["visium_hd"]["mpp"]
    image = result.images[f"{DS}_full_image"]["scale0"].image
    grid = hx.geometry.BinGrid.for_image((image.sizes["y"], image.sizes["x"]), mpp=mpp, bin_size_um=8)
    dense = np.zeros((grid.n_rows * grid.n_cols, truth.n_vars))
    dense[truth.obs["array_row"].to_numpy() * grid.n_cols + truth.obs["array_col"].to_numpy()] = truth.X.toarray()
    return dense, grid


@pytest.fixture(scope="module")
def turned_section():
    """500 x 525 µm at 1.25 µm/px; the 2 µm lattice offset by a fraction of a bin and turned by 0.2°."""
    return visium_hd_like(mpp=1.25, image_px=(400, 420), n_rc=(240, 252), origin_px=(3.3, 2.1), angle_deg=0.2)


def test_truth_is_the_area_split_of_the_squares(turned_section):
    sdata = turned_section
    before = fingerprint(sdata)
    result = hx.sim.from_visium_hd(sdata, dataset_id=DS, seed=1)
    assert fingerprint(sdata) == before
    truth = result.tables["truth"]
    assert truth.uns["visium_hd"]["mpp"] == pytest.approx(1.25, rel=1e-9)  # 2 µm = 1.6 px
    assert list(truth.var_names) == ["left", "rand", "row3"]
    dense, grid = truth_on_grid(result)
    assert grid.bin_px == pytest.approx(6.4)
    # every in-tissue square lies on the grid: the counts are conserved
    counts = sdata.tables["square_002um"].X.toarray()
    assert np.allclose(truth.X.toarray().sum(axis=0), counts.sum(axis=0), rtol=1e-5)
    assert truth.uns["visium_hd"]["counts_in_truth"] == pytest.approx(1, abs=1e-6)
    assert np.allclose(dense, brute_force_truth(sdata, "square_002um", grid), atol=1e-4)
    # interior bins hold 16 squares' worth of the left gene; the lattice's border bins a fraction of it
    left = dense[:, 0].reshape(grid.shape)
    assert left[10:50, 5:25] == pytest.approx(16, abs=1e-3)
    assert 0 < left[10, 0] < 16 and left[10, 60:].max() == 0
    assert (truth.obs["coverage"] > 0).all() and truth.obs["coverage"].max() == pytest.approx(1, abs=1e-3)


def test_spots_sum_truth_bins_and_read_as_a_section(turned_section):
    result = hx.sim.from_visium_hd(turned_section, dataset_id=DS, seed=2)
    truth, table = result.tables["truth"], result.tables["table"]
    mpp = truth.uns["visium_hd"]["mpp"]
    radius = 27.5 / mpp
    centres = truth.obsm["spatial"]
    x = truth.X.toarray()
    for xy, spot in zip(table.obsm["spatial"], table.X.toarray(), strict=True):
        inside = np.hypot(*(centres - xy).T) < radius
        assert np.allclose(spot, x[inside].sum(axis=0), rtol=1e-5)
    section = read_section(result)
    assert section.image_key == f"{DS}_full_image" and section.mpp == pytest.approx(mpp)
    assert len(section.spots.xy_px) == table.n_obs >= 10
    assert section.coordinate_system == DS
    # the spots and the truth lie on the original H&E, in its coordinate systems
    assert result.images[f"{DS}_full_image"] is turned_section.images[f"{DS}_full_image"]


def test_offset_lattice_spreads_counts_over_two_bins():
    # 0.8 µm/px: 2 µm = 2.5 px, 8 µm = 10 px; the lattice starts 3 px (0.3 bin) right and 5 px (half a bin) down
    sdata = visium_hd_like(mpp=0.8, image_px=(200, 200), n_rc=(72, 72), origin_px=(3.0, 5.0))
    fine = hx.sim.from_visium_hd(sdata, source="square_002um", dataset_id=DS)
    coarse = hx.sim.from_visium_hd(sdata, source=8, dataset_id=DS)
    assert coarse.tables["truth"].uns["visium_hd"]["mpp"] == pytest.approx(0.8, rel=1e-9)  # 8 µm = 10 px
    left, grid = truth_on_grid(fine)
    left = left[:, 0].reshape(grid.shape)
    # the left half (36 squares = 90 px) spans x in [3, 93): bin columns 0 (7 px of it) to 9 (3 px)
    assert left[3:10, 0] == pytest.approx(16 * 0.7)
    assert left[3:10, 1:9] == pytest.approx(16)
    assert left[3:10, 9] == pytest.approx(16 * 0.3)
    assert left[:, 10:].max() == 0
    assert left[0, 4] == pytest.approx(16 * 0.5)  # the lattice covers the lower half of row 0
    # an 8 µm square straddles two bin columns 0.7 / 0.3 and two bin rows half / half: the same area split
    coarse_dense, _ = truth_on_grid(coarse)
    assert np.allclose(coarse_dense[:, 0].reshape(grid.shape), left, atol=1e-4)
    brute = brute_force_truth(sdata, "square_008um", grid)[:, 0].reshape(grid.shape)
    assert np.allclose(coarse_dense[:, 0].reshape(grid.shape), brute, atol=1e-4)


def test_circles_are_drawn_as_squares():
    sdata = visium_hd_like(mpp=0.8, image_px=(200, 200), n_rc=(72, 72), origin_px=(3.0, 5.0), sizes=(8,))
    circles = visium_hd_like(
        mpp=0.8, image_px=(200, 200), n_rc=(72, 72), origin_px=(3.0, 5.0), sizes=(8,), as_circles=True
    )
    a = hx.sim.from_visium_hd(sdata, source="square_008um", dataset_id=DS).tables["truth"]
    b = hx.sim.from_visium_hd(circles, source="square_008um", dataset_id=DS).tables["truth"]
    assert np.allclose(a.X.toarray(), b.X.toarray(), atol=1e-4)


def test_tissue_comes_from_in_tissue_squares():
    # in-tissue squares in a disk; the filtered table holds only those
    sdata = visium_hd_like(
        mpp=1.0, image_px=(360, 360), n_rc=(176, 176), tissue=lambda i, j: (i - 88) ** 2 + (j - 88) ** 2 < 80**2
    )
    result = hx.sim.from_visium_hd(sdata, dataset_id=DS)
    truth = result.tables["truth"]
    centre = truth.obsm["spatial"] - 176
    assert np.hypot(*centre.T).max() < 170 and np.hypot(*centre.T).max() > 150
    assert truth.X.sum() == pytest.approx(sdata.tables["square_002um"].X.sum(), rel=1e-5)


@pytest.fixture
def small():
    return visium_hd_like(mpp=0.8, image_px=(200, 200), n_rc=(72, 72), origin_px=(3.0, 5.0))


def test_given_mpp_disagreeing_with_the_squares_is_a_warning(small):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = hx.sim.from_visium_hd(small, dataset_id=DS, mpp=0.8)
    assert result.tables["truth"].uns["visium_hd"]["mpp_source"] == "given"
    with pytest.warns(UserWarning, match="disagrees") as caught:
        hx.sim.from_visium_hd(small, dataset_id=DS, mpp=0.9)
    assert caught[0].filename == __file__


def test_refuses_downscaled_images_only():
    sdata = visium_hd_like(mpp=0.8, image_px=(200, 200), n_rc=(72, 72), full_image=False)
    with pytest.raises(ValueError, match="downscaled"):
        hx.sim.from_visium_hd(sdata)


def test_absent_square_size_lists_the_available(small):
    with pytest.raises(ValueError, match=r"'square_002um', 'square_008um'"):
        hx.sim.from_visium_hd(small, source="square_016um")
    with pytest.raises(ValueError, match="larger than the 4 µm bins"):
        hx.sim.from_visium_hd(small, source="square_008um", bin_size_um=4)
    with pytest.raises(ValueError, match="must name a Visium HD bin size"):
        hx.sim.from_visium_hd(small, source="bins")


def test_no_shared_coordinate_system(small):
    set_transformation(small.shapes[f"{DS}_square_002um"], {"elsewhere": Identity()}, set_all=True)
    with pytest.raises(ValueError, match="share no coordinate system"):
        hx.sim.from_visium_hd(small)


def test_squares_off_the_image_or_out_of_tissue(small):
    from spatialdata.transformations import Translation

    off = visium_hd_like(mpp=0.8, image_px=(200, 200), n_rc=(72, 72))
    set_transformation(
        off.shapes[f"{DS}_square_002um"], Translation([500, 0], axes=("x", "y")), to_coordinate_system=DS
    )
    with pytest.raises(ValueError, match="No in-tissue square_002um square lies on the image"):
        hx.sim.from_visium_hd(off)
    small.tables["square_002um"].obs["in_tissue"] = 0
    with pytest.raises(ValueError, match="No in-tissue"):
        hx.sim.from_visium_hd(small)
    tiny = visium_hd_like(mpp=0.8, image_px=(200, 200), n_rc=(72, 72), tissue=lambda i, j: (i < 8) & (j < 8))
    with pytest.raises(ValueError, match="No 55 µm spot"):
        hx.sim.from_visium_hd(tiny)
