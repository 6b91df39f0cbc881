"""Image features per bin, stored in the SpatialData as an image element on the bin grid."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from histex import _sdata, geometry
from histex._device import resolve_device, resolve_precision
from histex._docs import shared_docs
from histex._validation import check_bool, check_int, check_key, check_number
from histex.encoders import DEFAULT_MODEL, Encoder, plan_encoder
from histex.pp._image import image_source
from histex.pp._store import FeatureStore
from histex.pp._tiling import (
    default_num_workers,
    encode_blocks,
    plan_tiling,
    shifts_per_axis,
    tiling_shifts,
)
from histex.pp._tissue import tissue_mask

logger = logging.getLogger(__name__)

RGB_CHANNELS = ["mean_r", "mean_g", "mean_b"]


def features_key(image_key: str, model_name: str) -> str:
    return f"{image_key}_{model_name}{_sdata.FEATURES_SUFFIX}"


def tissue_key(features_key_: str) -> str:
    """The tissue mask that goes with a features element, on the same grid."""
    return features_key_.removesuffix(_sdata.FEATURES_SUFFIX) + "_tissue"


@shared_docs
def extract_features(
    sdata,
    image_key: str | None = None,
    *,
    model: str | Encoder | torch.nn.Module | Callable = DEFAULT_MODEL,
    weights: str | Path | None = None,
    bin_size_um: float = 8.0,
    mpp: float | None = None,
    n_shifts: int = 1,
    patch_size: int | None = None,
    tile_size: int | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    compile: bool = False,
    overwrite: bool = False,
    key_added: str | None = None,
    show_progress: bool = True,
) -> str:
    """Compute image features for every bin of the bin grid and store them in ``sdata``.

    The image is read lazily (from the pyramid level closest to the working resolution), resampled so that one
    encoder patch is one bin (``bin_size_um / patch_size`` µm/px: 0.5 µm/px for 16 px patches and 8 µm bins),
    cut into tiles by worker processes, encoded in batches, and written block by block; when ``sdata`` is backed by
    a zarr store, straight into it, so that memory stays bounded on any slide.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with the full-resolution H&E image (e.g. from
        :func:`spatialdata_io.visium`).
    image_key
        The image; found automatically when unambiguous (``*_full_image`` is preferred).
    model
        An encoder name (see :func:`histex.pp.available_models`: ``"uni"``, ``"uni2-h"``, ``"h-optimus-0"``,
        ``"h-optimus-1"``, ``"virchow2"``, ``"gigapath"``, ``"resnet50"``, ``"texture"``), an :class:`histex.encoders.Encoder`, or a
        torch module / callable that maps normalised tiles to tokens or a feature map (give its ``patch_size``).
        The default ``"texture"`` is weight-free: colour deconvolution and multi-scale texture statistics.
    weights
        For foundation models, a local state dict file; otherwise the Hugging Face cache (see
        :func:`histex.encoders.get_encoder`). Nothing is downloaded without a log line.
    bin_size_um
        Bin edge in µm (8 µm, the Visium HD resolution).
    mpp
        Microns per pixel of the image. By default inferred from the reader's metadata or the spot lattice
        (100 µm pitch), for which the spots are read.
    n_shifts
        Tilings to average, shifted over one tile on a ``k x k`` lattice (1 = non-overlapping tiles, as the paper;
        16 as iStar). Averaging removes the tile-border pattern at ``n_shifts`` times the cost.
    patch_size, tile_size
        Pixels per token (needed for a torch module) and per tile; the model's own by default.
    spots_key, table_key
        The spot circles and their counts table, only used to infer ``mpp``; found automatically.
    {device}
    {precision}
    batch_size
        Tiles per encoder call; by default 256 on a GPU (halved whenever it runs out of memory) and 8 on a CPU.
    num_workers
        Processes that read and resample tiles; by default up to 8 beside a GPU and up to 2 on a CPU.
    compile
        Compile a torch model with :func:`torch.compile` (faster on large slides, slow to start).
    overwrite
        Recompute even when features with the same image, model, weights and settings are stored.
    key_added
        Key of the features element; default ``"{image_key}_{model}_features"``.
    show_progress
        Show a progress bar.

    Returns
    -------
    The key of the features element. ``sdata.images[key]`` holds ``(channels, rows, cols)`` float32 features with
    the encoder's channels plus the mean colour of each bin (``mean_r``, ``mean_g``, ``mean_b``), placed on the
    image by a ``Scale`` of one bin in image pixels composed with the image's own transformations.
    ``sdata.labels["{image_key}_{model}_tissue"]`` holds the tissue mask on the same grid (1 = tissue), and
    ``sdata.attrs["histex"]["features"][key]`` the settings that identify the features for reuse, and
    ``sdata.attrs["histex"]["feature_runs"][key]`` how they were computed (device, batch size, tiles, seconds).
    """
    start = time.perf_counter()
    # the cheap checks first: resolving the model may hash or fetch gigabytes of weights
    bin_size_um = check_number("bin_size_um", bin_size_um, minimum=0, above=True)
    n_shifts = check_int("n_shifts", n_shifts)
    patch_size = check_int("patch_size", patch_size, none_ok=True)
    tile_size = check_int("tile_size", tile_size, none_ok=True)
    batch_size = check_int("batch_size", batch_size, none_ok=True)
    num_workers = check_int("num_workers", num_workers, minimum=0, none_ok=True)
    for name, value in (("compile", compile), ("overwrite", overwrite), ("show_progress", show_progress)):
        check_bool(name, value)
    check_key("key_added", key_added, none_ok=True)
    mpp = check_number("mpp", mpp, minimum=0, above=True, none_ok=True)
    if mpp is None:
        section = _sdata.read_section(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
        image_key, mpp = section.image_key, section.mpp
        logger.info("Pixel size %.4f µm/px, from the %s.", mpp, section.mpp_source)
    else:
        image_key = _sdata.find_image_key(sdata, image_key)
    image_element = sdata.images[image_key]
    source = image_source(image_element, mpp)
    torch_device = resolve_device(device)
    resolve_precision(precision, torch_device)
    shape_yx = source.shape_yx
    grid = geometry.BinGrid.for_image(shape_yx, mpp=mpp, bin_size_um=bin_size_um)
    if grid.n_rows < 1 or grid.n_cols < 1:
        raise ValueError(f"The image ({shape_yx[1]} x {shape_yx[0]} px) is smaller than one {bin_size_um} µm bin.")
    shifts_per_axis(n_shifts)
    plan = plan_encoder(model, weights=weights, patch_size=patch_size, tile_size=tile_size)
    tile_bins = plan.tile_size // plan.patch_size
    tiling_shifts(n_shifts, tile_bins)
    key = key_added or features_key(image_key, plan.name)
    mask_key = tissue_key(key)
    _check_output_keys(sdata, key, mask_key, image_key, overwrite)
    working_mpp = bin_size_um / plan.patch_size
    settings = {
        "image": image_key,
        "image_shape": [int(s) for s in shape_yx],
        "model": plan.name,
        "weights_digest": plan.digest,
        "mpp": round(float(mpp), 9),
        "working_mpp": round(float(working_mpp), 9),
        "bin_size_um": float(bin_size_um),
        "n_shifts": int(n_shifts),
        "patch_size": int(plan.patch_size),
        "tile_size": int(plan.tile_size),
        "margin": int(plan.margin),
    }
    if not overwrite and _cached(sdata, key, mask_key, settings, grid):
        logger.info(
            "Reusing the features %r (same image, model, weights, mpp and tiling); overwrite=True recomputes.", key
        )
        return key
    if plan.digest is None:
        logger.info("The model has no weights digest; its features cannot be reused and are computed now.")

    encoder = plan.build().to(torch_device, precision=precision, compile=compile)
    names = list(encoder.feature_names) + RGB_CHANNELS
    if batch_size is None:
        batch_size = 256 if encoder.device.type == "cuda" else 8
    if num_workers is None:
        num_workers = default_num_workers(encoder.device)
    logger.info(
        "Bin grid: %d x %d bins of %g µm (%.2f px); working resolution %.4f µm/px (%d px patches), %d tiling(s).",
        grid.n_rows, grid.n_cols, bin_size_um, grid.bin_px, working_mpp, encoder.patch_size, n_shifts,
    )  # fmt: skip
    if min(grid.n_rows, grid.n_cols) < tile_bins:
        logger.info("The image is smaller than one tile; the tile is padded with white (background).")
    tiling, chunk = plan_tiling(grid, encoder, n_shifts=n_shifts, batch_size=batch_size, n_features=len(names))
    store = FeatureStore(sdata, key, mask_key, names, grid.shape, grid_transformations(image_element, grid), chunk)
    try:
        store.open()
        stats = encode_blocks(
            source,
            grid,
            encoder,
            working_mpp=working_mpp,
            tiling=tiling,
            batch_size=batch_size,
            num_workers=num_workers,
            sink=store.write,
            show_progress=show_progress,
        )
        mask = tissue_mask(store.rgb)
        run = {
            "device": str(encoder.device),
            "precision": precision,
            "batch_size": stats.batch_size,
            "oom_backoffs": stats.oom_backoffs,
            "num_workers": num_workers,
            "n_tiles": stats.n_tiles,
            "n_bins": stats.n_bins,
            "encode_seconds": round(stats.seconds, 3),
            "tiles_per_s": round(stats.tiles_per_s, 3),
            "peak_gpu_bytes": stats.peak_gpu_bytes,
        }
        store.finish(mask, {"features": settings, "feature_runs": run})
    except BaseException:
        store.abort()
        raise
    logger.info("Tissue: %d of %d bins.", int(mask.sum()), mask.size)
    logger.info(
        "Features %r: %d channels, %d tiles in %.1f s (%.1f tiles/s); total %.1f s.",
        key, len(names), stats.n_tiles, stats.seconds, stats.tiles_per_s, time.perf_counter() - start,
    )  # fmt: skip
    return key


def _check_output_keys(sdata, key: str, mask_key: str, image_key: str, overwrite: bool) -> None:
    """Never write over the input image, nor over elements histex did not write unless ``overwrite=True``."""
    if key == image_key or mask_key == image_key:
        raise ValueError(f"key_added={key!r} would replace the input image {image_key!r}; choose another key.")
    ours = sdata.attrs.get("histex", {}).get("features", {})
    for kind, name in (("images", key), ("labels", mask_key)):
        if name in getattr(sdata, kind) and key not in ours and not overwrite:
            raise ValueError(
                f"sdata.{kind}[{name!r}] exists and was not written by extract_features; choose another key_added, "
                "or pass overwrite=True to replace it."
            )


def _cached(sdata, key: str, mask_key: str, settings: dict, grid: geometry.BinGrid) -> bool:
    if settings["weights_digest"] is None or key not in sdata.images or mask_key not in sdata.labels:
        return False
    stored = sdata.attrs.get("histex", {}).get("features", {}).get(key)
    return stored == settings and tuple(sdata.images[key].shape[1:]) == grid.shape


def grid_transformations(image_element, grid: geometry.BinGrid) -> dict:
    """Transformations that place a bin-grid raster on the image: one bin = ``bin_px`` image pixels."""
    from spatialdata.transformations import Scale, Sequence

    to_image = Scale([grid.bin_px, grid.bin_px], axes=("y", "x"))
    return {cs: Sequence([to_image, t]) for cs, t in _sdata.element_transformations(image_element).items()}


@dataclass
class BinFeatures:
    """Features and tissue mask on a bin grid, read back from a SpatialData."""

    data: np.ndarray  # (channels, rows, cols)
    names: list[str]
    tissue: np.ndarray  # (rows, cols) bool
    bin_px: float


def _grid_bin_px(sdata, key: str, image_key: str, coordinate_system: str) -> float | None:
    """Bin edge in image pixels if element ``key`` is a bin grid on the image (a pure scale, aligned to the image's
    origin, in the shared coordinate system), else None.
    """
    element = sdata.images[key]
    if coordinate_system not in _sdata.element_transformations(element):
        return None
    affine = _sdata.to_image_pixels(sdata, element, image_key, coordinate_system)
    scale = affine[0, 0]
    if scale <= 0 or not np.allclose(affine[:2, :2], np.eye(2) * scale) or not np.allclose(affine[:2, 2], 0):
        return None
    return float(scale)


def read_features(
    sdata, image_key: str, coordinate_system: str, features_key_: str | None = None
) -> tuple[str, BinFeatures]:
    """The features element of an image (found when there is one) and its tissue mask.

    A features element belongs to the image when its name starts with the image key and its transformation lays
    it on the image as a grid of square bins; the bin size is read from that transformation.
    """
    named = [k for k in sdata.images if k.startswith(f"{image_key}_") and k.endswith(_sdata.FEATURES_SUFFIX)]
    on_image = {k: px for k in named if (px := _grid_bin_px(sdata, k, image_key, coordinate_system)) is not None}
    if features_key_ is None:
        if not on_image:
            raise ValueError(
                f"No features for image {image_key!r}: run histex.pp.extract_features(sdata) first (or pass "
                "features_key=...)."
            )
        if len(on_image) > 1:
            raise ValueError(f"Several feature sets for {image_key!r}: {sorted(on_image)}. Pass features_key=... .")
        features_key_ = next(iter(on_image))
    elif features_key_ not in sdata.images:
        raise KeyError(f"No features {features_key_!r}; feature elements of {image_key!r}: {named or 'none'}.")
    elif features_key_ not in on_image:
        raise ValueError(
            f"{features_key_!r} is not a bin grid on image {image_key!r} in coordinate system "
            f"{coordinate_system!r}: run histex.pp.extract_features(sdata, image_key={image_key!r})."
        )
    element = sdata.images[features_key_]
    mask_key = tissue_key(features_key_)
    if mask_key not in sdata.labels or sdata.labels[mask_key].shape != element.shape[1:]:
        raise ValueError(
            f"No tissue mask {mask_key!r} on the grid of {features_key_!r}: run histex.pp.extract_features again."
        )
    data = np.asarray(element.data, dtype=np.float32)
    tissue = np.asarray(sdata.labels[mask_key].data) > 0
    if not tissue.any():
        raise ValueError(
            f"The tissue mask {mask_key!r} holds no tissue: every bin of the H&E looks like glass (bright and "
            "unstained). Check that the image is the stained section, or mark the tissue in that labels element "
            "(1 = tissue)."
        )
    return features_key_, BinFeatures(
        data=data, names=[str(c) for c in element.coords["c"].values], tissue=tissue, bin_px=on_image[features_key_]
    )
