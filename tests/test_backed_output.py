"""super_resolve on a SpatialData backed by a zarr store: the output streamed into the store chunk by chunk, read
back lazily, the same numbers as in memory, and nothing left behind when a run fails."""

import importlib

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
import zarr
from helpers import figure_of, fingerprint

import histex as hx
from histex.tl import _bins_output
from histex.tl._bins_output import RowWriter

FAST = {"epochs": 2, "n_states": 2, "n_top_genes": 12, "show_progress": False, "device": "cpu", "seed": 3}


@pytest.fixture
def backed(small_toy, tmp_path):
    path = tmp_path / "section.zarr"
    sd.deepcopy(small_toy).write(path)
    return sd.read_zarr(path), path


def test_row_writer_writes_each_chunk_once_in_order(tmp_path):
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(50, 3), chunks=(8, 3), dtype="float32")
    writes = []

    class Counting:
        shape, dtype, chunks = array.shape, array.dtype, array.chunks

        def __setitem__(self, rows, values):
            writes.append((rows.start, rows.stop))
            array[rows] = values

    writer = RowWriter(Counting())
    values = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    start = 0
    for size in [3, 4, 1, 9, 0, 17, 2, 14]:  # blocks that straddle chunks, an empty one, and the ragged end
        writer[start : start + size] = values[start : start + size]
        start += size
    assert start == 50 and np.array_equal(array[:], values)
    assert all(a % 8 == 0 for a, _ in writes) and writes[-1][1] == 50
    assert sum(b - a for a, b in writes) == 50  # every row written once
    with pytest.raises(ValueError, match="in order: expected a block from row 50, got 10"):
        writer[10:12] = values[10:12]


