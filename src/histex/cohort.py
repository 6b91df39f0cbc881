"""Many sections on dask.distributed: one task per row of a samples table, each what ``histex run`` does.

The engine is dask.distributed's, not ours: a ``LocalCluster`` on one machine, or any running scheduler (SLURM or
PBS through dask-jobqueue, Kubernetes through dask-kubernetes). A task whose worker dies is run again on another
worker; each output is written under a temporary name and renamed when complete, so a store is there whole or not
at all, and a rerun skips the rows whose outputs are complete.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

#: The columns of a samples table: ``outs`` may be empty for H&E-only slides predicted with a saved model.
COLUMNS = ("sample_id", "outs", "image")
#: How long to try to reach a scheduler given by its address.
CONNECT_TIMEOUT = "10s"
#: The columns of ``cohort.csv``.
RESULT_COLUMNS = ("sample_id", "status", "seconds", "peak_rss_mb", "error")


def read_samples(path: str | Path, *, model_dir: str | Path | None = None) -> pd.DataFrame:
    """Read and check a samples table (CSV with ``sample_id``, ``outs``, ``image``; relative paths from the
    table's folder), reporting every problem at once before any work.

    Raises
    ------
    ValueError
        Missing columns, empty or duplicate sample ids, paths that do not exist, or an empty ``outs`` without
        ``model_dir`` (H&E-only slides need a saved model).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No samples table at {path}.")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path.name} lacks the columns {missing}; it needs {', '.join(COLUMNS)} (one row per section)."
        )
    problems = []
    ids = table["sample_id"].str.strip()
    if (ids == "").any():
        problems.append(f"rows {[i + 2 for i in ids.index[ids == '']]} have no sample_id")
    duplicated = sorted(set(ids[ids.duplicated() & (ids != "")]))
    if duplicated:
        problems.append(f"duplicate sample ids {duplicated}")
    for column in ("outs", "image"):
        table[column] = [str((path.parent / p).resolve()) if p.strip() else "" for p in table[column]]
    for i, row in table.iterrows():
        if row["image"] == "" or not Path(row["image"]).is_file():
            problems.append(f"{row['sample_id'] or f'row {i + 2}'}: no image at {row['image'] or '(empty)'}")
        if row["outs"] == "" and model_dir is None:
            problems.append(f"{row['sample_id']}: no outs folder (an H&E-only slide needs --model-dir)")
        elif row["outs"] != "" and not Path(row["outs"]).is_dir():
            problems.append(f"{row['sample_id']}: no Space Ranger folder at {row['outs']}")
    if problems:
        raise ValueError(f"{path.name}: " + "; ".join(problems) + ".")
    table["sample_id"] = ids
    return table


def output_paths(out: Path, sample_id: str) -> tuple[Path, Path]:
    """``(store, report)`` of a sample under the cohort's folder."""
    from histex._run import report_folder

    store = out / f"{sample_id}.zarr"
    return store, report_folder(store)


def is_complete(out: Path, sample_id: str) -> bool:
    """A row is done when its store and its report are both in place (the report is renamed into place last)."""
    store, report = output_paths(out, sample_id)
    return store.is_dir() and (report / "report.json").is_file()


def worker_gpu(worker_name, n_gpus: int) -> str:
    """The GPU of a worker: ``cuda:K`` for the K-th worker of a LocalCluster (named 0, 1, ...), so that each worker
    has a GPU of its own; ``cuda:0`` for a worker of another name (a job of a SLURM cluster sees only its own).
    """
    index = int(worker_name) if str(worker_name).isdigit() else 0
    return f"cuda:{index % max(1, n_gpus)}"


