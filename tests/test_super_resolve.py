import numpy as np
import pytest
import spatialdata as sd
from helpers import fingerprint

import histex as hx

FAST = {"epochs": 3, "n_states": 2, "show_progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def resolved(small_toy):
    sdata = sd.deepcopy(small_toy)
    before = fingerprint(sdata)
    key = hx.tl.super_resolve(sdata, **FAST)
    return sdata, key, before


def test_returns_key_and_writes_exactly_bins_and_table(resolved):
    sdata, key, before = resolved
    assert key == "histex"
    added = set(fingerprint(sdata)["keys"]) - set(before["keys"])
    assert added == {"shapes/histex_bins", "tables/histex"}


def test_inputs_are_not_modified(resolved):
    sdata, _, before = resolved
    after = fingerprint(sdata)
    for k, v in before.items():
        if k != "keys":
            assert after[k] == v, k


def test_table_columns_and_layers(resolved):
    sdata, _, _ = resolved
    table = sdata.tables["histex"]
    shapes = sdata.shapes["histex_bins"]
    n = table.n_obs
    assert len(shapes) == n and n > 1000
    assert table.X.dtype == np.float32 and (table.X >= 0).all()
    assert table.layers["ensemble_sd"].shape == table.shape and (table.layers["ensemble_sd"] >= 0).all()
    assert table.layers["ensemble_sd"].max() > 0  # two states disagree somewhere
    assert {"array_row", "array_col", "region", "instance_id"} <= set(table.obs.columns)
    assert table.obs["region"].cat.categories.tolist() == ["histex_bins"]
    assert table.uns["spatialdata_attrs"]["region"] == "histex_bins"
    assert np.array_equal(np.sort(table.obs["instance_id"].to_numpy()), np.sort(shapes.index.to_numpy()))
    assert table.obsm["X_histex"].shape == (n, 128)
    meta = table.uns["histex"]
    assert {"params", "data", "network", "versions", "history", "timings"} <= set(meta)
    assert meta["params"]["variant"] == "histex" and meta["params"]["n_states"] == 2
    assert meta["history"]["loss"].shape == (2, 3) and meta["history"]["validation"].shape == (2, 0)
    assert meta["params"]["epochs_run"] == 3 and list(meta["history"]["best_epoch"]) == [3, 3]
    assert meta["params"]["holdout"] == 0 and meta["params"]["precision"] == "auto"
    assert {"train", "predict"} <= set(meta["timings"])
    assert meta["data"]["mpp"] == pytest.approx(0.5, rel=1e-3)  # derived from the 100 µm lattice
    assert meta["versions"]["torch"]
    # the genes are among the spots' genes, highly variable first
    assert set(table.var_names) <= set(sdata.tables["table"].var_names)


def test_bins_overlay_the_image(resolved):
    """At 0.5 µm/px an 8 µm bin is 16 px: bin (r, c) is the square [16c, 16c + 16) x [16r, 16r + 16)."""
    sdata, _, _ = resolved
    table = sdata.tables["histex"]
    shapes = sdata.shapes["histex_bins"]
    image_t = sd.transformations.get_transformation(sdata.images["toy_full_image"], get_all=True)
    assert sd.transformations.get_transformation(shapes, get_all=True).keys() == image_t.keys()
    rows, cols = table.obs["array_row"].to_numpy(), table.obs["array_col"].to_numpy()
    bounds = shapes.loc[table.obs["instance_id"].to_numpy()].geometry.bounds.to_numpy()
    assert np.allclose(bounds, np.stack([16 * cols, 16 * rows, 16 * cols + 16, 16 * rows + 16], axis=1))
    assert np.allclose(table.obsm["spatial"], np.stack([16 * cols + 8, 16 * rows + 8], axis=1))
    # the same bins as the ground truth of the toy section
    truth = sdata.tables["truth"].obs.set_index(["array_row", "array_col"])["instance_id"]
    r0, c0 = rows[len(rows) // 2], cols[len(cols) // 2]
    truth_poly = sdata.shapes["truth_bins"].loc[truth.loc[(r0, c0)]].geometry
    ours = shapes.loc[table.obs["instance_id"].to_numpy()[len(rows) // 2]].geometry
    assert truth_poly.equals_exact(ours, tolerance=1e-6)  # mpp read from the lattice: equal to 1e-12


def test_rasterize_bins_works(resolved):
    sdata, _, _ = resolved
    table = sdata.tables["histex"]
    gene = table.var_names[0]
    img = sd.rasterize_bins(sdata, "histex_bins", "histex", "array_col", "array_row", value_key=gene)
    arr = np.asarray(img.data).squeeze()
    r = table.obs["array_row"].to_numpy() - table.obs["array_row"].min()
    c = table.obs["array_col"].to_numpy() - table.obs["array_col"].min()
    assert np.allclose(arr[r, c], table[:, gene].X.ravel())


def test_same_seed_same_result(small_toy):
    a, b, c = (sd.deepcopy(small_toy) for _ in range(3))
    kw = {**FAST, "n_states": 1, "epochs": 2, "n_top_genes": 10}
    hx.tl.super_resolve(a, seed=5, **kw)
    hx.tl.super_resolve(b, seed=5, **kw)
    hx.tl.super_resolve(c, seed=6, **kw)
    assert np.array_equal(a.tables["histex"].X, b.tables["histex"].X)
    assert not np.array_equal(a.tables["histex"].X, c.tables["histex"].X)


def test_feature_components_and_precision_change_the_fit_not_the_output(small_toy):
    a, b = sd.deepcopy(small_toy), sd.deepcopy(small_toy)
    kw = {**FAST, "n_states": 1, "epochs": 2, "n_top_genes": 10, "seed": 2}
    hx.tl.super_resolve(a, precision="float32", **kw)
    hx.tl.super_resolve(b, precision="bfloat16", feature_components=8, **kw)
    ta, tb = a.tables["histex"], b.tables["histex"]
    assert ta.shape == tb.shape and np.isfinite(tb.X).all() and tb.X.dtype == np.float32
    assert (
        tb.uns["histex"]["params"]["feature_components"] == 8 and tb.uns["histex"]["params"]["precision"] == "bfloat16"
    )
    # the network saw 8 components plus the two position channels instead of every feature channel
    n_channels = len(ta.uns["histex"]["data"]["feature_channels"])
    assert n_channels > 10
    assert not np.array_equal(ta.X, tb.X) and np.corrcoef(ta.X.ravel(), tb.X.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("variant", ["image_only", "paper"])
def test_variants_and_key_added(small_toy, variant):
    sdata = sd.deepcopy(small_toy)
    key = hx.tl.super_resolve(sdata, variant=variant, key_added=variant, genes=["Epi_01", "Imm_01"], **FAST)
    assert key == variant and f"{variant}_bins" in sdata.shapes
    table = sdata.tables[variant]
    assert table.var_names.tolist() == ["Epi_01", "Imm_01"]
    assert table.uns["histex"]["params"]["variant"] == variant
    assert table.uns["histex"]["params"]["nonlinear"] == (variant != "paper")


def test_writes_to_zarr_and_reads_back(resolved, tmp_path):
    sdata, _, _ = resolved
    small = sd.SpatialData(
        shapes={"histex_bins": sdata.shapes["histex_bins"]}, tables={"histex": sdata.tables["histex"]}
    )
    small.write(tmp_path / "out.zarr")
    back = sd.read_zarr(tmp_path / "out.zarr")
    assert np.allclose(back.tables["histex"].X, sdata.tables["histex"].X)
    assert back.tables["histex"].uns["histex"]["params"]["variant"] == "histex"


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.73])
def test_bin_polygons_cover_the_pixels_they_claim(mpp):
    """At any pixel size, a written bin's square holds exactly the pixels whose centres lie in its 8 µm cell."""
    sdata = hx.datasets.toy(size_um=480, n_genes=12, mpp=mpp, seed=3)
    hx.pp.extract_features(sdata, show_progress=False)
    hx.tl.super_resolve(sdata, **{**FAST, "n_states": 1, "epochs": 1})
    table, shapes = sdata.tables["histex"], sdata.shapes["histex_bins"]
    assert table.uns["histex"]["data"]["mpp"] == pytest.approx(mpp, rel=2e-3)
    image = hx._sdata.image_array(sdata, "toy_full_image")
    # pixel centres in µm at the true pixel size, and the 8 µm cell they fall in
    cell_y = np.floor((np.arange(image.sizes["y"]) + 0.5) * mpp / 8).astype(int)
    cell_x = np.floor((np.arange(image.sizes["x"]) + 0.5) * mpp / 8).astype(int)
    to_px = hx._sdata.to_image_pixels(sdata, shapes, "toy_full_image", "toy")
    yy, xx = np.mgrid[0 : image.sizes["y"], 0 : image.sizes["x"]] + 0.5
    for i in np.linspace(0, table.n_obs - 1, 6).astype(int):
        row, col = table.obs["array_row"].iloc[i], table.obs["array_col"].iloc[i]
        x0, y0, x1, y1 = shapes.loc[table.obs["instance_id"].iloc[i]].geometry.bounds
        (x0, y0), (x1, y1) = (to_px[:2, :2] @ np.array(p) + to_px[:2, 2] for p in ((x0, y0), (x1, y1)))
        inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        expected = (cell_y[:, None] == row) & (cell_x[None, :] == col)
        # the inferred mpp differs from the true one in the 4th digit: allow a pixel's slack on the far edges
        assert (inside != expected).sum() <= 2 * (x1 - x0)
        assert (inside & expected).sum() >= 0.9 * expected.sum()


@pytest.mark.gpu
def test_cuda_matches_cpu(small_toy):
    kw = {**FAST, "n_states": 1, "epochs": 3, "n_top_genes": 10}
    on_cpu, on_gpu = sd.deepcopy(small_toy), sd.deepcopy(small_toy)
    hx.tl.super_resolve(on_cpu, **kw)
    hx.tl.super_resolve(on_gpu, **{**kw, "device": "cuda"})
    a, b = on_cpu.tables["histex"].X, on_gpu.tables["histex"].X
    assert on_gpu.tables["histex"].uns["histex"]["params"]["device"].startswith("cuda")
    assert np.isfinite(b).all()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
