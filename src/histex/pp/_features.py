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


def tissue_key(features_key_: str) -> str:
    """The tissue mask that goes with a features element, on the same grid."""
    return features_key_.removesuffix(_sdata.FEATURES_SUFFIX) + "_tissue"


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
    ``sdata.labels["{image_key}_{model}_tissue"]`` holds the tissue mask on the same grid (1 = tissue).
    """
    start = time.perf_counter()
    encoder = get_encoder(model)
    if mpp is None:
        section = _sdata.read_section(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
        image_key, mpp = section.image_key, section.mpp
        logger.info("Pixel size %.4f µm/px, from the %s.", mpp, section.mpp_source)
    else:
        image_key = _sdata.find_image_key(sdata, image_key)
        mpp = _sdata.check_mpp(mpp)
    image_el = _sdata.image_array(sdata, image_key)
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
    _write_grid_elements(sdata, key, tissue_key(key), data, names, mask, transformations)
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


def _grid_bin_px(sdata, key: str, image_key: str, coordinate_system: str) -> float | None:
    """Bin edge in image pixels if element ``key`` is a bin grid on the image (a pure scale, aligned to the image's
    origin, in the shared coordinate system), else None."""
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
    return features_key_, BinFeatures(
        data=data, names=[str(c) for c in element.coords["c"].values], tissue=tissue, bin_px=on_image[features_key_]
    )
