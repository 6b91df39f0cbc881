"""Tests of the procedural toy data set: layout, geometry, pseudo-Visium consistency, and the tissue model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import bin_means
from spatialdata.models import Image2DModel, ShapesModel, TableModel, get_model

from histex.datasets import COMPARTMENTS, toy
from histex.geometry import BinGrid, disk_masks, lattice_pitch, window_offsets, window_size

MPPS = (0.25, 0.5, 0.73)
SMALL_UM = 700.0


@pytest.fixture(scope="module")
def default():
    """The default section (1600 µm, 0.5 µm/px)."""
    return toy()


@pytest.fixture(scope="module", params=MPPS, ids=lambda m: f"mpp{m}")
def small(request):
    """A small section at each scanner resolution."""
    return toy(size_um=SMALL_UM, n_genes=40, mpp=request.param, seed=1)


def _image(sdata, dataset_id: str = "toy") -> np.ndarray:
    """Full-resolution image as ``(c, y, x)`` numpy."""
    return sdata.images[f"{dataset_id}_full_image"]["scale0"]["image"].values


def _mpp(sdata) -> float:
    return sdata["truth"].uns["toy"]["mpp"]


def _grid(sdata) -> BinGrid:
    params = sdata["truth"].uns["toy"]
    return BinGrid.for_image(_image(sdata).shape[1:], mpp=params["mpp"], bin_size_um=params["bin_size_um"])


def _dense_truth(sdata, grid: BinGrid) -> np.ndarray:
    """Truth counts on the full dense bin grid, ``(n_rows, n_cols, genes)`` int64, zero where no bin is stored."""
    truth = sdata["truth"]
    dense = np.zeros((grid.n_rows, grid.n_cols, truth.n_vars), dtype=np.int64)
    dense[truth.obs["array_row"].to_numpy(), truth.obs["array_col"].to_numpy()] = truth.X.toarray().astype(np.int64)
    return dense


# --- layout ----------------------------------------------------------------------------------------------------------


def test_elements_validate_against_spatialdata_models(small):
    assert set(small.images) == {"toy_full_image"}
    assert set(small.shapes) == {"toy", "truth_bins"}
    assert set(small.tables) == {"table", "truth"}
    expected = {
        "toy_full_image": Image2DModel,
        "toy": ShapesModel,
        "truth_bins": ShapesModel,
        "table": TableModel,
        "truth": TableModel,
    }
    for name, model in expected.items():
        element = small[name]
        assert get_model(element) is model
        if model is ShapesModel:
            model.validate(element)
        else:
            model().validate(element)


def test_one_coordinate_system_named_after_dataset():
    sdata = toy(size_um=500, n_genes=20, dataset_id="sample1")
    assert sdata.coordinate_systems == ["sample1"]
    assert set(sdata.images) == {"sample1_full_image"}
    assert set(sdata.shapes) == {"sample1", "truth_bins"}
    assert sdata["table"].uns["spatialdata_attrs"]["region"] == "sample1"
    assert set(sdata["table"].uns["spatial"]) == {"sample1"}


def test_image_shape_and_dtype(small):
    mpp = _mpp(small)
    img = _image(small)
    side = round(SMALL_UM / mpp)
    assert img.shape == (3, side, side)
    assert img.dtype == np.uint8
    assert list(small["toy_full_image"]["scale0"]["image"].coords["c"].values) == ["r", "g", "b"]
    # Multiscale like the Visium reader, halving twice.
    assert [small["toy_full_image"][f"scale{i}"]["image"].shape[1] for i in range(3)] == [
        side,
        side // 2,
        side // 4,
    ]


def test_rectangular_section():
    sdata = toy(size_um=(500.0, 800.0), n_genes=20, mpp=0.73)
    assert _image(sdata).shape == (3, round(500 / 0.73), round(800 / 0.73))
    assert sdata["truth"].uns["toy"]["size_um"] == [500.0, 800.0]


def test_table_annotates_spot_circles(small):
    table, circles = small["table"], small["toy"]
    assert table.uns["spatialdata_attrs"] == {"region": "toy", "region_key": "region", "instance_key": "spot_id"}
    assert (table.obs["region"] == "toy").all()
    assert table.obs["region"].dtype == "category"
    np.testing.assert_array_equal(table.obs["spot_id"].to_numpy(), circles.index.to_numpy())
    np.testing.assert_array_equal(table.obs["spot_id"].to_numpy(), np.arange(table.n_obs))
    np.testing.assert_array_equal(table.obsm["spatial"], np.stack([circles.geometry.x, circles.geometry.y], axis=1))
    assert (table.obs["in_tissue"] == 1).all()
    assert table.obs_names[0] == "spot_00000" and table.obs_names.is_unique
    assert list(table.var.columns) == ["gene_ids", "feature_types", "genome"]
    assert (table.var["feature_types"] == "Gene Expression").all()
    assert (table.var["genome"] == "toy").all()
    assert sp.isspmatrix_csr(table.X) and table.X.dtype == np.float32


def test_scalefactors_like_space_ranger(small):
    mpp = _mpp(small)
    sf = small["table"].uns["spatial"]["toy"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(55.0 / mpp)
    assert sf["fiducial_diameter_fullres"] == pytest.approx(55.0 / mpp * 1.6153846)
    assert sf["tissue_hires_scalef"] == sf["tissue_lowres_scalef"] == 1.0
    assert "microns_per_pixel" not in sf


# --- spots -----------------------------------------------------------------------------------------------------------


def test_spot_radius_is_27_5_um(small):
    radius = small["toy"]["radius"].to_numpy()
    np.testing.assert_allclose(radius * _mpp(small), 27.5)


def test_lattice_pitch_is_100_um(small):
    pitch, regular = lattice_pitch(small["table"].obsm["spatial"])
    assert pitch * _mpp(small) == pytest.approx(100.0, rel=0.01)
    assert regular > 0.9


def test_array_indices_follow_visium_lattice(small):
    obs, xy = small["table"].obs, small["table"].obsm["spatial"] * _mpp(small)
    row, col = obs["array_row"].to_numpy(), obs["array_col"].to_numpy()
    assert np.all((row + col) % 2 == 0)  # odd rows are offset by one column
    # Positions are affine in the indices: 50 µm per array_col, 100 * sqrt(3) / 2 µm per array_row.
    np.testing.assert_allclose(np.ptp(xy[:, 0] - 50.0 * col), 0, atol=1e-6)
    np.testing.assert_allclose(np.ptp(xy[:, 1] - 50.0 * np.sqrt(3) * row), 0, atol=1e-6)


def test_spots_lie_in_tissue_and_inside_complete_bins(small):
    grid = _grid(small)
    xy = small["table"].obsm["spatial"]
    r = small["toy"]["radius"].to_numpy()
    assert np.all(xy - r[:, None] >= 0)
    assert np.all(xy[:, 0] + r <= grid.n_cols * grid.bin_px)
    assert np.all(xy[:, 1] + r <= grid.n_rows * grid.bin_px)
    # The bin holding each centre is stored (has tissue) and is mostly tissue.
    truth = small["truth"].obs
    stored = dict(zip(zip(truth["array_row"], truth["array_col"], strict=True), truth["tissue_fraction"], strict=True))
    rows, cols = np.floor(xy[:, 1] / grid.bin_px).astype(int), np.floor(xy[:, 0] / grid.bin_px).astype(int)
    fractions = [stored.get((r_, c_), 0.0) for r_, c_ in zip(rows, cols, strict=True)]
    assert min(fractions) > 0


def _disk_sums(sdata) -> tuple[np.ndarray, np.ndarray]:
    """Truth counts summed over the bins whose centres lie in each spot's disk, and the number of such bins."""
    grid = _grid(sdata)
    dense = _dense_truth(sdata, grid)
    radius_bins = sdata["toy"]["radius"].iloc[0] / grid.bin_px
    size = window_size(radius_bins)
    anchor, masks = disk_masks(sdata["table"].obsm["spatial"][:, ::-1] / grid.bin_px, radius_bins, size)
    offsets = window_offsets(size)
    sums = np.stack([dense[tuple((a + offsets[m]).T)].sum(axis=0) for a, m in zip(anchor, masks, strict=True)])
    return sums, masks.sum(axis=1)


