"""A cohort on dask.distributed: 8 toy sections with 1 and 2 workers, the overhead per section, a killed worker.

    python benchmarks/cohort.py --out DIR [--sections 8] [--size-um 800] [--genes 50] [--epochs 30] [--states 3]

The toy sections (seeds 0, 1, ...) are written as Space Ranger folders (:func:`histex.sim.write_spaceranger`) and
run by :func:`histex.cohort.run_cohort` as ``histex cohort`` runs them: once on a LocalCluster of 1 worker, once of
2 (the cores shared between them), and once on a cluster of 2 where the first worker seen running a section is
killed (SIGKILL) a second after it starts. ``overhead_s_per_section``: the cohort's seconds with 1 worker less the
seconds the sections took inside their tasks, per section (cluster start, scheduling, transfers).

Writes ``DIR/cohort.json``: ``{"sections": .., "seconds_1_worker": .., "seconds_2_workers": .., "speedup": ..,
"overhead_s_per_section": .., "killed_worker_recovered": true|false}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd

import histex as hx
from histex.cohort import read_samples, run_cohort


def write_sections(folder: Path, n: int, size_um: float, n_genes: int) -> Path:
    rows = []
    for seed in range(n):
        toy = hx.datasets.toy(size_um=size_um, n_genes=n_genes, seed=seed)
        outs, image = hx.sim.write_spaceranger(toy, folder / f"s{seed}", version=1 + seed % 2)
        rows.append({"sample_id": f"s{seed}", "outs": outs, "image": image})
    pd.DataFrame(rows).to_csv(folder / "samples.csv", index=False)
    return folder / "samples.csv"


def timed(samples, out: Path, workers: int, settings: dict) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    summary = run_cohort(samples, out, workers=workers, show_progress=False, **settings)
    return time.perf_counter() - start, summary


def killed_worker(samples, out: Path, settings: dict) -> bool:
    """Kill the first worker seen running a section; the cohort must still finish every row, each readable."""
    import spatialdata as sd
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        pids, result, killed = client.run(os.getpid), {}, None

        def cohort():
            result["summary"] = run_cohort(
                samples, out, scheduler=cluster.scheduler_address, show_progress=False, **settings
            )

        thread = threading.Thread(target=cohort)
        thread.start()
        while killed is None and thread.is_alive():
            busy = [w for w, keys in client.processing().items() if any("histex-" in str(k) for k in keys)]
            if busy:
                time.sleep(1.0)
                killed = busy[0]
                os.kill(pids[killed], signal.SIGKILL)
            time.sleep(0.1)
        thread.join()
    summary = result.get("summary")
    if killed is None or summary is None or not (summary["status"] == "done").all():
        return False
    readable = all(sd.read_zarr(out / f"{sid}.zarr").tables["histex"].n_obs > 0 for sid in summary["sample_id"])
    print(f"killed {killed}; every row done and readable: {readable}", flush=True)
    return readable and not list(out.glob(".*partial"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/cohort"))
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--size-um", type=float, default=800.0)
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--states", type=int, default=3)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inputs").mkdir(exist_ok=True)
    samples = read_samples(write_sections(args.out / "inputs", args.sections, args.size_um, args.genes))
    settings = {"epochs": args.epochs, "n_states": args.states}

    one, summary_one = timed(samples, args.out / "one_worker", 1, settings)
    print(f"1 worker: {one:.1f} s\n{summary_one.to_string(index=False)}", flush=True)
    two, summary_two = timed(samples, args.out / "two_workers", 2, settings)
    print(f"2 workers: {two:.1f} s\n{summary_two.to_string(index=False)}", flush=True)
    result = {
        "sections": args.sections,
        "seconds_1_worker": round(one, 1),
        "seconds_2_workers": round(two, 1),
        "speedup": round(one / two, 2),
        "overhead_s_per_section": round((one - summary_one["seconds"].sum()) / args.sections, 2),
        "killed_worker_recovered": killed_worker(samples, args.out / "killed", settings),
    }
    (args.out / "cohort.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
