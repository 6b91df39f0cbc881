"""The accuracy benchmark runs every kind of method and writes its table and figure."""

import json
import re

import pandas as pd
import pytest
from helpers import benchmark_script

from histex._bench import load_dataset, run_bench_command, run_benchmark


@pytest.mark.slow
def test_bench_scores_models_and_baselines(tmp_path):
    results = run_bench_command(
        tmp_path, datasets=["toy"], methods=["histex", "image_only", "linear"], n_genes=20, epochs=3, n_states=1,
        toy_size_um=600, seeds=[0],
    )  # fmt: skip
    groups = ["all", "visible", "clone", "gradient"]
    assert list(results["method"]) == [m for m in ["histex", "image_only", "linear"] for _ in groups]
    assert list(results["group"].unique()) == groups  # the toy's groups, by what shows them
    assert results[["pearson", "ssim", "rmse", "spot_consistency", "seconds", "peak_rss_mb"]].notna().all().all()
    assert results["rmse"].between(0.01, 0.5).all()
    everything = results[results["group"] == "all"].set_index("method")
    clones = results[results["group"] == "clone"].set_index("method")["pearson"]
    # the clones look alike in the image: only a method with the spots maps them (measured 0.75, 0.74 against 0.41)
    assert min(clones["histex"], clones["linear"]) > clones["image_only"] + 0.2
    assert everything.loc["linear", "pearson"] > 0.2  # the toy's spots carry signal
    # matched to its spots, histex sums over each disk to what the spot measured; image-only does not
    assert everything.loc["histex", "spot_consistency"] > 0.97 > everything.loc["image_only", "spot_consistency"]
    written = pd.read_csv(tmp_path / "results.csv")
    assert list(written.columns) == ["dataset", "seed", "method", "group", "pearson", "ssim", "rmse",
                                     "spot_consistency", "seconds", "peak_rss_mb"]  # fmt: skip
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_bench_refuses_unknown_methods_and_datasets(tmp_path):
    with pytest.raises(ValueError, match="Unknown methods \\['magic'\\]"):
        run_benchmark(["toy"], ["magic"])
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(FileNotFoundError, match="hgsc_nest needs"):
        load_dataset("hgsc_nest", data_dir=tmp_path)


