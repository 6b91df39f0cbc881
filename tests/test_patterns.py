"""histex.tl.spatial_patterns: Moran's I of each gene on bins and on spots, side by side."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from spatialdata import SpatialData

import histex as hx

COLUMNS = ["moran_bins", "moran_spots", "gain", "pval_bins", "pval_spots", "fdr_bins", "fdr_spots"]


def _planted(n: int = 160, seed: int = 0) -> SpatialData:
    """An ``n`` x ``n`` grid of 8 µm bins and the Visium spots summed from it.

    ``Blobs`` is high in discs of radius 2 bins (16 µm, smaller than a 55 µm spot), ``Flat`` has the same mean
    everywhere, ``Gradient`` rises across the section; ``Hk_*`` are flat background genes.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(n * n), n)
    centres = rng.uniform(0, n, size=(n * n // 60, 2))
    near = np.zeros(n * n, bool)
    for cy, cx in centres:
        near |= (rows + 0.5 - cy) ** 2 + (cols + 0.5 - cx) ** 2 <= 2.0**2
    blobs = np.where(near, 8.0, 1.0)
    rates = {
        **{f"Hk_{i}": np.full(n * n, 5.0) for i in range(10)},
        "Blobs": blobs,
        "Flat": np.full(n * n, blobs.mean()),
        "Gradient": blobs.mean() * (0.25 + 1.5 * cols / (n - 1)),
    }
    counts = rng.poisson(np.stack(list(rates.values()), axis=1)).astype(np.float32)
    var = pd.DataFrame(index=list(rates))
    bins = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"array_row": rows, "array_col": cols}, index=[f"bin_{i}" for i in range(n * n)]),
        var=var,
    )
    bins.obsm["spatial"] = np.stack([cols, rows], axis=1) + 0.5

    # Spots on a 100 µm (12.5 bin) hexagonal lattice, each the sum of the bins within 27.5 µm of its centre.
    pitch, radius = 12.5, 27.5 / 8
    spot_rows, spot_cols, xy = [], [], []
    for j in range(int((n - 2 * radius) / (pitch * np.sqrt(3) / 2)) + 1):
        for i in range(int((n - 2 * radius - pitch / 2) / pitch) + 1):
            spot_rows.append(j)
            spot_cols.append(2 * i + j % 2)
            xy.append((radius + i * pitch + (j % 2) * pitch / 2, radius + j * pitch * np.sqrt(3) / 2))
    xy = np.array(xy)
    inside = ((cols[None, :] + 0.5 - xy[:, :1]) ** 2 + (rows[None, :] + 0.5 - xy[:, 1:]) ** 2) <= radius**2
    spots = ad.AnnData(
        X=sp.csr_matrix(inside.astype(np.float32) @ counts),
        obs=pd.DataFrame({"array_row": spot_rows, "array_col": spot_cols}, index=[f"spot_{i}" for i in range(len(xy))]),
        var=var.copy(),
    )
    spots.obsm["spatial"] = xy
    return SpatialData(tables={"bins": bins, "spots": spots})


@pytest.fixture(scope="module")
def toy():
    return hx.datasets.toy(size_um=800, n_genes=40, seed=0)


def test_sub_spot_structure_gains_moran_i_on_bins():
    sdata = _planted()
    result = hx.tl.spatial_patterns(sdata, "bins", spots_table_key="spots")
    # measured: Blobs 0.365 on bins, -0.013 on spots; Flat -0.004, -0.002; Gradient 0.320, 0.880 (180 spots)
    blobs, flat, gradient = (result.loc[g] for g in ["Blobs", "Flat", "Gradient"])
    assert blobs["moran_bins"] > flat["moran_bins"] + 0.3
    assert abs(flat["moran_bins"]) < 0.02 and abs(blobs["moran_spots"]) < 0.1
    assert blobs["gain"] > gradient["gain"] + 0.7  # measured 0.378 against -0.560
    assert blobs["gain"] > 0.25 and gradient["gain"] < -0.4  # the gradient is smoother on spots than on noisy bins
    assert gradient["moran_spots"] > 0.8
    assert blobs["pval_bins"] < 1e-10 and flat["pval_bins"] > 0.05  # measured 0.130
    assert result.index[0] == "Blobs"  # sorted by gain
    assert list(result.columns) == COLUMNS and result.index.name == "gene"
    assert (np.diff(result["gain"].to_numpy()) <= 0).all()
    stored = sdata.tables["bins"].uns["spatial_patterns"]
    pd.testing.assert_frame_equal(stored, result)
    params = sdata.tables["bins"].uns["spatial_patterns_params"]
    assert params["spots_table_key"] == "spots" and params["n_genes"] == 13 and params["n_neighs_bins"] == 8


