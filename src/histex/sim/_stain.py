"""Stain strength of an H&E image, changed by colour deconvolution (Ruifrok and Johnston's H&E vectors)."""

from __future__ import annotations

import numbers

import numpy as np

_STRIP_PX = 2**20  # pixels per strip: bounds the float32 temporaries to a few tens of MB at any image size


def vary_stain(image: np.ndarray, *, haematoxylin: float = 1.0, eosin: float = 1.0) -> np.ndarray:
    """Scale the amount of haematoxylin and of eosin in an RGB H&E image.

    Each pixel is unmixed in optical density (Beer-Lambert, white = 255) into haematoxylin, eosin and a residual
    with the Ruifrok-Johnston vectors of :func:`skimage.color.rgb2hed`; the concentration of each stain, where it
    is positive, is multiplied by its factor and the pixel is mixed back. A stronger stain makes its pixels darker:
    nuclei bluer-purple with more haematoxylin, cytoplasm and stroma pinker with more eosin.

    Parameters
    ----------
    image
        ``(y, x, 3)`` uint8 RGB, as :func:`histex.sim.paint_he` returns; anything sliceable by rows (a NumPy
        memmap, a zarr array) is read a strip of rows at a time.
    haematoxylin, eosin
        Factors on each stain's concentration, positive: 1 keeps it, 1.2 is 20% more stain, 0.8 20% less.

    Returns
    -------
    numpy.ndarray
        ``(y, x, 3)`` uint8, a new array. With both factors 1 it equals ``image``; pure white (255, 255, 255)
        stays white, and a pixel without a stain is not changed by that stain's factor.

    Notes
    -----
    The image is processed in strips of rows (about a million pixels each), so memory is the output plus some
    tens of MB at any image size. The new intensity is computed as ``I * exp(-dOD)``, the change of optical
    density, so that unchanged pixels (and black ones) come back exactly rather than through a log and an exp.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    check_factor("haematoxylin", haematoxylin)
    check_factor("eosin", eosin)
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        image = np.asarray(image)
    if len(image.shape) != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (y, x, 3) RGB, got shape {tuple(image.shape)}; for (3, y, x) move the axis.")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}.")
    out = np.empty(image.shape, dtype=np.uint8)
    if haematoxylin == 1 and eosin == 1:
        out[...] = image
        return out

    unmix = hed_from_rgb[:, :2].astype(np.float32)  # OD (row vector) -> haematoxylin, eosin concentrations
    # Change of optical density per unit of each stain's concentration, for the factors asked.
    change = np.stack([(haematoxylin - 1) * rgb_from_hed[0], (eosin - 1) * rgb_from_hed[1]]).astype(np.float32)
    height, width = image.shape[:2]
    step = max(1, _STRIP_PX // max(width, 1))
    log_white = np.float32(np.log(255.0))
    for r0 in range(0, height, step):
        strip = np.asarray(image[r0 : r0 + step], dtype=np.float32)
        od = log_white - np.log(np.maximum(strip, 1.0))  # black is clamped to 1 grey level
        conc = np.maximum(od @ unmix, 0.0)  # a stain's negative part (noise, other stains) is left alone
        strip *= np.exp(-(conc @ change))
        np.clip(np.rint(strip, out=strip), 0, 255, out=strip)
        out[r0 : r0 + step] = strip
    return out


def check_factor(name: str, factor) -> None:
    """Raise unless ``factor`` is a finite positive number."""
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not (np.isfinite(factor) and factor > 0):
        raise ValueError(
            f"{name} must be a positive number (1 keeps the stain, 1.2 is 20% more, 0.8 20% less), got {factor!r}."
        )