@pytest.mark.slow
def test_bench_command_without_data_runs_the_toy_and_says_what_it_skipped(tmp_path, capsys):
    """As a new user runs it: no --data-dir. The toy runs; the HGSC sections are skipped, each with its files."""
    from histex.cli import main

    run = ["bench", "--methods", "linear", "--seeds", "0", "--genes", "20", "--quiet"]
    assert main([*run, "--out", str(tmp_path / "all")]) == 0
    printed = capsys.readouterr().out
    assert "skipped hgsc_nest needs hgsc_nest.jpg and hgsc_nest.parquet (no data folder given)" in printed
    assert "skipped hgsc_wsi needs hgsc_nuclei_wsi.parquet and hgsc_tissue_wsi.parquet" in printed
    results = pd.read_csv(tmp_path / "all" / "results.csv")
    assert set(results["dataset"]) == {"toy"} and results["pearson"].gt(0.2).all()
    # named by the user, a section without its files is refused before any work, without a traceback
    absent = re.escape(f"hgsc_nest needs hgsc_nest.jpg and hgsc_nest.parquet (not in {tmp_path}). Give the folder")
    for extra, message in [
        (["--datasets", "toy", "hgsc_nest", "--data-dir", str(tmp_path)], absent),
        (["--datasets", "nest"], "unknown datasets \\['nest'\\]"),
        (["--methods", "magic"], "unknown methods \\['magic'\\]"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main([*run, "--out", str(tmp_path / "named"), *extra])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "named").exists()


@pytest.mark.slow
def test_cohort_benchmark_writes_the_keys_of_its_json(tmp_path):
    """benchmarks/cohort.py on two small sections: every figure of cohort.json, as named, and a worker killed
    mid-cohort (SIGKILL) after which every row is done, complete and readable, and nothing is left half-written."""
    module = benchmark_script("cohort")
    args = ["--out", str(tmp_path), "--sections", "2", "--size-um", "500", "--genes", "12", "--epochs", "3"]
    result = module.main([*args, "--states", "1"])
    written = json.loads((tmp_path / "cohort.json").read_text())
    assert written == result
    assert list(written) == ["sections", "seconds_1_worker", "seconds_2_workers", "speedup", "overhead_s_per_section",
                             "killed_worker_recovered"]  # fmt: skip
    assert written["sections"] == 2 and written["killed_worker_recovered"] is True
    assert 0 < written["seconds_2_workers"] < 2 * written["seconds_1_worker"]
    assert 0 <= written["overhead_s_per_section"] < written["seconds_1_worker"] / 2


@pytest.mark.slow
def test_trust_benchmark_writes_the_keys_of_its_json(tmp_path):
    """benchmarks/trust.py on a small toy: per section, exactly the issue's four figures; the calibration beside."""
    module = benchmark_script("trust")
    args = ["--out", str(tmp_path), "--sections", "toy", "--seeds", "0", "--toy-size-um", "800", "--epochs", "20"]
    result = module.main([*args, "--states", "2", "--genes", "30"])
    written = json.loads((tmp_path / "trust.json").read_text())
    assert written == result and list(written) == ["toy"]
    figures = written["toy"]
    assert list(figures) == ["reliability_spearman", "reliable_gap", "coverage90_median", "seconds"]
    assert figures["reliability_spearman"] > 0.3 and figures["reliable_gap"] > 0
    assert 0.85 <= figures["coverage90_median"] <= 0.95 and 0 < figures["seconds"] < 10
    calibration = pd.read_csv(tmp_path / "calibration.csv")
    assert list(calibration["level"]) == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert calibration["coverage_median"].is_monotonic_increasing
    assert (calibration["least_coverage_median"] >= calibration["level"] - 1e-9).all()
    genes = pd.read_csv(tmp_path / "trust_genes.csv")
    assert len(genes) == 30 and set(genes["group"]) == {"visible", "clone", "gradient"}
    assert (tmp_path / "calibration.png").stat().st_size > 10_000


@pytest.mark.slow
def test_transfer_benchmark_writes_the_keys_of_its_json(tmp_path):
    """benchmarks/transfer.py on a small toy family: every figure of transfer.json, as named."""
    module = benchmark_script("transfer")
    args = ["--out", str(tmp_path), "--families", "toy", "--toy-size-um", "600", "--epochs", "2", "--states", "1"]
    module.main([*args, "--genes", "12"])
    report = json.loads((tmp_path / "transfer.json").read_text())
    figures = report["families"]["toy"]
    keys = ["self", "one", "many", "he_only", "image_only", "interpolation", "fit_s", "predict_s", "self_s"]
    assert list(figures) == [*keys, "peak_rss_mb"]
    # measured 0.46, 0.59, 0.62 with the spots, 0.04 from the image alone after 2 epochs
    with_spots = min(figures["self"], figures["one"], figures["many"])
    assert with_spots > 0.3 and max(figures["he_only"], figures["image_only"]) < with_spots
    assert figures["interpolation"] > 0.2
    assert all(figures[k] > 0 for k in ("fit_s", "predict_s", "self_s")) and 300 < figures["peak_rss_mb"] < 6000
    assert (tmp_path / "toy_model" / "manifest.json").is_file()


@pytest.mark.slow
def test_matching_benchmark_scores_the_same_networks_before_and_after(tmp_path):
    """benchmarks/matching.py on a small toy: per group, before matching, rescaled, and after (shapes chosen, then
    rescaled), with the spot consistency."""
    module = benchmark_script("matching")
    args = ["--out", str(tmp_path), "--sections", "toy", "--seeds", "0", "--toy-size-um", "600", "--epochs", "2"]
    module.main([*args, "--states", "1", "--genes", "12"])
    report = json.loads((tmp_path / "matching.json").read_text())["toy"]
    assert list(report) == ["all", "visible", "clone", "gradient"]
    for group in report.values():
        assert list(group) == ["before", "rescaled", "after"]
        assert set(group["after"]) == {"pearson", "ssim", "rmse", "spot_consistency"}
    # two epochs leave the network far from its spots; matched, every disk sums to about what its spot measured
    assert report["all"]["after"]["spot_consistency"] > 0.95 > report["all"]["before"]["spot_consistency"]
    assert report["clone"]["after"]["pearson"] > report["clone"]["before"]["pearson"] + 0.1
    assert report["all"]["rescaled"]["spot_consistency"] > 0.95
    assert len(pd.read_csv(tmp_path / "matching.csv")) == 12
