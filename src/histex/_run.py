"""``histex run``: one Visium section from Space Ranger's files to a SpatialData zarr store and a small report."""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from histex._memory import peak_rss_mb
from histex.model.io import MANIFEST
from histex.spaceranger import TIFF_SUFFIXES

logger = logging.getLogger(__name__)

#: Genes drawn in the report's figure: the most expressed of the prediction.
REPORT_GENES = 4


class BadInput(ValueError):
    """An input of :func:`run_section` that is wrong, found before any work (the message names the fix)."""


def check_model_dir(model_dir: str | Path) -> None:
    """Refuse a ``model_dir`` that is not a folder written by :meth:`histex.HistexModel.save`."""
    if not (Path(model_dir) / MANIFEST).is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model (no {MANIFEST}): give a folder written by "
                                "HistexModel.save.")  # fmt: skip


def report_folder(out: Path) -> Path:
    """Where the report of the store ``out`` goes: beside it, ``SAMPLE_report`` for ``SAMPLE.zarr``."""
    return out.with_name(f"{out.name.removesuffix('.zarr')}_report")


def run_section(
    outs: str | Path | None,
    image: str | Path,
    out: str | Path,
    *,
    model: str = "texture",
    weights: str | Path | None = None,
    genes: list[str] | None = None,
    device: str | None = None,
    model_dir: str | Path | None = None,
    n_domains: int | None = None,
    epochs: int | None = None,
    n_states: int = 5,
    seed: int = 0,
    mpp: float | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    echo=print,
) -> dict:
    """Features, super-resolution (trained on the section's spots, or a saved model's prediction) and optionally
    domains for one section (``outs=None``: an H&E-only slide, predicted from its image by the saved model of
    ``model_dir``, at ``mpp`` µm per pixel); writes the zarr store ``out`` and ``SAMPLE_report/``
    (``report.json``, ``genes.png``, ``domains.png``).

    The store and the report are written under temporary names and renamed when complete: each is there whole or
    not at all. Everything a user can get wrong (the folder, the image, the saved model, the encoder, the output)
    is checked before any work and raised as :class:`BadInput`. Returns the report: settings, counts, seconds per
    stage and peak RSS in MiB.
    """
    import matplotlib.pyplot as plt

    import histex as hx
    from histex.spaceranger import check_outs, read_visium

    out = Path(out)
    report_dir = report_folder(out)
    try:
        for path in (out, report_dir):
            if path.exists() and not overwrite:
                raise FileExistsError(f"{path} exists: remove it or pass overwrite=True (--overwrite).")
        if n_domains is not None and (int(n_domains) != n_domains or n_domains < 2):
            raise ValueError(f"n_domains must be a whole number of 2 or more, got {n_domains!r}.")
        if outs is not None:
            check_outs(outs, image)
        elif model_dir is None or mpp is None:
            raise ValueError("An H&E-only slide (no Space Ranger folder) is predicted from its image by a saved model: "
                             "give model_dir (--model-dir) and the image's µm per pixel, mpp (--mpp).")  # fmt: skip
        elif not Path(image).is_file():
            raise FileNotFoundError(f"No image at {image}.")
        if model_dir is not None:
            check_model_dir(model_dir)
        saved = hx.HistexModel.load(model_dir, device=device) if model_dir is not None else None
        model = saved.encoder.get("model", model) if saved is not None else model  # features as the model's were
        if model not in hx.pp.available_models():
            raise ValueError(f"Unknown encoder {model!r}; available: {', '.join(hx.pp.available_models())}.")
    except (OSError, ValueError) as error:
        raise BadInput(str(error)) from error

    seconds: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 2)
        echo(f"  {name:<16s} {seconds[name]:8.2f} s")

    echo(f"histex run: {outs} with {image} -> {out}")
    t = time.perf_counter()
    name = out.name.removesuffix(".zarr")
    sdata = read_visium(outs, image, dataset_id=name) if outs is not None else read_slide(image, name)
    stage("read", t)
    t = time.perf_counter()
    hx.pp.extract_features(sdata, model=model, weights=weights, mpp=mpp, device=device, show_progress=show_progress)
    stage("features", t)
    t = time.perf_counter()
    if saved is not None:
        saved.predict(sdata, key_added="histex", device=device, show_progress=show_progress)
    else:
        hx.tl.super_resolve(
            sdata, genes=genes, epochs=epochs, n_states=n_states, seed=seed, device=device, key_added="histex",
            show_progress=show_progress,
        )  # fmt: skip
    stage("super_resolve" if saved is None else "predict", t)
    if n_domains is not None:
        t = time.perf_counter()
        hx.tl.annotate(sdata, n_domains=int(n_domains))
        stage("domains", t)

    t = time.perf_counter()
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    with warnings.catch_warnings():  # zarr's notice about a future default, not about this data
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        sdata.write(staging)
    _replace(staging, out)
    stage("write zarr", t)

    table = sdata.tables["histex"]
    report_staging = report_dir.with_name(f".{report_dir.name}.partial")
    shutil.rmtree(report_staging, ignore_errors=True)
    report_staging.mkdir(parents=True)
    t = time.perf_counter()
    means = np.asarray(table.X.mean(axis=0)).ravel()
    shown = list(table.var_names[np.argsort(-means)[:REPORT_GENES]])
    axes = hx.pl.genes(sdata, shown, table_key="histex", show=False, save=report_staging / "genes.png")
    plt.close(axes.flat[0].figure)
    if n_domains is not None:
        plt.close(hx.pl.domains(sdata, show=False, save=report_staging / "domains.png").figure)
    stage("figures", t)
    spots = sdata.tables.get("table")
    report = {
        "outs": str(outs),
        "image": str(image),
        "out": str(out),
        "settings": {
            "model": model,
            "weights": None if weights is None else str(weights),
            "device": device,
            "model_dir": None if model_dir is None else str(model_dir),
            "n_domains": n_domains,
            "epochs": epochs,
            "n_states": n_states,
            "seed": seed,
            "mpp": mpp,
        },
        "counts": {
            "spots": 0 if spots is None else int(spots.n_obs),
            "spot_genes": 0 if spots is None else int(spots.n_vars),
            "bins": int(table.n_obs),
            "genes": int(table.n_vars),
            "domains": None if n_domains is None else int(table.obs["domain"].nunique()),
        },
        "genes_shown": shown,
        "seconds": seconds,
        "peak_rss_mb": round(peak_rss_mb(), 1),  # since the last reset: a cohort row's own
    }
    (report_staging / "report.json").write_text(json.dumps(report, indent=2))
    _replace(report_staging, report_dir)
    echo(f"wrote {out} ({table.n_obs} bins x {table.n_vars} genes) and {report_dir}; peak RSS "
         f"{report['peak_rss_mb']:.0f} MiB")  # fmt: skip
    return report


def read_slide(image: str | Path, name: str):
    """An H&E-only slide as a SpatialData: the image (TIFF, JPEG or PNG) as a pyramid in coordinate system ``name``."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    image = Path(image)
    if image.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        rgb = tifffile.imread(image)
    else:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        rgb = np.asarray(Image.open(image).convert("RGB"))
    parsed = Image2DModel.parse(
        np.ascontiguousarray(rgb[..., :3].transpose(2, 0, 1)), dims=("c", "y", "x"), scale_factors=[2, 2, 2, 2],
        chunks=(3, 4096, 4096), transformations={name: Identity()},
    )  # fmt: skip
    return sd.SpatialData(images={f"{name}_full_image": parsed})


def _replace(staging: Path, final: Path) -> None:
    """Move a complete folder into place, over an older one (``overwrite`` was checked before any work)."""
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