def test_spot_counts_are_sums_of_truth_bins_in_disk(small):
    sums, n_bins = _disk_sums(small)
    np.testing.assert_array_equal(small["table"].X.toarray(), sums)
    # A 55 µm disk over 8 µm bins holds about 37 bin centres.
    assert n_bins.min() >= 30 and n_bins.max() <= 45


# --- ground truth ----------------------------------------------------------------------------------------------------


def test_truth_on_bin_grid_of_image(small):
    grid = _grid(small)
    truth, squares = small["truth"], small["truth_bins"]
    rows, cols = truth.obs["array_row"].to_numpy(), truth.obs["array_col"].to_numpy()
    assert rows.min() >= 0 and cols.min() >= 0 and rows.max() < grid.n_rows and cols.max() < grid.n_cols
    assert not truth.obs[["array_row", "array_col"]].duplicated().any()
    np.testing.assert_allclose(truth.obsm["spatial"], grid.centres_px(rows, cols))
    np.testing.assert_allclose(squares.geometry.bounds.to_numpy(), grid.boxes_px(rows, cols))
    np.testing.assert_array_equal(squares.index.to_numpy(), truth.obs["instance_id"].to_numpy())
    assert truth.uns["spatialdata_attrs"] == {
        "region": "truth_bins",
        "region_key": "region",
        "instance_key": "instance_id",
    }
    assert (truth.obs["tissue_fraction"] > 0).all() and (truth.obs["tissue_fraction"] <= 1).all()
    np.testing.assert_array_equal(truth.obs["in_tissue"], truth.obs["tissue_fraction"] >= 0.5)
    assert list(truth.obs["compartment"].cat.categories) == list(COMPARTMENTS)
    fractions = truth.obsm["compartment_fractions"]
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0)
    np.testing.assert_allclose(1 - fractions["background"], truth.obs["tissue_fraction"])


