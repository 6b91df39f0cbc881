"""Matching to the spots, before and after: the same trained histex networks scored without and with it.

    python benchmarks/matching.py --out DIR [--data-dir ../shared/data] [--sections toy hgsc_nest hgsc_wsi]
                                  [--seeds 0 1 2] [--epochs 60] [--states 3]

For every section and seed of ``histex bench`` (:func:`histex._bench.load_dataset`, 60 genes, the HGSC sections
with 8 clone and 8 gradient genes), a ``HistexModel("histex")`` is fitted once and predicts the section three
times: ``before``, the network alone (``match_spots=False``); ``rescaled``, its bins matched to the spots with
each gene's own predicted shape (``match_shapes=False``, the default); ``after``, each gene's shape chosen on the
spots first (``match_shapes=True``, :class:`histex.model.matching.ShapeChoice`), then matched. Each is scored against the truth per
gene group (mean per-gene Pearson, SSIM, RMSE) with its spot consistency
(:func:`histex._bench.spot_consistency`). Writes ``DIR/matching.json``: ``{section: {group: {"before": {...},
"rescaled": {...}, "after": {...}}}}``, means over seeds, and ``DIR/matching.csv`` per seed.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd

import histex as hx
from histex._bench import gene_groups, load_dataset, measured_spots, spot_consistency

#: What each prediction does: (match_spots, match_shapes).
STAGES = {"before": (False, False), "rescaled": (True, False), "after": (True, True)}


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
            model = hx.HistexModel("histex", epochs=args.epochs, n_states=args.states, seed=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model.fit(sdata, genes=genes, show_progress=False)
                for when, (match, shapes) in STAGES.items():
                    model.predict(sdata, key_added=when, match_spots=match, match_shapes=shapes, show_progress=False)
            spots = measured_spots(sdata, "after", genes)
            for when in STAGES:
                table = sdata.tables[when]
                scores = hx.metrics.score(table, truth)
                consistency = spot_consistency(spots, table)
                parts = {"all": scores} | {
                    g: scores[groups.loc[scores.index].to_numpy() == g] for g in dict.fromkeys(groups)
                }
                for group, part in parts.items():
                    rows.append({"section": name, "seed": seed, "when": when, "group": group,
                                 **hx.metrics.summarise(part), "spot_consistency": consistency})  # fmt: skip
            print(pd.DataFrame(rows[-len(STAGES) * len(parts) :]).round(4).to_string(index=False), flush=True)
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
