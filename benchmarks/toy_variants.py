"""Accuracy of the super_resolve variants and of interpolating the spots, on the toy section, per gene group.

    python benchmarks/toy_variants.py [--epochs 60] [--n-states 3] [--size-um 1600] [--genes 100]

Prints mean per-gene Pearson at 8 µm in tissue against the ground-truth counts and against the noise-free rates
(``layers["expected"]``), per gene group of the toy section (markers of each compartment, the two look-alike tumour
clones that only the spots can tell apart, a smooth gradient, housekeeping genes), and the seconds of each fit.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

import histex as hx
from histex import baselines, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-um", type=float, default=1600.0)
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--n-states", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["histex", "image_only", "paper"])
    args = parser.parse_args()

    sdata = hx.datasets.toy(size_um=args.size_um, n_genes=args.genes, seed=args.seed)
    hx.pp.extract_features(sdata, show_progress=False)
    truth = sdata.tables["truth"]
    tables, seconds = {}, {}
    for variant in args.variants:
        start = time.perf_counter()
        hx.tl.super_resolve(
            sdata,
            variant=variant,
            key_added=variant,
            epochs=args.epochs,
            n_states=args.n_states,
            seed=args.seed,
            show_progress=False,
        )
        seconds[variant] = time.perf_counter() - start
        tables[variant] = sdata.tables[variant]
    tables["interpolation"] = baselines.spots_on_bins(sdata, args.variants[0], method="linear")
    seconds["interpolation"] = 0.0

    columns = {}
    for name, table in tables.items():
        for layer in (None, "expected"):
            pred, true, genes = metrics.align_bins(table, truth, truth_layer=layer)
            r = pd.Series(metrics.pearson_per_gene(pred, true), index=genes)
            by_group = r.groupby([g.split("_")[0] for g in genes]).mean()
            by_group["ALL"] = r.mean()
            columns[(name, "counts" if layer is None else "rates")] = by_group
    print(pd.DataFrame(columns).round(3).to_string())
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})


if __name__ == "__main__":
    main()
