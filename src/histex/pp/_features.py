"""Image features per bin, stored in the SpatialData as an image element on the bin grid."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from histex import _sdata, geometry
from histex.encoders import Encoder, get_encoder
from histex.pp._image import iter_tiles, resample, rgb_uint8
from histex.pp._tissue import tissue_mask

logger = logging.getLogger("histex")

RGB_CHANNELS = ["mean_r", "mean_g", "mean_b"]


def features_key(image_key: str, model_name: str) -> str:
    return f"{image_key}_{model_name}{_sdata.FEATURES_SUFFIX}"


def tissue_key(image_key: str) -> str:
    return f"{image_key}_tissue"


def encode_image(
    image: np.ndarray,
    grid: geometry.BinGrid,
    encoder: Encoder,
    *,
    mpp: float,
    bin_size_um: float,
    batch_size: int = 8,
    show_progress: bool = True,
) -> np.ndarray:
    """Run an encoder over a ``(y, x, 3)`` uint8 image and return ``(n_features, rows, cols)`` on the bin grid.

    The image is resampled so that one encoder patch is one bin, then cut into tiles with the encoder's margin.
    """
    p = encoder.patch_size
    working = resample(image, mpp / (bin_size_um / p))
    need_y, need_x = grid.n_rows * p, grid.n_cols * p
    working = working[:need_y, :need_x]
    t = encoder.tile_size // p
    n_ty, n_tx = -(-need_y // encoder.tile_size), -(-need_x // encoder.tile_size)
    out = np.zeros((len(encoder.feature_names), n_ty * t, n_tx * t), dtype=np.float32)
    batch, where = [], []

    def flush():
        feats = encoder.encode(np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        for (ty, tx), f in zip(where, feats, strict=True):
            out[:, ty * t : (ty + 1) * t, tx * t : (tx + 1) * t] = f
        batch.clear()
        where.clear()

    tiles = iter_tiles(working, encoder.tile_size, encoder.margin)
    for ty, tx, patch in tqdm(tiles, total=n_ty * n_tx, desc=f"features ({encoder.name})", disable=not show_progress):
        batch.append(patch)
        where.append((ty, tx))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return out[:, : grid.n_rows, : grid.n_cols]


def extract_features(
    sdata,
    image_key: str | None = None,
    *,
    model: str | Encoder = "texture",
    bin_size_um: float = 8.0,
    mpp: float | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    batch_size: int = 8,
    key_added: str | None = None,
    show_progress: bool = True,
) -> str:
    """Compute image features for every bin of the bin grid and store them in ``sdata``.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with the full-resolution H&E image (e.g. from
        :func:`spatialdata_io.visium`).
    image_key
        The image; found automatically when unambiguous (``*_full_image`` is preferred).
    model
        An encoder name (see :func:`histex.encoders.available_models`) or an :class:`histex.encoders.Encoder`.
        The default ``"texture"`` is weight-free: colour deconvolution and multi-scale texture statistics.
    bin_size_um
        Bin edge in µm (8 µm, the Visium HD resolution).
    mpp
        Microns per pixel of the image. By default inferred from the reader's metadata or the spot lattice
        (100 µm pitch), for which the spots are read.
    spots_key, table_key
        The spot circles and their counts table, only used to infer ``mpp``; found automatically.
    batch_size
        Tiles per encoder call.
    key_added
        Key of the features element; default ``"{image_key}_{model}_features"``.
    show_progress
        Show a progress bar.

    Returns
    -------
    The key of the features element. ``sdata.images[key]`` holds ``(channels, rows, cols)`` float32 features with
    the encoder's channels plus the mean colour of each bin (``mean_r``, ``mean_g``, ``mean_b``), placed on the
    image by a ``Scale`` of one bin in image pixels composed with the image's own transformations.
    ``sdata.labels["{image_key}_tissue"]`` holds the tissue mask on the same grid (1 = tissue).
    """
    start = time.perf_counter()
    encoder = get_encoder(model)
    image_key = _sdata.find_image_key(sdata, image_key)
    image_el = _sdata.image_array(sdata, image_key)
    if mpp is None:
        spots_key, table_key = _sdata.find_spots(sdata, spots_key, table_key)
        cs = _sdata.common_coordinate_system(sdata, image_key, spots_key)
        spots = _sdata.read_spots(sdata, spots_key, table_key, image_key, cs)
        mpp, source = _sdata.infer_mpp(spots)
        logger.info("Pixel size %.4f µm/px, from the %s.", mpp, source)
    else:
        mpp = _sdata.check_mpp(mpp)
    shape_yx = (image_el.sizes["y"], image_el.sizes["x"])
    grid = geometry.BinGrid.for_image(shape_yx, mpp=mpp, bin_size_um=bin_size_um)
    if grid.n_rows < 1 or grid.n_cols < 1:
        raise ValueError(f"The image ({shape_yx[1]} x {shape_yx[0]} px) is smaller than one {bin_size_um} µm bin.")
    image = rgb_uint8(image_el)
    logger.info("Bin grid: %d x %d bins of %g µm (%.2f px).", grid.n_rows, grid.n_cols, bin_size_um, grid.bin_px)

    feats = encode_image(
        image, grid, encoder, mpp=mpp, bin_size_um=bin_size_um, batch_size=batch_size, show_progress=show_progress
    )
    rgb = geometry.bin_means(image, grid) / 255.0
    mask = tissue_mask(rgb)
    logger.info("Tissue: %d of %d bins.", int(mask.sum()), mask.size)
    data = np.concatenate([feats, rgb.astype(np.float32)], axis=0)
    names = list(encoder.feature_names) + RGB_CHANNELS

    key = key_added or features_key(image_key, encoder.name)
    transformations = grid_transformations(sdata.images[image_key], grid)
    _write_grid_elements(sdata, key, tissue_key(image_key), data, names, mask, transformations)
    logger.info("Features %r: %d channels in %.1f s.", key, len(names), time.perf_counter() - start)
    return key


def grid_transformations(image_element, grid: geometry.BinGrid) -> dict:
    """Transformations that place a bin-grid raster on the image: one bin = ``bin_px`` image pixels."""
    from spatialdata.transformations import Scale, Sequence

    to_image = Scale([grid.bin_px, grid.bin_px], axes=("y", "x"))
    return {cs: Sequence([to_image, t]) for cs, t in _sdata.element_transformations(image_element).items()}


def _write_grid_elements(sdata, key, mask_key, data, names, mask, transformations) -> None:
    import dask.array as da
    from spatialdata.models import Image2DModel, Labels2DModel

    chunks = (data.shape[0], min(1024, data.shape[1]), min(1024, data.shape[2]))
    features = Image2DModel.parse(
        da.from_array(data, chunks=chunks), dims=("c", "y", "x"), c_coords=names, transformations=transformations
    )
    labels = Labels2DModel.parse(mask.astype(np.uint8), dims=("y", "x"), transformations=dict(transformations))
    sdata.images[key] = features
    sdata.labels[mask_key] = labels


@dataclass
class BinFeatures:
    """Features and tissue mask on a bin grid, read back from a SpatialData."""

    data: np.ndarray  # (channels, rows, cols)
    names: list[str]
    tissue: np.ndarray  # (rows, cols) bool
    bin_px: float


def read_features(sdata, image_key: str, features_key_: str | None = None) -> tuple[str, BinFeatures]:
    """The features element of an image (found when there is one) and its tissue mask."""
    from spatialdata.transformations import get_transformation

    candidates = [k for k in sdata.images if k.startswith(f"{image_key}_") and k.endswith(_sdata.FEATURES_SUFFIX)]
    if features_key_ is None:
        if not candidates:
            raise ValueError(
                f"No features for image {image_key!r}: run histex.pp.extract_features(sdata) first (or pass "
                "features_key=...)."
            )
        if len(candidates) > 1:
            raise ValueError(f"Several feature sets for {image_key!r}: {candidates}. Pass features_key=... .")
        features_key_ = candidates[0]
    elif features_key_ not in sdata.images:
        raise KeyError(f"No features {features_key_!r}; feature elements of {image_key!r}: {candidates or 'none'}.")
    element = sdata.images[features_key_]
    mask_key = tissue_key(image_key)
    if mask_key not in sdata.labels:
        raise ValueError(f"No tissue mask {mask_key!r}: run histex.pp.extract_features(sdata) again.")
    # The first step of the stored transformation is the bin size in image pixels.
    seq = get_transformation(element, to_coordinate_system=next(iter(_sdata.element_transformations(element))))
    first = seq.transformations[0] if hasattr(seq, "transformations") else seq
    bin_px = float(np.asarray(first.scale)[0])
    data = np.asarray(element.data, dtype=np.float32)
    tissue = np.asarray(sdata.labels[mask_key].data) > 0
    return features_key_, BinFeatures(
        data=data, names=[str(c) for c in element.coords["c"].values], tissue=tissue, bin_px=bin_px
    )
