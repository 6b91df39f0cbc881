"""The demo: toy section -> features -> super-resolution, scored against ground truth."""

from __future__ import annotations

import json
import logging
import resource
import time
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger("histex")

DEMO_GENES = 4


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_demo(
    out: str | Path = "histex_demo",
    *,
    size_um: float = 1600.0,
    n_genes: int = 100,
    epochs: int = 60,
    n_states: int = 3,
    seed: int = 0,
    device: str | None = None,
    show_progress: bool = True,
    echo=print,
) -> dict:
    """Run the demo and write ``metrics.json``, ``genes.png`` and ``toy.zarr`` under ``out``.

    Returns the metrics: mean per-gene Pearson at 8 µm in tissue against ground truth for HISTEX, the image-only
    model and linear interpolation of the spots; seconds per stage; peak RSS in MiB.
    """
    import histex as hx
    from histex import baselines, metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 2)
        echo(f"  {name:<16s} {seconds[name]:8.2f} s")

    echo("histex demo: toy section -> features -> super-resolution")
    t = time.perf_counter()
    sdata = hx.datasets.toy(size_um=size_um, n_genes=n_genes, seed=seed)
    stage("toy", t)
    image = sdata.images["toy_full_image"]["scale0"]["image"]
    spots_table = sdata.tables["table"]
    echo(
        f"  image {image.sizes['x']} x {image.sizes['y']} px, {spots_table.n_obs} spots x {spots_table.n_vars} genes, "
        f"{sdata.tables['truth'].n_obs} ground-truth bins"
    )
    t = time.perf_counter()
    hx.pp.extract_features(sdata, show_progress=show_progress)
    stage("features", t)
    common = {"epochs": epochs, "n_states": n_states, "seed": seed, "device": device, "show_progress": show_progress}
    t = time.perf_counter()
    hx.tl.super_resolve(sdata, key_added="histex", **common)
    stage("histex", t)
    t = time.perf_counter()
    hx.tl.super_resolve(sdata, variant="image_only", key_added="image_only", **common)
    stage("image_only", t)

    t = time.perf_counter()
    pred = sdata.tables["histex"]
    interp = baselines.spots_on_bins(sdata, "histex", method="linear")
    stage("interpolation", t)

    t = time.perf_counter()
    truth = sdata.tables["truth"]
    pearson = {
        name: round(metrics.mean_pearson(table, truth), 4)
        for name, table in (("histex", pred), ("image_only", sdata.tables["image_only"]), ("interpolation", interp))
    }
    stage("evaluate", t)

    t = time.perf_counter()
    ranked = np.argsort(-np.nan_to_num(metrics.pearson_per_gene(*metrics.align_bins(pred, truth)[:2])))
    shown = _one_per_group(list(pred.var_names[ranked]))[:DEMO_GENES]
    fig = hx.pl.genes(sdata, shown, table_key="histex", truth_key="truth", save=out / "genes.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    stage("plot", t)
    t = time.perf_counter()
    with warnings.catch_warnings():  # zarr's notice about a future default, not about this data
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        sdata.write(out / "toy.zarr", overwrite=True)
    stage("write zarr", t)

    result = {"pearson": pearson, "seconds": seconds, "peak_rss_mb": round(peak_rss_mb(), 1)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    echo("mean per-gene Pearson at 8 µm in tissue, against ground truth:")
    for name, value in pearson.items():
        echo(f"  {name:<16s} {value:8.4f}")
    echo(
        f"peak RSS {result['peak_rss_mb']:.0f} MiB; wrote {out / 'metrics.json'}, {out / 'genes.png'}, {out / 'toy.zarr'}"
    )
    return result


def _one_per_group(names: list[str]) -> list[str]:
    """Keep the first gene of each name prefix (``Epi_``, ``Imm_``, ...) so the figure shows different programmes."""
    seen, out = set(), []
    for name in names:
        prefix = name.split("_")[0]
        if prefix not in seen:
            seen.add(prefix)
            out.append(name)
    return out