def test_the_bin_graph_needs_no_pixel_centres_and_four_neighbours_work():
    sdata = _planted(n=80, seed=1)
    eight = hx.tl.spatial_patterns(sdata, "bins", genes=["Blobs", "Flat"], spots_table_key="spots")
    del sdata.tables["bins"].obsm["spatial"]
    four = hx.tl.spatial_patterns(sdata, "bins", genes=["Blobs", "Flat"], spots_table_key="spots", n_neighs_bins=4)
    # Discs of radius 2 bins: edge neighbours are more alike than corner neighbours (measured 0.416 vs 0.377).
    assert four.loc["Blobs", "moran_bins"] > eight.loc["Blobs", "moran_bins"] + 0.02
    np.testing.assert_allclose(four["moran_spots"], eight["moran_spots"])
    assert list(four.index) == ["Blobs", "Flat"]


def test_toy_immune_aggregates_gain_more_than_the_gradient(toy):
    sdata = toy
    truth = sdata.tables["truth"]
    result = hx.tl.spatial_patterns(sdata, "truth", spots_table_key="table")
    assert list(result.columns) == COLUMNS
    assert sorted(result.index) == sorted(truth.var_names) and len(result) == 40
    assert truth.uns["spatial_patterns"] is result or truth.uns["spatial_patterns"].equals(result)
    group = truth.var["group"].astype(str).reindex(result.index)
    gain = result["gain"].groupby(group).agg(["min", "max"])
    # measured: Imm gains 0.166 to 0.316, Grad -0.471 to -0.381 (50 spots, 6921 bins)
    assert gain.loc["Imm", "min"] > gain.loc["Grad", "max"] + 0.4
    assert result.loc[group == "Imm", "moran_bins"].min() > 0.15  # measured 0.175
    assert result.loc[group == "Grad", "moran_spots"].min() > 0.7  # measured 0.749
    assert ((result["pval_bins"] >= 0) & (result["pval_bins"] <= 1)).all()
    assert (result["fdr_bins"] >= result["pval_bins"]).all()


def test_spots_from_super_resolve_metadata_and_bins_only():
    sdata = hx.datasets.toy(size_um=500, n_genes=18, seed=2)
    truth = sdata.tables["truth"]
    genes = ["Imm_01", "Grad_01"]
    truth.uns["histex"] = {"data": {"table_key": "table"}, "params": {"layer": "X"}}
    recorded = hx.tl.spatial_patterns(sdata, "truth", genes=genes)
    given = hx.tl.spatial_patterns(sdata, "truth", genes=genes, spots_table_key="table", key_added="given")
    pd.testing.assert_frame_equal(recorded, given)
    assert truth.uns["spatial_patterns_params"]["spots_table_key"] == "table"

    del truth.uns["histex"]  # a Visium HD table: bins only
    alone = hx.tl.spatial_patterns(sdata, "truth", genes=genes, key_added="alone")
    assert alone[["moran_spots", "pval_spots", "fdr_spots", "gain"]].isna().all().all()
    np.testing.assert_allclose(alone.loc[genes, "moran_bins"], given.loc[genes, "moran_bins"])
    assert truth.uns["alone_params"]["spots_table_key"] is None


def test_bad_input_is_refused_and_nothing_is_written(toy):
    sdata = toy
    before = {key: sorted(table.uns) for key, table in sdata.tables.items()}
    with pytest.raises(ValueError, match="not a table of bins"):
        hx.tl.spatial_patterns(sdata, "table", spots_table_key="table", key_added="bad")
    with pytest.raises(ValueError, match="not in the table 'truth': Nope_01"):
        hx.tl.spatial_patterns(sdata, "truth", genes=["Imm_01", "Nope_01"], spots_table_key="table", key_added="bad")
    with pytest.raises(KeyError, match="No table 'spots'"):
        hx.tl.spatial_patterns(sdata, "truth", spots_table_key="spots", key_added="bad")
    with pytest.raises(ValueError, match="n_neighs_bins must be one of"):
        hx.tl.spatial_patterns(sdata, "truth", spots_table_key="table", n_neighs_bins=6, key_added="bad")
    with pytest.raises(KeyError, match="No layer 'counts'"):
        hx.tl.spatial_patterns(sdata, "truth", spots_table_key="table", layer="counts", key_added="bad")
    assert {key: sorted(table.uns) for key, table in sdata.tables.items()} == before

    spots = sdata.tables["table"]
    sdata.tables["fewer"] = spots[:, spots.var_names[:5]].copy()
    with pytest.raises(ValueError, match="not in the spot table 'fewer'"):
        hx.tl.spatial_patterns(sdata, "truth", genes=["Imm_01"], spots_table_key="fewer", key_added="bad")
    result = hx.tl.spatial_patterns(sdata, "truth", spots_table_key="fewer", key_added="common")
    assert list(result.sort_index().index) == sorted(spots.var_names[:5])  # default: the genes both tables have
