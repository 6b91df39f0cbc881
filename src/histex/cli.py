"""Command line: ``histex demo`` and ``histex bench``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="histex", description="Super-resolved spatial transcriptomics (HISTEX).")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="toy section -> features -> super-resolution, scored against ground truth")
    demo.add_argument("--out", default="histex_demo", help="output folder (default: histex_demo)")
    demo.add_argument("--size-um", type=float, default=1600.0, help="edge of the toy section in µm")
    demo.add_argument("--genes", type=int, default=100, help="genes in the toy section")
    demo.add_argument("--epochs", type=int, default=60, help="training epochs per ensemble state")
    demo.add_argument("--n-states", type=int, default=3, help="ensemble states")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    bench = sub.add_parser("bench", help="every method on sections with known truth: results.csv, results.png")
    bench.add_argument("--out", default="histex_bench", help="output folder (default: histex_bench)")
    bench.add_argument("--datasets", nargs="+", default=None, help="toy, hgsc_nest, hgsc_wsi (default: all)")
    bench.add_argument("--methods", nargs="+", default=None, help="default: all")
    bench.add_argument("--data-dir", default=None, help="folder with the hgsc_nest and hgsc_*_wsi files")
    bench.add_argument("--wsi-size-px", type=int, default=6000, help="edge of the hgsc_wsi crop (0.5 µm px)")
    bench.add_argument("--genes", type=int, default=60)
    bench.add_argument("--epochs", type=int, default=60, help="epochs of every super-resolution variant")
    bench.add_argument("--n-states", type=int, default=3)
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed (default: 0 1 2)")
    bench.add_argument("--device", default=None)
    bench.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "demo":
        from histex._demo import run_demo

        run_demo(
            args.out,
            size_um=args.size_um,
            n_genes=args.genes,
            epochs=args.epochs,
            n_states=args.n_states,
            seed=args.seed,
            device=args.device,
            show_progress=not args.quiet,
        )
    elif args.command == "bench":
        from histex._bench import DATASETS, METHODS, run_bench_command

        run_bench_command(
            args.out,
            datasets=args.datasets or DATASETS,
            methods=args.methods or METHODS,
            data_dir=args.data_dir,
            n_genes=args.genes,
            epochs=args.epochs,
            n_states=args.n_states,
            seeds=args.seeds,
            device=args.device,
            wsi_size_px=args.wsi_size_px,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
