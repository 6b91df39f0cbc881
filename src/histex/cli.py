"""Command line: ``histex demo``, ``histex run``, ``histex cohort`` and ``histex bench``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """The ``histex`` command line: parse ``argv`` (default ``sys.argv``), run the subcommand, return its exit code."""
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
    run = sub.add_parser("run", help="a Visium section from Space Ranger's outs/ and its H&E -> SAMPLE.zarr + report")
    run.add_argument("outs", nargs="?", default=None, help="the outs/ folder of spaceranger count (none: H&E only)")
    run.add_argument("--image", required=True, help="the full-resolution H&E passed to spaceranger count --image")
    run.add_argument("--out", required=True, help="the zarr store to write, e.g. SAMPLE.zarr (report: SAMPLE_report/)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing store and report")
    run.add_argument("--quiet", action="store_true")
    cohort = sub.add_parser("cohort", help="many sections on dask.distributed: one task per row of SAMPLES.csv")
    cohort.add_argument("samples", help="CSV with sample_id, outs, image (outs empty: an H&E-only slide)")
    cohort.add_argument("--out", required=True, help="folder of the outputs and cohort.csv")
    cohort.add_argument("--workers", type=int, default=None, help="workers of a LocalCluster (default: min(2, CPUs))")
    cohort.add_argument("--scheduler", default=None, help="address of a running dask scheduler instead")
    cohort.add_argument("--gpu", action="store_true", help="each section needs a GPU worker resource (GPU=1)")
    cohort.add_argument("--quiet", action="store_true")
    for command in (run, cohort):
        command.add_argument("--model", default="texture", help="feature encoder (default: texture)")
        command.add_argument("--weights", default=None, help="the encoder's weights file (foundation models)")
        command.add_argument("--genes", nargs="+", default=None, help="genes to predict (default: 1000 variable)")
        command.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
        command.add_argument("--model-dir", default=None, help="predict with a saved HistexModel instead of training")
        command.add_argument("--mpp", type=float, default=None, help="µm per pixel of H&E-only slides")
        command.add_argument("--domains", type=int, default=None, help="find this many tissue domains on the bins")
        command.add_argument("--epochs", type=int, default=None, help="training epochs per state (default: 60)")
        command.add_argument("--n-states", type=int, default=5, help="ensemble states (default: 5)")
        command.add_argument("--seed", type=int, default=0)
    bench = sub.add_parser("bench", help="every method on sections with known truth: results.csv, results.png")
    bench.add_argument("--out", default="histex_bench", help="output folder (default: histex_bench)")
    bench.add_argument(
        "--datasets", nargs="+", default=None, help="toy, hgsc_nest, hgsc_wsi (default: all whose files are found)"
    )
    bench.add_argument("--methods", nargs="+", default=None, help="default: all")
    bench.add_argument(
        "--data-dir", default=None, help="folder with the hgsc_nest and hgsc_*_wsi files (without it: the toy only)"
    )
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
    elif args.command == "run":
        from histex._run import BadInput, run_section

        try:
            run_section(
                args.outs, args.image, args.out, model=args.model, weights=args.weights, genes=args.genes,
                device=args.device, model_dir=args.model_dir, n_domains=args.domains, epochs=args.epochs,
                n_states=args.n_states, seed=args.seed, mpp=args.mpp, overwrite=args.overwrite,
                show_progress=not args.quiet,
            )  # fmt: skip
        except BadInput as error:  # named before any work: no traceback
            parser.exit(2, f"histex run: error: {error}\n")
    elif args.command == "cohort":
        from histex.cohort import read_samples, run_cohort

        try:
            samples = read_samples(args.samples, model_dir=args.model_dir)
            summary = run_cohort(
                samples, args.out, workers=args.workers, scheduler=args.scheduler, gpu=args.gpu,
                model_dir=args.model_dir, show_progress=not args.quiet, model=args.model, weights=args.weights,
                genes=args.genes, device=args.device, n_domains=args.domains, epochs=args.epochs,
                n_states=args.n_states, seed=args.seed, mpp=args.mpp,
            )  # fmt: skip
        except ValueError as error:  # the samples table, the scheduler, the saved model: before any work
            parser.exit(2, f"histex cohort: error: {error}\n")
        print(summary.to_string(index=False))
        return int((summary["status"] == "failed").any())
    elif args.command == "bench":
        from histex._bench import DATASETS, METHODS, missing_data, run_bench_command

        unknown = sorted(set(args.datasets or ()) - set(DATASETS))
        if unknown:
            parser.error(f"unknown datasets {unknown}; available: {', '.join(DATASETS)}")
        unknown = sorted(set(args.methods or ()) - set(METHODS))
        if unknown:
            parser.error(f"unknown methods {unknown}; available: {', '.join(METHODS)}")
        missing = {name: missing_data(name, args.data_dir) for name in args.datasets or DATASETS}
        missing = {name: reason for name, reason in missing.items() if reason is not None}
        if args.datasets and missing:  # named by the user: refuse before any work
            parser.error("; ".join(missing.values()) + ". Give the folder of these files with --data-dir.")
        for reason in missing.values():
            print(f"skipped {reason}; give the folder of these files with --data-dir", flush=True)
        run_bench_command(
            args.out,
            datasets=[name for name in args.datasets or DATASETS if name not in missing],
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