def test_truth_counts_are_non_negative_integers(small):
    truth = small["truth"]
    assert sp.isspmatrix_csr(truth.X) and truth.X.dtype == np.float32
    values = truth.X.data
    assert np.all(values >= 0) and np.array_equal(values, np.round(values))
    expected = truth.layers["expected"]
    assert isinstance(expected, np.ndarray) and expected.dtype == np.float32 and np.all(expected >= 0)
    # Poisson draws of the expectation: totals agree closely over many bins.
    assert truth.X.sum() == pytest.approx(expected.sum(), rel=0.02)


def test_truth_does_not_depend_on_mpp():
    ref = toy(size_um=500, n_genes=20, mpp=0.5, seed=4)["truth"]
    other = toy(size_um=500, n_genes=20, mpp=0.73, seed=4)["truth"]
    key = ["array_row", "array_col"]
    a = ref.obs.reset_index(drop=True).reset_index().merge(other.obs.reset_index(drop=True).reset_index(), on=key)
    assert len(a) > 0.95 * min(ref.n_obs, other.n_obs)
    np.testing.assert_array_equal(ref.X[a["index_x"].to_numpy()].toarray(), other.X[a["index_y"].to_numpy()].toarray())
    np.testing.assert_array_equal(ref.layers["expected"][a["index_x"]], other.layers["expected"][a["index_y"]])


def test_all_compartments_present_at_default_size(default):
    obs = default["truth"].obs
    counts = obs["compartment"].value_counts()
    for name in COMPARTMENTS:
        assert counts[name] > 0, name
    # Tissue covers most of the section and leaves a white margin.
    area = obs["tissue_fraction"].sum() * 64 / 1600.0**2
    assert 0.55 < area < 0.8
    assert default["table"].n_obs > 150
    # Several dozen sub-spot structures, at least two tumour nests (one per clone).
    assert (obs["clone"] == "A").any() and (obs["clone"] == "B").any()


