"""Can I trust this gene? Per-gene reliability and per-bin predictive intervals, held against the truth.

    python benchmarks/trust.py --out DIR [--data-dir ../shared/data] [--sections toy hgsc_nest hgsc_wsi]
                               [--seeds 0] [--epochs 60] [--states 3]

For every section of ``histex bench`` (:func:`histex._bench.load_dataset`, 60 genes, the HGSC sections with 8
clone and 8 gradient genes the image cannot see), ``super_resolve`` (``"histex"``) predicts the bins, and what it
says about its own trust (``var["reliability"]``, ``var["reliable"]``, ``layers["lower90"]``/``["upper90"]``) is
held against the truth. Intervals are of counts, so the HGSC sections' bins hold whole counts here, each transcript
of a cell in one of its bins (``whole_counts=True``; ``histex bench`` splits them in fractions); the toy's always
do. Per section:

* ``reliability_spearman``: rank correlation over genes between ``var["reliability"]`` and the true per-gene
  Pearson correlation over the in-tissue bins;
* ``reliable_gap``: mean true Pearson of the genes flagged reliable minus that of the rest;
* ``coverage90_median``: median over genes of the share of in-tissue bins whose true count lies in the 90%
  interval;
* ``seconds``: what the intervals and the reliability add to ``super_resolve`` (``uns["histex"]["trust"]``).

Means over ``--seeds``. Writes ``DIR/trust.json`` with those keys, ``DIR/trust_genes.csv`` (per gene and seed),
``DIR/calibration.csv`` and ``DIR/calibration.png`` (coverage per nominal level, with the least coverage an interval
holding at least one count can have: at 0.02 counts per bin, ``[0, 0]`` alone holds 98%).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats

import histex as hx
from histex._bench import gene_groups, load_dataset
from histex.model.trust import bin_dispersion, interval_layers

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def aligned(pred, truth, layer: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bins x genes of the prediction's ``layer`` (``X``) and of the truth, on the bins both hold."""
    source = pred if layer is None else ad.AnnData(X=np.asarray(pred.layers[layer]), obs=pred.obs, var=pred.var)
    return hx.metrics.align_bins(source, truth)


def least_coverage(mean: np.ndarray, dispersion: np.ndarray, level: float) -> np.ndarray:
    """Per gene, the mean over bins of ``max(level, P(most likely count))``: an interval that holds at least one
    count holds at least that count's probability.
    """
    mean = np.maximum(mean, 1e-12)
    r = 1 / np.maximum(dispersion, 1e-9)
    mode = np.floor(np.maximum(mean * (1 - np.minimum(dispersion, 1.0)), 0))
    top = np.exp(stats.nbinom.logpmf(mode, r, r / (r + mean)))
    return np.maximum(level, top).mean(axis=0)


def score_section(sdata, seed: int, args) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    truth = sdata.tables["truth"]
    genes = list(sdata.tables["table"].var_names)
    hx.pp.extract_features(sdata, show_progress=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        hx.tl.super_resolve(sdata, epochs=args.epochs, n_states=args.states, seed=seed, genes=genes,
                            show_progress=False)  # fmt: skip
    fit_seconds = time.perf_counter() - start
    table = sdata.tables["histex"]
    record = table.uns["histex"]["trust"]
    pred, true, names = aligned(table, truth)
    var = table.var.loc[names]
    pearson = hx.metrics.pearson_per_gene(pred, true)
    reliable = var["reliable"].to_numpy(bool)
    rows = []
    for level in LEVELS:
        if level != record["level"]:
            hx.tl.predictive_interval(sdata, level=level)
        lower, upper = (aligned(table, truth, name)[0] for name in interval_layers(level))
        covered = ((true >= lower) & (true <= upper)).mean(axis=0)
        sd = aligned(table, truth, "ensemble_sd")[0]
        least = least_coverage(pred, bin_dispersion(pred, sd, var["dispersion"].to_numpy()), level)
        rows.append({"level": level, "coverage_median": float(np.median(covered)),
                     "least_coverage_median": float(np.median(least))})  # fmt: skip
        if level == 0.9:
            coverage90 = covered
    result = {
        "reliability_spearman": float(stats.spearmanr(var["reliability"], pearson, nan_policy="omit").statistic),
        "reliable_gap": float(np.nanmean(pearson[reliable]) - np.nanmean(pearson[~reliable]))
        if reliable.any() and (~reliable).any()
        else float("nan"),
        "coverage90_median": float(np.median(coverage90)),
        "seconds": float(record["seconds"]),
    }
    per_gene = pd.DataFrame(
        {
            "gene": names,
            "group": gene_groups(truth.var.loc[names]),
            "pearson": pearson,
            "reliability": var["reliability"].to_numpy(),
            "expected_pearson": var["expected_pearson"].to_numpy(),
            "spot_consistency": var["spot_consistency"].to_numpy(),
            "reliable": reliable,
            "dispersion": var["dispersion"].to_numpy(),
            "coverage90": coverage90,
        }
    )
    print(
        f"seed {seed}: spearman {result['reliability_spearman']:.3f}  gap {result['reliable_gap']:.3f}  "
        f"coverage90 {result['coverage90_median']:.3f}  trust {result['seconds']:.2f} s  "
        f"(super_resolve {fit_seconds:.1f} s, {int(reliable.sum())} of {len(names)} genes reliable)",
        flush=True,
    )
    return result, per_gene, pd.DataFrame(rows)


def plot_calibration(calibration: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = list(dict.fromkeys(calibration["section"]))
    fig, axes = plt.subplots(1, len(sections), figsize=(3.2 * len(sections), 3.2), squeeze=False)
    for ax, section in zip(axes[0], sections, strict=True):
        part = calibration[calibration["section"] == section].groupby("level").mean(numeric_only=True)
        ax.plot([0.45, 1], [0.45, 1], color="grey", linewidth=0.8, label="nominal")
        ax.plot(part.index, part["least_coverage_median"], color="grey", linestyle="--", linewidth=0.8,
                label="least any interval holds")  # fmt: skip
        ax.plot(part.index, part["coverage_median"], marker="o", color="tab:blue", label="measured")
        ax.set_title(section, fontsize=9)
        ax.set_xlabel("nominal level")
        ax.set_xlim(0.45, 1)
        ax.set_ylim(0.45, 1)
    axes[0][0].set_ylabel("share of bins in the interval\n(median over genes)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/trust"))
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sections", nargs="+", default=["toy", "hgsc_nest", "hgsc_wsi"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--states", type=int, default=3)
    parser.add_argument("--genes", type=int, default=60)
    parser.add_argument("--toy-size-um", type=float, default=1600)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    results, genes, calibration = {}, [], []
    for name in args.sections:
        per_seed = []
        for seed in args.seeds:
            print(f"{name}:", end=" ", flush=True)
            sdata = load_dataset(name, data_dir=args.data_dir, n_genes=args.genes, seed=seed,
                                 toy_size_um=args.toy_size_um, whole_counts=True)  # fmt: skip
            result, per_gene, levels = score_section(sdata, seed, args)
            per_seed.append(result)
            genes.append(per_gene.assign(section=name, seed=seed))
            calibration.append(levels.assign(section=name, seed=seed))
        results[name] = {key: float(np.mean([r[key] for r in per_seed])) for key in per_seed[0]}
    pd.concat(genes).to_csv(args.out / "trust_genes.csv", index=False)
    calibration = pd.concat(calibration)
    calibration.to_csv(args.out / "calibration.csv", index=False)
    plot_calibration(calibration, args.out / "calibration.png")
    (args.out / "trust.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
