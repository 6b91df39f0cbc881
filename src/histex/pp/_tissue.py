"""Tissue mask on the bin grid from the mean colour of each bin."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Otsu's split of the saturations is trusted only when it explains this share of their variance (two clear modes,
# glass and stained tissue, give 0.85 to 0.9 on real slides; one broad mode, as in a section that is all tissue,
# gives 0.65 and a flat distribution 0.75).
_BIMODAL_SEPARATION = 0.8
# Glass is the brightest unsaturated thing on a slide: an unsaturated bin much darker than that (ink, dust,
# pigment, a fold) is not glass.
_MIN_BACKGROUND_BRIGHTNESS = 0.8


def tissue_mask(
    mean_rgb: np.ndarray,
    *,
    min_component_bins: int = 16,
    max_background_saturation: float = 0.15,
    max_hole_bins: int | None = None,
) -> np.ndarray:
    """Which bins hold tissue.

    Glass is unsaturated and bright; stained tissue is saturated. A bin is background only if its saturation
    (``(max - min) / max`` of its mean colour) is below a threshold and it is bright, at least 0.8 times the
    brightness of the unsaturated bins' 90th percentile. The threshold is ``max_background_saturation``, lowered
    to Otsu's threshold of the saturations when these are clearly bimodal (glass and pale tissue); a section that
    is all tissue is never split in two, as Otsu alone would do. Holes inside tissue (lumens, vessels, fat) are
    then filled and specks smaller than ``min_component_bins`` removed.

    Parameters
    ----------
    mean_rgb
        ``(3, rows, cols)`` mean colour per bin in [0, 1].
    min_component_bins
        Tissue components with fewer bins are removed.
    max_background_saturation
        No bin more saturated than this is background. Glass is below 0.05 on the slides tried; tissue mostly
        above 0.2.
    max_hole_bins
        Only holes up to this many bins are filled; ``None`` fills every enclosed hole.

    Returns
    -------
    ``(rows, cols)`` boolean mask.
    """
    from skimage.filters import threshold_otsu

    rgb = np.asarray(mean_rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"mean_rgb must have shape (3, rows, cols), got {rgb.shape}.")
    if rgb.shape[1] == 0 or rgb.shape[2] == 0:
        return np.zeros(rgb.shape[1:], dtype=bool)
    value = rgb.max(axis=0)
    saturation = (value - rgb.min(axis=0)) / np.maximum(value, 1e-6)

    threshold = max_background_saturation
    if np.ptp(saturation) > 1e-6:
        otsu = threshold_otsu(saturation)
        low = saturation <= otsu
        w0 = low.mean()
        separation = w0 * (1 - w0) * (saturation[low].mean() - saturation[~low].mean()) ** 2 / saturation.var()
        if separation >= _BIMODAL_SEPARATION:
            threshold = min(threshold, otsu)
    unsaturated = saturation < threshold
    background = np.zeros_like(unsaturated)
    if unsaturated.any():
        glass_value = np.percentile(value[unsaturated], 90)
        background = unsaturated & (value >= _MIN_BACKGROUND_BRIGHTNESS * glass_value)

    mask = ~background
    # Bridge one-bin gaps (loose tissue), so that the holes it encloses are filled; keep tissue at the border.
    mask |= ndimage.binary_closing(mask, structure=np.ones((3, 3)), border_value=0)
    if max_hole_bins is None:
        mask = ndimage.binary_fill_holes(mask)
    else:
        holes, n = ndimage.label(~mask)
        if n:
            sizes = np.bincount(holes.ravel(), minlength=n + 1)
            touching = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            small = sizes <= max_hole_bins
            small[0] = False
            small[touching] = False
            mask[small[holes]] = True
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        small = sizes < min_component_bins
        small[0] = False
        mask[small[labels]] = False
    return mask
