"""The accuracy benchmark runs every kind of method and writes its table and figure."""

import pandas as pd
import pytest

from histex._bench import load_dataset, run_bench_command, run_benchmark


def test_bench_scores_models_and_baselines(tmp_path):
    results = run_bench_command(
        tmp_path, datasets=["toy"], methods=["histex", "linear", "idw"], n_genes=20, epochs=3, n_states=1,
        toy_size_um=600,
    )  # fmt: skip
    assert list(results["method"]) == ["histex", "linear", "idw"]
    assert results[["pearson", "ssim", "rmse", "seconds", "peak_rss_mb"]].notna().all().all()
    assert (results["pearson"].between(-1, 1)).all() and (results["rmse"] >= 0).all()
    assert results.loc[results["method"] == "linear", "pearson"].item() > 0.2  # the toy's spots carry signal
    written = pd.read_csv(tmp_path / "results.csv")
    assert list(written.columns) == ["dataset", "method", "pearson", "ssim", "rmse", "seconds", "peak_rss_mb"]
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_bench_refuses_unknown_methods_and_datasets(tmp_path):
    with pytest.raises(ValueError, match="Unknown methods \\['magic'\\]"):
        run_benchmark(["toy"], ["magic"])
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(FileNotFoundError, match="hgsc_nest needs"):
        load_dataset("hgsc_nest", data_dir=tmp_path)


def test_transfer_benchmark_writes_the_keys_of_its_json(tmp_path):
    """benchmarks/transfer.py on a small toy family: every figure of transfer.json, as named."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"
    spec = importlib.util.spec_from_file_location("transfer_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--out", str(tmp_path), "--families", "toy", "--toy-size-um", "600", "--epochs", "2", "--states", "1"]
    module.main([*args, "--genes", "12"])
    report = json.loads((tmp_path / "transfer.json").read_text())
    figures = report["families"]["toy"]
    keys = ["self", "one", "many", "he_only", "image_only", "interpolation", "fit_s", "predict_s", "self_s"]
    assert list(figures) == [*keys, "peak_rss_mb"]
    assert all(-1 <= figures[k] <= 1 for k in keys[:6]) and figures["interpolation"] > 0.2
    assert all(figures[k] > 0 for k in ("fit_s", "predict_s", "self_s", "peak_rss_mb"))
    assert (tmp_path / "toy_model" / "manifest.json").is_file()