def test_expected_counts_follow_programmes(small):
    truth = small["truth"]
    prog = truth.uns["programmes"]
    group = truth.var["group"].to_numpy()
    fractions = truth.obsm["compartment_fractions"][list(prog.index)].to_numpy()
    expected = truth.layers["expected"]
    plain = ~np.isin(group, ["CloneA", "CloneB", "Grad"])
    np.testing.assert_allclose(expected[:, plain], fractions @ prog.to_numpy()[:, plain], rtol=1e-4, atol=1e-5)
    # Gradient genes: a rate times the tissue fraction times the smooth field, whatever the compartment.
    grad = group == "Grad"
    rate = prog.loc["stroma"].to_numpy()[grad]
    model = truth.obs["tissue_fraction"].to_numpy()[:, None] * truth.obs["gradient"].to_numpy()[:, None] * rate
    np.testing.assert_allclose(expected[:, grad], model, rtol=1e-4, atol=1e-5)
    assert prog.loc["background"].sum() == 0


def test_programme_levels(default):
    truth = default["truth"]
    prog, group = truth.uns["programmes"], truth.var["group"].to_numpy()
    full = truth.obs["tissue_fraction"].to_numpy() == 1
    total = truth.layers["expected"][full].sum(axis=1)
    assert 60 < total.mean() < 150
    for comp in COMPARTMENTS[1:]:
        in_comp = full & (truth.obsm["compartment_fractions"][comp].to_numpy() == 1)
        assert 60 < truth.layers["expected"][in_comp].sum(axis=1).mean() < 150, comp
    # Markers: several counts per bin at the top in their compartment, 5-10x lower in other tissue.
    for prefix, comp in [("Str", "stroma"), ("Epi", "epithelium"), ("Imm", "immune"), ("Tum", "tumour")]:
        genes = group == prefix
        own = prog.loc[comp].to_numpy()[genes]
        assert own.max() > 3
        for other in set(COMPARTMENTS[1:]) - {comp}:
            ratio = own / prog.loc[other].to_numpy()[genes]
            assert np.all((ratio >= 5 - 1e-9) & (ratio <= 10 + 1e-9)), (prefix, other)
    hk = prog.loc[list(COMPARTMENTS[1:]), group == "Hk"].to_numpy()
    assert np.all(hk > 0) and np.allclose(hk, hk[0])


def test_clone_genes_only_in_tumour_and_apart(default):
    truth = default["truth"]
    group = truth.var["group"].to_numpy()
    expected = truth.layers["expected"]
    tumour = truth.obsm["compartment_fractions"]["tumour"].to_numpy() > 0
    a = expected[:, group == "CloneA"].sum(axis=1)
    b = expected[:, group == "CloneB"].sum(axis=1)
    assert np.all(a[~tumour] == 0) and np.all(b[~tumour] == 0)
    assert truth.X[~tumour][:, np.flatnonzero(np.isin(group, ["CloneA", "CloneB"]))].sum() == 0
    assert (a > 0).sum() > 50 and (b > 0).sum() > 50
    assert not np.any((a > 0) & (b > 0))  # nests of different clones do not touch
    x = truth.obsm["spatial"][:, 0]
    assert x[a > 0].max() < x[b > 0].min() + 0.1 * x.max()  # clone A on the left, clone B on the right
    # Tumour markers are shared by both clones.
    tum = expected[:, group == "Tum"].sum(axis=1)
    full = truth.obsm["compartment_fractions"]["tumour"].to_numpy() == 1
    assert tum[full & (a > 0)].mean() == pytest.approx(tum[full & (b > 0)].mean(), rel=1e-6)


def test_spots_reveal_clones(default):
    """What the image cannot show, the spots do: clone genes separate the two halves in spot space."""
    table = default["table"]
    a = table[:, table.var_names.str.startswith("CloneA")].X.sum(axis=1).A1
    b = table[:, table.var_names.str.startswith("CloneB")].X.sum(axis=1).A1
    assert (a > 0).sum() >= 3 and (b > 0).sum() >= 3
    x = table.obsm["spatial"][:, 0]
    assert np.average(x, weights=a) < np.average(x, weights=b)


# --- image -----------------------------------------------------------------------------------------------------------