def run_row(row: dict, out: str, settings: dict, threads: int | None = None, gpu: bool = False) -> dict:
    """One section on a worker, as ``histex run`` does it; an error is returned, not raised, so that it fails
    its row alone (a worker that dies is another matter: the scheduler runs the task again elsewhere).
    """
    import dask
    import torch

    from histex._memory import peak_rss_mb, reset_peak_rss
    from histex._run import run_section

    if threads is not None:
        torch.set_num_threads(threads)  # workers side by side must not contend for the same cores
    if gpu and settings.get("device") in (None, "cuda"):
        from distributed import get_worker

        settings = settings | {"device": worker_gpu(get_worker().name, torch.cuda.device_count())}
    store, _ = output_paths(Path(out), row["sample_id"])
    reset_peak_rss()
    start = time.perf_counter()
    try:
        # dask inside a task would otherwise send the section's own arrays to the cluster as tasks of their own and
        # leave the worker's thread free for the next section: sections would then run side by side on one worker
        with dask.config.set(scheduler="threads"):
            run_section(
                row["outs"] or None, row["image"], store, overwrite=True, show_progress=False, echo=lambda *_: None,
                **settings,
            )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - any failure of one section is that row's, reported in cohort.csv
        status, message = "failed", f"{type(error).__name__}: {error}"
    else:
        status, message = "done", ""
    return {"sample_id": row["sample_id"], "status": status, "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "error": message}  # fmt: skip


def run_cohort(
    samples: str | Path | pd.DataFrame,
    out: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    gpu: bool = False,
    model_dir: str | Path | None = None,
    show_progress: bool = True,
    **settings,
) -> pd.DataFrame:
    """Run every section of a samples table as a task on dask.distributed and write ``out/cohort.csv``.

    Parameters
    ----------
    samples
        A samples table (path or DataFrame of :func:`read_samples`).
    out
        The cohort's folder: ``SAMPLE.zarr`` and ``SAMPLE_report/`` per row, and ``cohort.csv``.
    workers
        Workers of a ``LocalCluster`` (default: 2 or the CPU count, whichever is smaller; one process each, the
        cores shared between them; with ``gpu``, one per GPU). Ignored with ``scheduler``.
    scheduler
        The address of a running dask scheduler (``tcp://host:8786``) to use instead of a LocalCluster.
    gpu
        Each task needs one ``GPU`` worker resource: a worker runs one section at a time on its GPU. A
        LocalCluster gives each worker one and its own device (worker K on ``cuda:K``, one worker per GPU);
        workers of another cluster declare theirs (``dask worker --resources GPU=1``) and use ``cuda:0``.
    model_dir
        A saved :class:`histex.HistexModel` that predicts every row instead of training (rows without ``outs``
        are H&E-only slides).
    show_progress
        A progress bar over rows.
    **settings
        The options of ``histex run`` for every row (``model``, ``weights``, ``genes``, ``device``,
        ``n_domains``, ``epochs``, ``n_states``, ``seed``, ``mpp``).

    Returns
    -------
    pandas.DataFrame
        ``cohort.csv``: per row ``sample_id``, ``status`` (``done``, ``failed``, ``skipped``: complete from an
        earlier run), ``seconds``, ``peak_rss_mb`` and ``error``.
    """
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    table = samples if isinstance(samples, pd.DataFrame) else read_samples(samples, model_dir=model_dir)
    if model_dir is not None:
        from histex._run import check_model_dir

        try:
            check_model_dir(model_dir)
        except FileNotFoundError as error:
            raise ValueError(str(error)) from error
        settings["model_dir"] = str(Path(model_dir).resolve())
    if scheduler is None:
        n = workers if workers is not None else min(2, os.cpu_count() or 1)
        if gpu and workers is None:
            import torch

            n = torch.cuda.device_count()  # one worker per GPU
            if n == 0:
                raise ValueError("gpu=True (--gpu) runs one worker per GPU, and this machine has no CUDA device.")
        if int(n) != n or n < 1:
            raise ValueError(f"workers must be a whole number of 1 or more, got {workers!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = [sid for sid in table["sample_id"] if is_complete(out, sid)]
    todo = table[~table["sample_id"].isin(done)]
    results = {sid: {"sample_id": sid, "status": "skipped", "seconds": 0.0, "peak_rss_mb": float("nan"),
                     "error": ""} for sid in done}  # fmt: skip

    cluster = None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as error:
            raise ValueError(f"Cannot reach the dask scheduler at {scheduler!r}: {error}") from error
        threads = None
    else:
        threads = max(1, (os.cpu_count() or 1) // int(n))
        cluster = LocalCluster(
            n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=None,
            resources={"GPU": 1} if gpu else None,
        )  # fmt: skip
        client = Client(cluster)
    try:
        futures = [
            client.submit(
                run_row,
                row._asdict(),
                str(out),
                settings,
                threads,
                gpu,
                key=f"histex-{row.sample_id}",
                resources={"GPU": 1} if gpu else None,
                pure=False,
            )
            for row in todo.itertuples(index=False)
        ]
        bar = tqdm(total=len(table), initial=len(done), desc="sections", unit="section", disable=not show_progress)
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - the task itself failed (workers lost too often)
                sid = future.key.removeprefix("histex-")
                result = {"sample_id": sid, "status": "failed", "seconds": float("nan"), "peak_rss_mb": float("nan"),
                          "error": f"{type(error).__name__}: {error}"}  # fmt: skip
            results[result["sample_id"]] = result
            _write_results(table, results, out)
            bar.update()
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    summary = _write_results(table, results, out)
    logger.info("Cohort: %s.", summary["status"].value_counts().to_dict())
    return summary


def _write_results(table: pd.DataFrame, results: dict, out: Path) -> pd.DataFrame:
    """``cohort.csv`` in the samples' order, rewritten after every row so that an interruption leaves a record."""
    rows = [results.get(sid, {"sample_id": sid, "status": "pending"}) for sid in table["sample_id"]]
    summary = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    staging = out / ".cohort.csv.partial"
    summary.to_csv(staging, index=False)
    staging.replace(out / "cohort.csv")
    return summary
