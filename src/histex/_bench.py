"""The accuracy benchmark: every method on sections with known 8 µm truth, scored per gene (``histex bench``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from histex._memory import peak_rss_mb, reset_peak_rss

logger = logging.getLogger(__name__)

MODEL_METHODS = ("histex", "image_only", "paper")
BASELINE_METHODS = ("nearest", "linear", "cubic", "idw")
METHODS = MODEL_METHODS + BASELINE_METHODS
DATASETS = ("toy", "hgsc_nest", "hgsc_wsi")
#: (clone, gradient) genes of the HGSC sections, beside their class programmes.
HIDDEN_GENES = (8, 8)
FAMILIES = ("toy", "hgsc_wsi")
SECTIONS = ("A", "B", "C", "D")
# (haematoxylin, eosin) of sections A-D of a family: any two differ by up to 20% in each stain, up and down.
FAMILY_STAINS = ((1.0, 1.0), (1.1, 0.92), (0.92, 1.1), (1.08, 1.05))


#: The files of ``data_dir`` that each section beyond the toy reads.
DATA_FILES = {
    "hgsc_nest": ("hgsc_nest.jpg", "hgsc_nest.parquet"),
    "hgsc_wsi": ("hgsc_nuclei_wsi.parquet", "hgsc_tissue_wsi.parquet"),
}


def missing_data(name: str, data_dir: str | Path | None) -> str | None:
    """Why section ``name`` cannot be built from ``data_dir`` (the files it lacks), or ``None`` when it can."""
    absent = [f for f in DATA_FILES.get(name, ()) if data_dir is None or not (Path(data_dir) / f).is_file()]
    if not absent:
        return None
    where = "no data folder given" if data_dir is None else f"not in {data_dir}"
    return f"{name} needs {' and '.join(absent)} ({where})"


def load_dataset(
    name: str,
    *,
    data_dir: Path | None = None,
    n_genes: int = 60,
    seed: int = 0,
    toy_size_um: float = 1600,
    wsi_size_px: int = 6000,
    hidden_genes: tuple[int, int] = HIDDEN_GENES,
    whole_counts: bool = False,
):
    """A benchmark section with its truth: ``"toy"`` (built in), ``"hgsc_nest"`` (real H&E and nuclei) or
    ``"hgsc_wsi"`` (a ``wsi_size_px`` square of a whole-slide segmentation, at 0.5 µm/px, where it has the most
    nuclei, with an H&E-like image painted from its nuclei and tissue regions).

    Of the ``n_genes`` of an HGSC section, ``hidden_genes`` are (clone, gradient) genes that the image cannot see
    (:func:`histex.sim.from_nuclei`), the rest class programmes; the toy has its own groups (``var["group"]``,
    see :func:`gene_groups`). ``whole_counts``: the HGSC sections' bins hold whole counts, each transcript of a cell in
    one of its bins (:func:`histex.sim.from_nuclei`); the toy's always do.
    """
    import histex as hx

    clone_genes, gradient_genes = (int(n) for n in hidden_genes)
    nuclei_genes = {"n_genes": n_genes - clone_genes - gradient_genes, "clone_genes": clone_genes,
                    "gradient_genes": gradient_genes, "whole_counts": whole_counts}  # fmt: skip

    if name == "toy":
        return hx.datasets.toy(size_um=toy_size_um, n_genes=n_genes, seed=seed)
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; available: {', '.join(DATASETS)}.")
    if (reason := missing_data(name, data_dir)) is not None:
        raise FileNotFoundError(f"{reason}.")
    data_dir = Path(data_dir)
    if name == "hgsc_nest":
        import geopandas as gpd
        from PIL import Image

        image = np.asarray(Image.open(data_dir / "hgsc_nest.jpg").convert("RGB"))
        nuclei = gpd.read_parquet(data_dir / "hgsc_nest.parquet")
        return hx.sim.from_nuclei(image, nuclei, mpp=0.5, seed=seed, **nuclei_genes)
    # hgsc_wsi
    from histex.sim._slide import read_crop

    files = DATA_FILES[name]
    # Nuclei are the size of hgsc_nest's (same source), whose inflammatory nuclei are ~15 px: 0.5 µm/px.
    nuclei, tissue, window = read_crop(data_dir / files[0], data_dir / files[1], size_px=wsi_size_px)
    image = hx.sim.paint_he(nuclei, tissue, bounds=(0, 0, wsi_size_px, wsi_size_px), mpp=0.5, seed=seed)
    sdata = hx.sim.from_nuclei(image, nuclei, mpp=0.5, seed=seed, **nuclei_genes)
    sdata.tables["truth"].uns["window_px"] = np.asarray(window)
    return sdata


def load_family(
    name: str,
    *,
    data_dir: Path | None = None,
    n_genes: int = 60,
    seed: int = 0,
    toy_size_um: float = 1600,
    square_px: int = 6000,
    stains: Sequence[tuple[float, float]] | None = None,
) -> list:
    """Four sections, A to D, that share their expression programmes but differ in layout and stain (transfer).

    Parameters
    ----------
    name
        ``"toy"``: toy sections (:func:`histex.datasets.toy`) of seeds ``seed`` to ``seed + 3``, all with the
        programmes of ``programme_seed=seed``, so that genes and ``uns["programmes"]`` are identical while tissue,
        spots and counts differ. ``"hgsc_wsi"``: four disjoint ``square_px`` squares of the HGSC whole-slide
        segmentation at 0.5 µm/px, of the eight densest in nuclei the four closest to the slide in their
        proportions of nucleus classes (:func:`representative_windows`), each with an H&E painted from its nuclei
        and tissue regions (:func:`histex.sim.paint_he`, seed ``seed + i``) and counts from one programmes table,
        :func:`histex.sim.draw_programmes` of every nucleus class of the slide (``seed``), shared by all four even
        where a square lacks a class.
    data_dir
        Folder with ``hgsc_nuclei_wsi.parquet`` and ``hgsc_tissue_wsi.parquet`` (``"hgsc_wsi"`` only).
    n_genes
        Genes of every section.
    seed
        Seeds the programmes; section ``i`` (0-3) also takes ``seed + i`` for its layout (toy), painting, counts
        and spot lattice.
    toy_size_um
        Edge of each toy section in µm.
    square_px
        Edge of each HGSC square in pixels of 0.5 µm (6000: 3 mm).
    stains
        Four ``(haematoxylin, eosin)`` factors, one per section, applied with :func:`histex.sim.vary_stain`;
        default :data:`FAMILY_STAINS`, ``(1, 1), (1.1, 0.92), (0.92, 1.1), (1.08, 1.05)``: any two sections'
        strengths of a stain differ by up to 20%.

    Returns
    -------
    list of spatialdata.SpatialData
        Sections A, B, C, D, with ``dataset_id`` ``f"{name}_A"`` ... (the coordinate system and the names of
        image and spots), each with ``tables["truth"]`` that :func:`histex.metrics.score` scores against as in
        :func:`run_benchmark`. ``tables["truth"].uns["family"]``: ``name``, ``section``, ``seed`` (of the
        section), ``programme_seed``, ``stain``; for ``"hgsc_wsi"`` also ``uns["window_px"]``, the square's
        ``(x0, y0, x1, y1)`` in slide pixels.
    """
    import histex as hx
    from histex.sim._stain import check_factor

    if name not in FAMILIES:
        raise ValueError(f"Unknown family {name!r}; available: {', '.join(FAMILIES)}.")
    stains = FAMILY_STAINS if stains is None else tuple(tuple(pair) for pair in stains)
    if len(stains) != len(SECTIONS) or any(len(pair) != 2 for pair in stains):
        raise ValueError(f"stains must be four (haematoxylin, eosin) pairs, one per section A-D; got {stains!r}.")
    for letter, (h, e) in zip(SECTIONS, stains, strict=True):
        check_factor(f"stains of section {letter}: haematoxylin", h)
        check_factor(f"stains of section {letter}: eosin", e)

    def family_uns(i: int) -> dict:
        return {"name": name, "section": SECTIONS[i], "seed": seed + i, "programme_seed": seed,
                "stain": [float(v) for v in stains[i]]}  # fmt: skip

    sections = []
    if name == "toy":
        for i, (h, e) in enumerate(stains):
            sdata = hx.datasets.toy(
                size_um=toy_size_um, n_genes=n_genes, seed=seed + i, programme_seed=seed, stain=(h, e),
                dataset_id=f"{name}_{SECTIONS[i]}",
            )  # fmt: skip
            sdata.tables["truth"].uns["family"] = family_uns(i)
            sections.append(sdata)
        return sections

    import pyarrow.parquet as pq

    from histex.sim._slide import polygon_bounds, read_crop

    files = ["hgsc_nuclei_wsi.parquet", "hgsc_tissue_wsi.parquet"]
    if data_dir is None or not all((Path(data_dir) / f).is_file() for f in files):
        raise FileNotFoundError(f"hgsc_wsi needs {' and '.join(files)} in data_dir={data_dir}.")
    nuclei_path, tissue_path = (Path(data_dir) / f for f in files)
    classes = pq.read_table(nuclei_path, columns=["class_name"]).column(0).to_numpy(zero_copy_only=False).astype(str)
    programmes = hx.sim.draw_programmes(sorted(set(classes)), n_genes, seed=seed)
    row_bounds = polygon_bounds(nuclei_path)
    origins = representative_windows(row_bounds, classes, square_px, len(SECTIONS))
    for i, ((h, e), origin) in enumerate(zip(stains, origins, strict=True)):
        nuclei, tissue, window = read_crop(
            nuclei_path, tissue_path, size_px=square_px, origin=origin, row_bounds=row_bounds
        )
        image = hx.sim.paint_he(nuclei, tissue, bounds=(0, 0, square_px, square_px), mpp=0.5, seed=seed + i)
        image = hx.sim.vary_stain(image, haematoxylin=h, eosin=e)
        sdata = hx.sim.from_nuclei(
            image, nuclei, mpp=0.5, programmes=programmes, dataset_id=f"{name}_{SECTIONS[i]}", seed=seed + i
        )
        del image, nuclei, tissue  # the SpatialData holds its own copy of the image
        sdata.tables["truth"].uns["window_px"] = np.asarray(window)
        sdata.tables["truth"].uns["family"] = family_uns(i)
        sections.append(sdata)
    return sections


def representative_windows(
    row_bounds: np.ndarray, classes: np.ndarray, size_px: int, n: int, *, pool: int = 2
) -> list[tuple[int, int]]:
    """Top-left corners of ``n`` disjoint ``size_px`` squares that are dense in nuclei and alike the whole slide.

    Of the ``pool * n`` densest disjoint squares (:func:`histex.sim._slide.densest_windows`, greedy), the ``n``
    whose proportions of nucleus classes (nuclei counted by their centre) are closest to the slide's, in total
    variation distance; in the greedy order. Sections of one tissue should hold its cell types in about its
    proportions: a model fitted on some cannot learn a cell type that they lack, and the densest squares alone are
    not alike (on the HGSC slide the fourth densest has four times the share of macrophages of the first three).
    """
    from histex.sim._slide import densest_windows

    corners = densest_windows(row_bounds, size_px, pool * n)
    names, codes = np.unique(classes, return_inverse=True)
    slide = np.bincount(codes, minlength=len(names)) / len(codes)
    centre = (row_bounds[:, :2] + row_bounds[:, 2:]) / 2
    distance = []
    for x0, y0 in corners:
        inside = (
            (centre[:, 0] >= x0) & (centre[:, 0] < x0 + size_px) & (centre[:, 1] >= y0) & (centre[:, 1] < y0 + size_px)
        )
        share = np.bincount(codes[inside], minlength=len(names)) / max(int(inside.sum()), 1)
        distance.append(0.5 * np.abs(share - slide).sum())
    keep = np.sort(np.argsort(distance, kind="stable")[:n])
    return [corners[i] for i in keep]


def gene_groups(var: pd.DataFrame) -> np.ndarray:
    """Each gene's group for the benchmark: ``"visible"`` (seen through the cells in the image), ``"clone"`` or
    ``"gradient"`` (only the spots carry them), from ``var["group"]`` of a simulated section's truth (the toy's
    ``CloneA``/``CloneB`` and ``Grad`` groups, the HGSC sections' own names); all visible without that column.
    """
    if "group" not in var:
        return np.full(len(var), "visible", dtype=object)
    names = var["group"].astype(str)
    kind = np.where(names.str.startswith("Clone") | (names == "clone"), "clone", "visible")
    return np.where(names.isin(["Grad", "gradient"]), "gradient", kind).astype(object)


class MeasuredSpots(NamedTuple):
    """The spots a ``super_resolve`` table was fitted on, in its bin coordinates, with their counts."""

    rc: np.ndarray  # (n_spots, 2) centres (row, col) in bins
    radius_bins: float
    counts: np.ndarray  # (n_spots, n_genes) float64, the fitted layer


def measured_spots(sdata, reference: str, genes) -> MeasuredSpots:
    """The spots, disk radius and counts of ``genes`` (the fitted layer) of the ``super_resolve`` table
    ``reference``, as its loss saw them.
    """
    from histex import _sdata
    from histex.tl._sections import dense_counts

    table = sdata.tables[reference]
    meta = table.uns["histex"]["data"]
    spots = _sdata.read_spots(sdata, meta["spots_key"], meta["table_key"], meta["image_key"], meta["coordinate_system"])
    counts = dense_counts(spots.table, list(genes), _sdata.fitted_layer(table))
    return MeasuredSpots(spots.xy_px[:, ::-1] / float(meta["bin_px"]), float(meta["radius_bins"]), counts)


def spot_consistency(spots: MeasuredSpots, prediction) -> float:
    """Mean over genes of the Pearson correlation over spots between what each spot measured and the prediction
    summed over the bins of its disk (the disk of ``super_resolve``'s loss); ``prediction`` holds bins of the grid
    and the genes of ``spots`` (:func:`measured_spots`), in that order.
    """
    from histex.model.matching import disk_incidence
    from histex.model.matching import spot_consistency as per_gene

    bin_rc = prediction.obs[["array_row", "array_col"]].to_numpy()
    incidence = disk_incidence(spots.rc, spots.radius_bins, bin_rc)
    x = prediction.X.toarray() if hasattr(prediction.X, "toarray") else np.asarray(prediction.X)
    return float(np.nanmean(per_gene(incidence @ x.astype(np.float64), spots.counts)))


def run_benchmark(
    datasets: Sequence[str] = DATASETS,
    methods: Sequence[str] = METHODS,
    *,
    data_dir: str | Path | None = None,
    n_genes: int = 60,
    epochs: int | None = 60,
    n_states: int = 3,
    seeds: Sequence[int] = (0, 1, 2),
    device: str | None = None,
    toy_size_um: float = 1600,
    wsi_size_px: int = 6000,
    show_progress: bool = False,
    echo: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Score every method on every dataset and seed against the truth, per gene over in-tissue bins, by gene group.

    Parameters
    ----------
    datasets
        Names for :func:`load_dataset`.
    methods
        ``"histex"``, ``"image_only"``, ``"paper"`` (super-resolution variants) and ``"nearest"``, ``"linear"``,
        ``"cubic"``, ``"idw"`` (spots placed on the bins without learning, :mod:`histex.baselines`).
    data_dir
        Folder with the real data (``hgsc_nest.jpg`` and ``hgsc_nest.parquet``; ``hgsc_nuclei_wsi.parquet`` and
        ``hgsc_tissue_wsi.parquet``).
    n_genes
        Genes of every section (on the HGSC sections, :data:`HIDDEN_GENES` of them clone and gradient genes).
    epochs
        Epochs of every super-resolution variant (``None``: each variant's default; the paper's is 500).
    n_states, device
        Passed to :func:`histex.tl.super_resolve`.
    seeds
        Each seed draws the section (counts, spot lattice, and the toy's layout) and seeds the models.
    toy_size_um
        Edge of the toy section.
    wsi_size_px
        Edge of the ``"hgsc_wsi"`` crop in pixels of 0.5 µm.

    Returns
    -------
    pandas.DataFrame
        One row per dataset, seed, method and gene group (``"all"``, and each of ``"visible"``, ``"clone"``,
        ``"gradient"`` the section has, :func:`gene_groups`): ``pearson``, ``ssim``, ``rmse`` (means over the
        group's genes), ``spot_consistency`` (:func:`spot_consistency`, over all genes), ``seconds``,
        ``peak_rss_mb`` (of that method's step, where the system can tell).
    """
    import histex as hx

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; available: {', '.join(METHODS)}.")
    data_dir = Path(data_dir) if data_dir is not None else None
    rows = []
    for name in datasets:
        for seed in seeds:
            sdata = load_dataset(
                name, data_dir=data_dir, n_genes=n_genes, seed=seed, toy_size_um=toy_size_um, wsi_size_px=wsi_size_px
            )
            truth = sdata.tables["truth"]
            genes = list(sdata.tables["table"].var_names)  # every gene, hidden ones too
            groups = pd.Series(gene_groups(truth.var), index=truth.var_names)
            hx.pp.extract_features(sdata, show_progress=show_progress)
            reference = spots = None
            for method in methods:
                reset_peak_rss()
                start = time.perf_counter()
                if method in MODEL_METHODS:
                    hx.tl.super_resolve(
                        sdata, variant=method, key_added=method, epochs=epochs, n_states=n_states, seed=seed,
                        device=device, genes=genes, show_progress=show_progress,
                    )  # fmt: skip
                    prediction = sdata.tables[method]
                    reference = reference or method
                else:
                    if reference is None:  # the baselines use the bins and genes of a super-resolution table
                        hx.tl.super_resolve(sdata, key_added="grid", epochs=1, n_states=1, genes=genes,
                                            show_progress=False)  # fmt: skip
                        reference = "grid"
                    prediction = hx.baselines.spots_on_bins(sdata, reference, method=method)
                seconds = time.perf_counter() - start
                peak = peak_rss_mb()
                scores = hx.metrics.score(prediction, truth)
                if spots is None:  # read once per section, when a super-resolution table says which
                    spots = measured_spots(sdata, reference, genes)
                consistency = spot_consistency(spots, prediction[:, genes])
                by_group = {"all": scores} | {
                    g: scores[groups.loc[scores.index].to_numpy() == g] for g in dict.fromkeys(groups)
                }
                for group, part in by_group.items():
                    row = {"dataset": name, "seed": seed, "method": method, "group": group,
                           **hx.metrics.summarise(part), "spot_consistency": consistency, "seconds": seconds,
                           "peak_rss_mb": peak}  # fmt: skip
                    rows.append(row)
                line = " ".join(f"{g} {hx.metrics.summarise(p)['pearson']:.4f}" for g, p in by_group.items())
                echo(f"{name:10s} seed {seed} {method:11s} pearson {line}  spots {consistency:.4f}  {seconds:7.1f} s")
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


RESULT_COLUMNS = ["dataset", "seed", "method", "group", "pearson", "ssim", "rmse", "spot_consistency", "seconds",
                  "peak_rss_mb"]  # fmt: skip


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds, per dataset, method and group, in the order they came."""
    keys = ["dataset", "method", "group"]
    return (
        results.groupby(keys, sort=False)[[c for c in RESULT_COLUMNS if c not in (*keys, "seed")]].mean().reset_index()
    )


def plot_results(results: pd.DataFrame, path: str | Path) -> None:
    """Mean per-gene Pearson (all genes, mean over seeds) per method and dataset, and per gene group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = summary(results)
    datasets = list(dict.fromkeys(means["dataset"]))
    methods = list(dict.fromkeys(means["method"]))
    groups = [g for g in ("all", "visible", "clone", "gradient") if g in set(means["group"])]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups) + 1.2, 3.6), layout="constrained")
    axes = np.atleast_1d(axes)
    width = 0.8 / max(1, len(methods))
    for ax, group in zip(axes, groups, strict=True):
        for i, method in enumerate(methods):
            chosen = means[(means["method"] == method) & (means["group"] == group)].set_index("dataset")
            values = [chosen["pearson"].get(d, np.nan) for d in datasets]
            ax.bar(np.arange(len(datasets)) + i * width, values, width, label=method)
        ax.set_xticks(np.arange(len(datasets)) + width * (len(methods) - 1) / 2, datasets)
        ax.set_title(f"Pearson, {group} genes")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)  # beside the panels, over no bar
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(results: pd.DataFrame) -> str:
    """Means over seeds: one row per dataset and method, Pearson per group, then SSIM, RMSE and spot consistency of
    all genes.
    """
    means = summary(results)
    groups = [g for g in ("all", "visible", "clone", "gradient") if g in set(means["group"])]
    header = "| dataset | method | " + " | ".join(f"Pearson {g}" for g in groups)
    lines = [header + " | SSIM | RMSE | spot consistency | seconds |", "|---" * (len(groups) + 6) + "|"]
    for (dataset, method), part in means.groupby(["dataset", "method"], sort=False):
        by_group = part.set_index("group")
        pearson = " | ".join(f"{by_group.loc[g, 'pearson']:.4f}" if g in by_group.index else "–" for g in groups)
        a = by_group.loc["all"]
        lines.append(f"| {dataset} | {method} | {pearson} | {a.ssim:.4f} | {a.rmse:.4f} | "
                     f"{a.spot_consistency:.4f} | {a.seconds:.1f} |")  # fmt: skip
    return "\n".join(lines)


def run_bench_command(out: str | Path, **kwargs) -> pd.DataFrame:
    """``histex bench``: run the benchmark, write ``results.csv`` and ``results.png`` under ``out``, print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(**kwargs)
    results.to_csv(out / "results.csv", index=False)
    plot_results(results, out / "results.png")
    print(markdown_table(results))
    print(f"wrote {out / 'results.csv'} and {out / 'results.png'}")
    return results
