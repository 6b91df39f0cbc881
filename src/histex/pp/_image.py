"""Image arrays: reading RGB from an image element, resampling to a working resolution, tiling."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

logger = logging.getLogger("histex")


def rgb_uint8(image) -> np.ndarray:
    """An image element's full-resolution level as a ``(y, x, 3)`` uint8 array, converting with a log line."""
    n_channels = image.sizes["c"]
    if n_channels == 4:
        logger.info("The image has 4 channels; taking the first 3 as RGB (dropping alpha).")
        image = image.isel(c=slice(0, 3))
    elif n_channels != 3:
        raise ValueError(
            f"The image has {n_channels} channel(s); histex needs an RGB H&E image with 3 channels (c, y, x)."
        )
    arr = np.asarray(image.transpose("y", "x", "c").data)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        top = float(np.nanmax(arr)) if arr.size else 1.0
        scale = 255.0 if top <= 1.0 else 1.0
        logger.info("Converting a %s image to uint8 (scaled by %g).", arr.dtype, scale)
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    if arr.dtype == np.uint16:
        logger.info("Converting a uint16 image to uint8 (divided by 257).")
        return (arr // 257).astype(np.uint8)
    raise ValueError(f"Unsupported image dtype {arr.dtype}; give an RGB uint8 image.")


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample a ``(y, x, c)`` uint8 image by ``factor`` (output px per input px), keeping the pixel grid aligned.

    Output pixel ``j`` covers input pixels ``[j / factor, (j + 1) / factor)``; downsampling is anti-aliased.
    """
    if abs(factor - 1.0) < 1e-6:
        return image
    inv = 1.0 / factor
    if abs(inv - round(inv)) < 1e-6 and round(inv) > 1:  # an integer reduction: exact block means
        k = round(inv)
        h, w = (image.shape[0] // k) * k, (image.shape[1] // k) * k
        blocks = image[:h, :w].reshape(h // k, k, w // k, k, -1).astype(np.float32)
        return blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    out_shape = (round(image.shape[0] * factor), round(image.shape[1] * factor))
    out = np.empty((*out_shape, image.shape[2]), dtype=np.uint8)
    for ch in range(image.shape[2]):
        plane = image[..., ch].astype(np.float32)
        if factor < 1:
            plane = ndimage.gaussian_filter(plane, sigma=0.5 * (inv - 1))
        # output index o samples input index o / factor + (0.5 / factor - 0.5): pixel centres onto pixel centres
        ndimage.affine_transform(
            plane,
            [inv, inv],
            offset=0.5 * inv - 0.5,
            output_shape=out_shape,
            output=out[..., ch],
            order=1,
            mode="nearest",
        )
    return out


def iter_tiles(image: np.ndarray, tile: int, margin: int, pad_value: int = 255):
    """Yield ``(tile_row, tile_col, patch)`` over a ``(y, x, 3)`` image, each patch ``tile + 2 * margin`` px square,
    padded with ``pad_value`` (white, i.e. background) beyond the image."""
    n_ty = -(-image.shape[0] // tile)
    n_tx = -(-image.shape[1] // tile)
    padded = np.full((n_ty * tile + 2 * margin, n_tx * tile + 2 * margin, image.shape[2]), pad_value, np.uint8)
    padded[margin : margin + image.shape[0], margin : margin + image.shape[1]] = image
    for ty in range(n_ty):
        for tx in range(n_tx):
            y0, x0 = ty * tile, tx * tile
            yield ty, tx, padded[y0 : y0 + tile + 2 * margin, x0 : x0 + tile + 2 * margin]