def _colour_by_compartment(sdata, pure: float = 1.0) -> dict[str, np.ndarray]:
    grid = _grid(sdata)
    means = bin_means(np.moveaxis(_image(sdata), 0, -1), grid)  # (3, rows, cols)
    truth = sdata["truth"]
    rows, cols = truth.obs["array_row"].to_numpy(), truth.obs["array_col"].to_numpy()
    colours = means[:, rows, cols].T
    fractions = truth.obsm["compartment_fractions"]
    out = {comp: colours[fractions[comp].to_numpy() >= pure].mean(axis=0) for comp in COMPARTMENTS[1:]}
    tumour = fractions["tumour"].to_numpy() >= pure
    for clone in ("A", "B"):
        out[f"tumour_{clone}"] = colours[tumour & (truth.obs["clone"] == clone).to_numpy()].mean(axis=0)
    return out


def test_image_shows_compartments(default):
    col = _colour_by_compartment(default)
    bright = {k: v.sum() for k, v in col.items()}
    assert bright["immune"] < bright["tumour"] < bright["stroma"] < bright["lumen"]
    assert bright["epithelium"] < bright["stroma"]
    assert bright["immune"] < bright["stroma"] - 150  # packed dark nuclei
    # Stroma pink (red above blue above green), immune aggregates blue-purple.
    r, g, b = col["stroma"]
    assert r > b > g
    r, g, b = col["immune"]
    assert b > r > g
    # Background margin near white.
    img = _image(default)
    corner = img[:, :40, :40].reshape(3, -1).mean(axis=1)
    assert np.all(corner > 230)


def test_clones_look_identical_in_image(default):
    col = _colour_by_compartment(default)
    np.testing.assert_allclose(col["tumour_A"], col["tumour_B"], atol=4.0)


def test_image_looks_alike_at_every_mpp(small):
    col = _colour_by_compartment(small, pure=0.9)
    # Same section drawn at another resolution: compartment colours agree with the 0.5 µm/px rendering.
    ref = _colour_by_compartment(toy(size_um=SMALL_UM, n_genes=40, mpp=0.5, seed=1), pure=0.9)
    for comp in ("stroma", "immune", "tumour", "lumen"):
        np.testing.assert_allclose(col[comp], ref[comp], atol=6.0, err_msg=comp)


# --- seeds and parameters --------------------------------------------------------------------------------------------


def test_same_seed_identical_different_seed_different():
    a = toy(size_um=600, n_genes=20, seed=7)
    b = toy(size_um=600, n_genes=20, seed=7)
    c = toy(size_um=600, n_genes=20, seed=8)
    np.testing.assert_array_equal(_image(a), _image(b))
    np.testing.assert_array_equal(a["table"].X.toarray(), b["table"].X.toarray())
    np.testing.assert_array_equal(a["truth"].X.toarray(), b["truth"].X.toarray())
    np.testing.assert_array_equal(a["table"].obsm["spatial"], b["table"].obsm["spatial"])
    assert not np.array_equal(_image(a), _image(c))
    assert a["truth"].n_obs != c["truth"].n_obs or not np.array_equal(
        a["truth"].obs["compartment"].to_numpy(), c["truth"].obs["compartment"].to_numpy()
    )
    assert not np.array_equal(a["table"].obsm["spatial"], c["table"].obsm["spatial"])


@pytest.mark.parametrize("n_genes", [9, 20, 1000])
def test_gene_allocation(n_genes):
    sdata = toy(size_um=400, n_genes=n_genes)
    for table in (sdata["table"], sdata["truth"]):
        assert table.n_vars == n_genes and table.var_names.is_unique
    group = sdata["truth"].var["group"]
    assert set(group) == {"Hk", "Str", "Epi", "Lum", "Imm", "Tum", "CloneA", "CloneB", "Grad"}
    names = sdata["truth"].var_names
    assert "Epi_01" in names or "Epi_001" in names
    assert sdata["truth"].var["gene_ids"].is_unique


def test_parameters_recorded(small):
    params = small["truth"].uns["toy"]
    assert params["size_um"] == SMALL_UM and params["seed"] == 1 and params["n_genes"] == 40
    assert params["pitch_um"] == 100 and params["spot_diameter_um"] == 55 and params["bin_size_um"] == 8.0