@pytest.mark.slow
def test_backed_sdata_gets_the_output_in_its_store(backed, small_toy, monkeypatch):
    sdata, path = backed
    in_memory = sd.deepcopy(small_toy)
    hx.tl.super_resolve(in_memory, **FAST)
    monkeypatch.setattr(_bins_output, "_CHUNK_BYTES", 12 * 4 * 500)  # 500 bins a chunk: the blocks straddle chunks
    before = fingerprint(sdata)
    assert hx.tl.super_resolve(sdata, **FAST) == "histex"
    on_disk = sdata.elements_paths_on_disk()
    assert {"tables/histex", "shapes/histex_bins"} <= set(on_disk)
    assert not any("incomplete" in p for p in on_disk)
    table, expected = sdata.tables["histex"], in_memory.tables["histex"]
    for got in (table.X, table.layers["ensemble_sd"], table.obsm["X_histex"]):
        assert isinstance(got, da.Array) and "zarr" in str(got.dask)
    assert table.X.chunks[0][0] == 500 and len(table.X.chunks[0]) == -(-table.n_obs // 500)
    assert np.array_equal(np.asarray(table.X), expected.X)
    assert np.array_equal(np.asarray(table.layers["ensemble_sd"]), expected.layers["ensemble_sd"])
    assert np.array_equal(np.asarray(table.obsm["X_histex"]), expected.obsm["X_histex"])
    for layer in ("lower90", "upper90"):  # the intervals' draws do not depend on the blocks they came in
        assert isinstance(table.layers[layer], da.Array)
        assert np.array_equal(np.asarray(table.layers[layer]), expected.layers[layer])
    pd.testing.assert_frame_equal(table.var, expected.var)  # reliability and the rest, written to the store
    # another level, lazily from the store's chunks, is the in-memory table's
    assert hx.tl.predictive_interval(sdata, level=0.8) == hx.tl.predictive_interval(in_memory, level=0.8)
    assert isinstance(table.layers["upper80"], da.Array)
    for layer in ("lower80", "upper80"):
        assert np.array_equal(np.asarray(table.layers[layer]), expected.layers[layer])
    assert (expected.layers["upper80"] - expected.layers["lower80"]).sum() < (
        expected.layers["upper90"] - expected.layers["lower90"]
    ).sum()
    assert table.obs.equals(expected.obs) and table.uns["histex"]["params"]["to_store"] is True
    assert expected.uns["histex"]["params"]["to_store"] is False
    after = fingerprint(sdata)
    assert {k: v for k, v in after.items() if k != "keys" and "histex" not in k} == {
        k: v for k, v in before.items() if k != "keys"
    }
    # read back from disk: the same table, parameters, history and timings
    again = sd.read_zarr(path)
    back = again.tables["histex"]
    assert np.array_equal(back.X, expected.X) and back.obs.equals(expected.obs)
    assert back.uns["histex"]["history"]["loss"].shape == (2, 2)
    assert {"train", "predict", "write"} <= set(back.uns["histex"]["timings"])
    assert back.uns["spatialdata_attrs"]["region"] == "histex_bins"
    assert len(again.shapes["histex_bins"]) == back.n_obs
    # downstream functions take the lazy table: the same domains as from the in-memory one
    for use in ("embedding", "expression"):
        hx.tl.annotate(sdata, n_domains=3, use=use, key_added=use)
        hx.tl.annotate(in_memory, n_domains=3, use=use, key_added=use)
        assert np.array_equal(sdata.tables["histex"].obs[use], in_memory.tables["histex"].obs[use])
    genes = list(expected.var_names)
    sets = {"first": genes[:4], "second": genes[4:8]}
    lazy = hx.tl.enrich(sdata, gene_sets=sets, groupby="expression", min_size=2, method="ulm")
    pd.testing.assert_frame_equal(
        lazy, hx.tl.enrich(in_memory, gene_sets=sets, groupby="expression", min_size=2, method="ulm")
    )
    figure = figure_of(hx.pl.uncertainty(sdata, genes[0], show=False))
    assert len(figure.axes) >= 2


@pytest.mark.slow
def test_failed_backed_run_leaves_the_store_as_it_was(backed, monkeypatch, caplog):
    sdata, path = backed
    with caplog.at_level("INFO", logger="histex"):
        hx.tl.super_resolve(sdata, **FAST)
    assert "Overwriting" not in caplog.text  # a first run replaces nothing
    old = np.asarray(sdata.tables["histex"].X).copy()
    before, paths_before = fingerprint(sdata), sorted(sdata.elements_paths_on_disk())
    module = importlib.import_module("histex.model.predict")  # the module, not the function of that name
    real = module.predict_blocks

    def fails_half_way(*args, **kwargs):
        blocks = real(*args, **kwargs)
        yield next(blocks)
        raise RuntimeError("out of memory half way")

    monkeypatch.setattr(module, "predict_blocks", fails_half_way)
    with pytest.raises(RuntimeError, match="half way"):
        hx.tl.super_resolve(sdata, **{**FAST, "seed": 4})
    assert fingerprint(sdata) == before
    assert sorted(sdata.elements_paths_on_disk()) == paths_before
    reread = sd.read_zarr(path)  # on disk too: the old result, nothing staged
    assert np.array_equal(reread.tables["histex"].X, old)
    assert sorted(reread.tables) == ["histex", "table", "truth"]
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level("INFO", logger="histex"):
        hx.tl.super_resolve(sdata, **{**FAST, "seed": 4})  # replaces it, on disk as well
    assert "Overwriting 'histex_bins'" in caplog.text and "Overwriting 'histex'." in caplog.text
    reread = sd.read_zarr(path)
    assert (
        sorted(reread.tables) == ["histex", "table", "truth"] and sorted(sdata.elements_paths_on_disk()) == paths_before
    )
    assert np.array_equal(reread.tables["histex"].X, np.asarray(sdata.tables["histex"].X))
    assert not np.array_equal(reread.tables["histex"].X, old)
    assert reread.tables["histex"].uns["histex"]["params"]["seed"] == 4
    assert len(reread.shapes["histex_bins"]) == reread.tables["histex"].n_obs


def test_store_can_be_declined_or_demanded(backed, small_toy):
    sdata, _ = backed
    hx.tl.super_resolve(sdata, to_store=False, **FAST)
    assert "tables/histex" not in sdata.elements_paths_on_disk()
    assert isinstance(sdata.tables["histex"].X, np.ndarray)
    in_memory = sd.deepcopy(small_toy)
    before = fingerprint(in_memory)
    with pytest.raises(ValueError, match="to_store=True needs a SpatialData backed by a zarr store"):
        hx.tl.super_resolve(in_memory, to_store=True, **FAST)
    assert fingerprint(in_memory) == before
