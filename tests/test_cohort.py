"""``histex cohort``: sections as tasks on dask.distributed, alone-equal, failing alone, resuming (a worker killed
mid-cohort: benchmarks/cohort.py, run by tests/test_bench.py)."""

import re
import time

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import histex as hx
from histex._run import run_section
from histex.cli import main
from histex.cohort import read_samples, run_cohort, worker_gpu
from histex.sim import write_spaceranger

SETTINGS = {"epochs": 3, "n_states": 1}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Four toy sections written as Space Ranger folders, and a samples table with paths relative to it."""
    root = tmp_path_factory.mktemp("cohort_in")
    rows = []
    for seed in range(4):
        toy = hx.datasets.toy(size_um=500, n_genes=12, seed=seed)
        outs, image = write_spaceranger(toy, root / f"s{seed}", version=1 + seed % 2)
        rows.append({"sample_id": f"s{seed}", "outs": outs.relative_to(root), "image": image.relative_to(root)})
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)
    return root / "samples.csv"


def _table(store):
    return np.asarray(sd.read_zarr(store).tables["histex"].X)


@pytest.mark.slow
def test_a_cohort_gives_each_section_what_it_gives_alone_and_resumes(samples, tmp_path):
    table = read_samples(samples)
    broken = table.iloc[0].to_dict() | {"sample_id": "broken", "image": str(tmp_path / "broken.tif")}
    (tmp_path / "broken.tif").write_text("not an image")
    table = pd.concat([table, pd.DataFrame([broken])], ignore_index=True)

    start = time.perf_counter()
    summary = run_cohort(table, tmp_path / "out", workers=2, show_progress=False, **SETTINGS)
    wall = time.perf_counter() - start
    # each worker runs one section at a time: the sections' own seconds fit in the two workers' time
    assert summary["seconds"].sum() < 2 * wall
    assert list(summary["sample_id"]) == ["s0", "s1", "s2", "s3", "broken"]
    assert list(summary["status"]) == ["done"] * 4 + ["failed"]  # the bad row fails alone
    assert "broken.tif" in summary.loc[4, "error"] and (summary.loc[:3, "error"] == "").all()
    assert (summary.loc[:3, "seconds"] > 0).all() and (summary.loc[:3, "peak_rss_mb"] > 200).all()
    written = pd.read_csv(tmp_path / "out" / "cohort.csv", keep_default_na=False)
    assert list(written.columns) == ["sample_id", "status", "seconds", "peak_rss_mb", "error"]
    assert list(written["status"]) == list(summary["status"]) and written.loc[4, "error"] == summary.loc[4, "error"]
    for row in table.iloc[:4].itertuples():
        alone = tmp_path / f"alone_{row.sample_id}.zarr"
        run_section(row.outs, row.image, alone, show_progress=False, echo=lambda *_: None, **SETTINGS)
        np.testing.assert_allclose(_table(tmp_path / "out" / f"{row.sample_id}.zarr"), _table(alone), atol=1e-4)
    assert not list((tmp_path / "out").glob(".*partial"))

    # interrupted while writing s2 (its report not yet in place, a half-written store left under its temporary
    # name): a rerun does only what is left, that row and the failed one, and clears the half-written store
    import shutil

    shutil.rmtree(tmp_path / "out" / "s2_report")
    shutil.copytree(tmp_path / "out" / "s2.zarr", tmp_path / "out" / ".s2.zarr.partial")
    shutil.rmtree(tmp_path / "out" / ".s2.zarr.partial" / "tables")
    again = run_cohort(table, tmp_path / "out", workers=1, show_progress=False, **SETTINGS)
    assert list(again["status"]) == ["skipped", "skipped", "done", "skipped", "failed"]
    assert not list((tmp_path / "out").glob(".*partial")) and _table(tmp_path / "out" / "s2.zarr").shape[1] == 12


def test_bad_samples_are_reported_together_before_any_work(samples, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("histex.cohort.CONNECT_TIMEOUT", "2s")
    table = pd.read_csv(samples)
    table.loc[1, "sample_id"] = "s0"
    table.loc[2, "image"] = "nowhere.tif"
    bad = samples.parent / "bad.csv"
    table.to_csv(bad, index=False)
    with pytest.raises(ValueError, match=re.escape("duplicate sample ids ['s0']") + ".*s2: no image at .*nowhere.tif"):
        read_samples(bad)
    table[["sample_id", "image"]].to_csv(samples.parent / "short.csv", index=False)
    with pytest.raises(ValueError, match=re.escape("short.csv lacks the columns ['outs']")):
        read_samples(samples.parent / "short.csv")
    for args, message in [
        ([str(bad)], "duplicate sample ids"),
        ([str(samples), "--scheduler", "tcp://127.0.0.1:9"], "Cannot reach the dask scheduler at 'tcp://127.0.0.1:9'"),
        ([str(samples), "--model-dir", str(tmp_path)], "is not a saved model"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["cohort", *args, "--out", str(tmp_path / "out"), "--quiet"])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "cohort.csv").exists()


def test_each_worker_of_a_local_cluster_has_its_own_gpu():
    assert [worker_gpu(name, 4) for name in (0, 1, 3, "5")] == ["cuda:0", "cuda:1", "cuda:3", "cuda:1"]
    assert worker_gpu("SLURMCluster-3", 1) == "cuda:0"  # a job sees only its own GPU
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="one worker per GPU, and this machine has no CUDA device"):
            run_cohort(pd.DataFrame(columns=["sample_id", "outs", "image"]), "unused", gpu=True)
