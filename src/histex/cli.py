"""Command line: ``histex demo``."""

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