def test_other_bin_size():
    sdata = toy(size_um=500, n_genes=20, bin_size_um=16.0, mpp=0.73)
    assert _grid(sdata).bin_px == pytest.approx(16.0 / 0.73)
    sums, n_bins = _disk_sums(sdata)
    np.testing.assert_array_equal(sdata["table"].X.toarray(), sums)
    assert n_bins.min() >= 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_genes": 8}, "n_genes must be at least 9"),
        ({"size_um": 100.0}, "size_um must be at least 300"),
        ({"mpp": 0.0}, "mpp must be > 0"),
        ({"bin_size_um": -1.0}, "bin_size_um must be > 0"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"dataset_id": ""}, "not a valid element name"),
        ({"size_um": (500.0,)}, r"size_um must be a number or \(height, width\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy(**kwargs)


def test_writes_and_reads_zarr(tmp_path):
    import spatialdata

    sdata = toy(size_um=400, n_genes=20)
    sdata.write(tmp_path / "toy.zarr")
    back = spatialdata.read_zarr(tmp_path / "toy.zarr")
    assert back.coordinate_systems == ["toy"]
    np.testing.assert_array_equal(back["table"].X.toarray(), sdata["table"].X.toarray())
    assert back["truth"].uns["toy"]["mpp"] == 0.5
    assert list(back["truth"].uns["programmes"].index) == list(COMPARTMENTS)


def test_programme_seed_shares_programmes_across_sections():
    sections = [toy(size_um=400, n_genes=20, seed=s, programme_seed=0) for s in range(4)]
    first = sections[0]["truth"]
    for sdata in sections[1:]:
        truth = sdata["truth"]
        assert list(truth.var_names) == list(first.var_names)
        assert list(sdata["table"].var_names) == list(first.var_names)
        pd.testing.assert_frame_equal(truth.uns["programmes"], first.uns["programmes"])
        assert truth.uns["toy"]["programme_seed"] == 0
    # the layout, spots and image are each section's own
    for i, a in enumerate(sections):
        for b in sections[i + 1 :]:
            assert not np.array_equal(a["table"].obsm["spatial"][:5], b["table"].obsm["spatial"][:5])
            assert not np.array_equal(a["truth"].obs["compartment"][:500], b["truth"].obs["compartment"][:500])
    # without programme_seed the programmes follow seed
    assert not toy(size_um=400, n_genes=20, seed=1)["truth"].uns["programmes"].equals(first.uns["programmes"])


def test_programme_seed_equal_to_seed_is_the_default():
    a = toy(size_um=400, n_genes=20, seed=5)
    b = toy(size_um=400, n_genes=20, seed=5, programme_seed=5)
    np.testing.assert_array_equal(_image(a), _image(b))
    for key in ("table", "truth"):
        np.testing.assert_array_equal(a[key].X.toarray(), b[key].X.toarray())
    np.testing.assert_array_equal(a["truth"].layers["expected"], b["truth"].layers["expected"])
    pd.testing.assert_frame_equal(a["truth"].uns["programmes"], b["truth"].uns["programmes"])
    assert a["truth"].uns["toy"]["programme_seed"] == 5 and a["truth"].uns["toy"]["stain"] == [1.0, 1.0]


def test_stain_changes_only_the_image():
    plain = toy(size_um=400, n_genes=20, seed=2)
    stained = toy(size_um=400, n_genes=20, seed=2, stain=(1.2, 0.9))
    for key in ("table", "truth"):
        np.testing.assert_array_equal(plain[key].X.toarray(), stained[key].X.toarray())
    np.testing.assert_array_equal(plain["table"].obsm["spatial"], stained["table"].obsm["spatial"])
    a, b = _image(plain), _image(stained)
    assert a.shape == b.shape and b.dtype == np.uint8 and not np.array_equal(a, b)
    from histex.sim import vary_stain

    expected = vary_stain(np.moveaxis(a, 0, -1), haematoxylin=1.2, eosin=0.9)
    np.testing.assert_array_equal(np.moveaxis(b, 0, -1), expected)
    assert stained["truth"].uns["toy"]["stain"] == [1.2, 0.9]
    with pytest.raises(ValueError, match="stain must be \\(haematoxylin, eosin\\)"):
        toy(size_um=400, n_genes=20, stain=1.2)
    with pytest.raises(ValueError, match="stain\\[1\\] \\(eosin\\) must be a positive number"):
        toy(size_um=400, n_genes=20, stain=(1.0, 0.0))
