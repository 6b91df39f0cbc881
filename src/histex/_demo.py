"""The demo: toy section -> features -> super-resolution, scored against ground truth."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEMO_GENES = 4
#: The toy's compartment programmes that name the domains (``Str_01``, ... are their marker genes).
DOMAIN_MARKERS = {"Str": "stroma", "Epi": "epithelium", "Imm": "immune", "Tum": "tumour"}


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
    """Run the demo and write ``metrics.json``, ``genes.png``, ``domains.png``, ``enrichment.png`` and ``toy.zarr``.

    Returns the metrics: mean per-gene Pearson at 8 µm in tissue against ground truth for HISTEX, the image-only
    model and linear interpolation of the spots; the domains found on the super-resolved bins (their agreement with
    the planted compartments, adjusted Rand index) and the best gene set of each; seconds per stage; the peak RSS in
    MiB from the start of the demo (the process's memory then included).
    """
    import histex as hx
    from histex import baselines, metrics
    from histex._memory import peak_rss_mb, reset_peak_rss
    from histex._sdata import image_array

    reset_peak_rss()
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
    image = image_array(sdata, "toy_full_image")
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
    axes = hx.pl.genes(sdata, shown, table_key="histex", truth_key="truth", show=False, save=out / "genes.png")
    import matplotlib.pyplot as plt

    plt.close(axes.flat[0].figure)
    stage("plot", t)

    t = time.perf_counter()
    domains = _domains_and_enrichment(sdata, out)
    stage("domains", t)
    t = time.perf_counter()
    with warnings.catch_warnings():  # zarr's notice about a future default, not about this data
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        sdata.write(out / "toy.zarr", overwrite=True)
    stage("write zarr", t)

    result = {"pearson": pearson, "domains": domains, "seconds": seconds, "peak_rss_mb": round(peak_rss_mb(), 1)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    echo("mean per-gene Pearson at 8 µm in tissue, against ground truth:")
    for name, value in pearson.items():
        echo(f"  {name:<16s} {value:8.4f}")
    echo(f"domains on the super-resolved bins: adjusted Rand index {domains['ari']:.3f} against the planted ones")
    for label, term in domains["best_gene_set"].items():
        echo(f"  {label:<16s} best gene set: {term}")
    files = ", ".join(str(out / name) for name in ("metrics.json", "genes.png", "domains.png", "enrichment.png"))
    echo(f"peak RSS {result['peak_rss_mb']:.0f} MiB; wrote {files}, {out / 'toy.zarr'}")
    return result


def _domains_and_enrichment(sdata, out: Path) -> dict:
    """Domains on the super-resolved bins named by the toy's marker programmes, their gene sets, and two figures."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import adjusted_rand_score

    import histex as hx

    table = sdata.tables["histex"]
    group = sdata.tables["truth"].var["group"]
    programmes = {name: group.index[group == name].tolist() for name in group.unique()}
    genes = set(table.var_names)
    markers = {label: [g for g in programmes[prefix] if g in genes] for prefix, label in DOMAIN_MARKERS.items()}
    hx.tl.annotate(sdata, n_domains=6, use="expression", markers={k: v for k, v in markers.items() if v})
    gene_sets = {f"{name} programme": members for name, members in programmes.items()}
    results = hx.tl.enrich(sdata, gene_sets=gene_sets, groupby="domain_label", min_size=2)
    plt.close(hx.pl.domains(sdata, show=False, save=out / "domains.png").figure)
    plt.close(hx.pl.enrichment(sdata, show=False, save=out / "enrichment.png").figure)

    truth = sdata.tables["truth"]
    planted = truth.obs[["array_row", "array_col", "compartment"]].astype({"compartment": str})
    found = table.obs[["array_row", "array_col", "domain_label"]].astype({"domain_label": str})
    both = found.merge(planted, on=["array_row", "array_col"])
    both = both[both["compartment"] != "background"]
    planted_compartment = both["compartment"].replace({"lumen": "epithelium"})  # no marker set tells them apart
    best = results[results["rank"] == 1].set_index("group")["term"]
    return {
        "ari": round(float(adjusted_rand_score(planted_compartment, both["domain_label"])), 4),
        "best_gene_set": {str(k): str(v) for k, v in best.items()},
    }


def _one_per_group(names: list[str]) -> list[str]:
    """Keep the first gene of each name prefix (``Epi_``, ``Imm_``, ...) so the figure shows different programmes."""
    seen, out = set(), []
    for name in names:
        prefix = name.split("_")[0]
        if prefix not in seen:
            seen.add(prefix)
            out.append(name)
    return out
