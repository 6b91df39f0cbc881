"""Tissue mask on the bin grid from the mean colour of each bin."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def tissue_mask(mean_rgb: np.ndarray, *, min_component_bins: int = 16) -> np.ndarray:
    """Which bins hold tissue.

    Stained tissue is darker and more saturated than the glass: the score of a bin is ``1 - min(R, G, B)``, split
    by Otsu's threshold; holes inside tissue (lumens, vessels) are filled and specks smaller than
    ``min_component_bins`` removed.

    Parameters
    ----------
    mean_rgb
        ``(3, rows, cols)`` mean colour per bin in [0, 1].

    Returns
    -------
    ``(rows, cols)`` boolean mask.
    """
    from skimage.filters import threshold_otsu

    score = 1.0 - mean_rgb.min(axis=0)
    if score.size == 0 or np.ptp(score) < 1e-6:
        return np.ones(score.shape, dtype=bool)
    mask = score > threshold_otsu(score)
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), border_value=0) | mask
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        small = sizes < min_component_bins
        small[0] = False
        mask[small[labels]] = False
    return mask
