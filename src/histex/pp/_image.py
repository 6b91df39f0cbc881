"""Image elements as lazily read RGB sources, and resampling of in-memory arrays to a working resolution."""

from __future__ import annotations

import logging

import numpy as np

from histex._sdata import element_transformations, pyramid_levels
from histex.pp._tiling import ImageSource, resample_window, source_span

logger = logging.getLogger(__name__)


def _level_factor(level, level0) -> int | None:
    """How many level-0 pixels one pixel of a pyramid level spans, from the levels' transformations; ``None`` when
    that is not a whole number (such a level is not used: its pixels would not tile level 0's).
    """
    if level is level0:
        return 1
    t0, t = element_transformations(level0), element_transformations(level)
    common = sorted(t0.keys() & t.keys())
    if not common:
        return None
    a0 = np.asarray(t0[common[0]].to_affine_matrix(("y", "x"), ("y", "x")))
    a = np.asarray(t[common[0]].to_affine_matrix(("y", "x"), ("y", "x")))
    scale = np.diag(np.linalg.solve(a0[:2, :2], a[:2, :2]))  # the level's pixel in level-0 pixels
    d = round(float(scale[0]))
    ok = (
        d >= 1
        and np.allclose(scale, d, rtol=1e-6)
        and np.allclose(np.linalg.solve(a0[:2, :2], a[:2, 2] - a0[:2, 2]), 0)
    )
    return d if ok else None


def image_source(element, mpp: float) -> ImageSource:
    """A lazy RGB source for an image element (``DataArray`` or multiscale ``DataTree``), without reading pixels
    except, for float images, the coarsest level to find their range.

    Converts with a log line: RGBA (alpha dropped), uint16 (divided by 257), float (scaled to 0-255 when its values
    lie in [0, 1]); other channel counts and dtypes are errors.
    """
    levels = pyramid_levels(element)
    level0 = levels[0]
    n_channels = level0.sizes["c"]
    if n_channels == 4:
        logger.info("The image has 4 channels; taking the first 3 as RGB (dropping alpha).")
    elif n_channels != 3:
        raise ValueError(
            f"The image has {n_channels} channel(s); histex needs an RGB H&E image with 3 channels (c, y, x)."
        )
    dtype = np.dtype(level0.dtype)
    if dtype == np.uint8:
        scale = 1.0
    elif dtype == np.uint16:
        scale = 1.0 / 257.0
        logger.info("Converting a uint16 image to uint8 (divided by 257).")
    elif np.issubdtype(dtype, np.floating):
        import dask.array as da

        coarsest = da.asarray(levels[-1].isel(c=slice(0, 3)).data)
        top = float(da.nanmax(coarsest).compute()) if coarsest.size else 1.0  # chunk by chunk
        scale = 255.0 if top <= 1.0 else 1.0
        logger.info("Converting a %s image to uint8 (scaled by %g).", dtype, scale)
    else:
        raise ValueError(f"Unsupported image dtype {dtype}; give an RGB uint8 image.")
    arrays, factors = [], []
    for level in levels:
        d = _level_factor(level, level0)
        if d is not None:
            arrays.append(level.transpose("c", "y", "x").data)
            factors.append(d)
    return ImageSource(levels=arrays, factors=factors, mpp=float(mpp), scale=scale)


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample an in-memory ``(y, x, c)`` uint8 image by ``factor`` (output px per input px), keeping the pixel grid
    aligned: output pixel ``j`` covers input pixels ``[j / factor, (j + 1) / factor)``; downsampling is anti-aliased.
    """
    f = 1.0 / factor
    k = round(f)
    if abs(f - k) < 1e-6 and k >= 1:
        out_shape = (image.shape[0] // k, image.shape[1] // k)
    else:
        out_shape = (round(image.shape[0] * factor), round(image.shape[1] * factor))
    source = ImageSource(levels=[image.transpose(2, 0, 1)], factors=[1], mpp=1.0)
    (y0, y1), (x0, x1) = source_span(0, out_shape[0], f), source_span(0, out_shape[1], f)
    return resample_window(source.read(0, y0, y1, x0, x1), (y0, x0), f, (0, 0), out_shape)
