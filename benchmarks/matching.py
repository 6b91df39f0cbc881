"""Matching to the spots, before and after: the same trained histex networks scored without and with it.

    python benchmarks/matching.py --out DIR [--data-dir ../shared/data] [--sections toy hgsc_nest hgsc_wsi]
                                  [--seeds 0 1 2] [--epochs 60] [--states 3]

For every section and seed of ``histex bench`` (:func:`histex._bench.load_dataset`, 60 genes, the HGSC sections
with 8 clone and 8 gradient genes), ``super_resolve(match_spots=False)`` trains and predicts once; the bins are
then matched to the spots with :class:`histex.model.matching.SpotMatch`, as ``match_spots=True`` does while it
predicts. Both are scored against the truth per gene group (mean per-gene Pearson, SSIM, RMSE) with their spot
consistency (:func:`histex._bench.spot_consistency`). Writes ``DIR/matching.json``: ``{section: {group:
{"before": {...}, "after": {...}}}}``, means over seeds, and ``DIR/matching.csv`` per seed.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import histex as hx
from histex._bench import gene_groups, load_dataset, measured_spots, spot_consistency
from histex.model.matching import SpotMatch
from histex.model.predict import Block


def matched(table, spots):
    """The table (predicted with ``match_spots=False``) matched to its spots (``measured_spots``), a new AnnData."""
    bin_rc = table.obs[["array_row", "array_col"]].to_numpy()
    match = SpotMatch(spots.rc, spots.radius_bins, spots.counts, bin_rc)
    x = np.asarray(table.X)
    (block,) = match.blocks([Block(0, len(x), x, np.asarray(table.layers["std"]), np.zeros((len(x), 0)))])
    out = table.copy()
    out.X = block.mean
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/matching"))
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sections", nargs="+", default=["toy", "hgsc_nest", "hgsc_wsi"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--states", type=int, default=3)
    parser.add_argument("--genes", type=int, default=60)
    parser.add_argument("--toy-size-um", type=float, default=1600)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for name in args.sections:
        for seed in args.seeds:
            sdata = load_dataset(name, data_dir=args.data_dir, n_genes=args.genes, seed=seed,
                                 toy_size_um=args.toy_size_um)  # fmt: skip
            truth = sdata.tables["truth"]
            genes = list(sdata.tables["table"].var_names)
            groups = pd.Series(gene_groups(truth.var), index=truth.var_names)
            hx.pp.extract_features(sdata, show_progress=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                hx.tl.super_resolve(sdata, genes=genes, epochs=args.epochs, n_states=args.states, seed=seed,
                                    match_spots=False, show_progress=False)  # fmt: skip
            spots = measured_spots(sdata, "histex", genes)
            for when, table in (("before", sdata.tables["histex"]), ("after", matched(sdata.tables["histex"], spots))):
                scores = hx.metrics.score(table, truth)
                consistency = spot_consistency(spots, table)
                parts = {"all": scores} | {
                    g: scores[groups.loc[scores.index].to_numpy() == g] for g in dict.fromkeys(groups)
                }
                for group, part in parts.items():
                    rows.append({"section": name, "seed": seed, "when": when, "group": group,
                                 **hx.metrics.summarise(part), "spot_consistency": consistency})  # fmt: skip
            print(pd.DataFrame(rows[-2 * len(parts) :]).round(4).to_string(index=False), flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "matching.csv", index=False)
    means = frame.groupby(["section", "group", "when"], sort=False).mean(numeric_only=True).drop(columns="seed")
    report: dict = {}
    for (section, group, when), values in means.round(4).iterrows():
        report.setdefault(section, {}).setdefault(group, {})[when] = values.to_dict()
    (args.out / "matching.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
