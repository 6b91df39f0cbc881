"""Image features made ready for the network: position channels and standardisation over tissue."""

from __future__ import annotations

import numpy as np


def positions(shape: tuple[int, int]) -> np.ndarray:
    """The normalised position of each bin, ``(2, rows, cols)``: row / rows and col / cols of its centre."""
    rows, cols = shape
    r, c = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    return np.stack([r, c]).astype(np.float32)


def standardised_with_position(features, tissue: np.ndarray) -> np.ndarray:
    """The features and the bins' positions (:func:`positions`) as channels, each standardised over the tissue bins.

    Zero mean and unit variance per channel over the in-tissue bins (constant channels are only centred), in one
    pass, one channel at a time.

    The result is the only full copy made: a whole slide's feature map (1,029 channels on 800 x 800 bins is 2.6 GB)
    is not concatenated, masked and rescaled in copies of itself. ``features`` may be lazy (dask), read a channel
    at a time.
    """
    n, rows, cols = features.shape
    out = np.empty((n + 2, rows, cols), dtype=np.float32)
    for i in range(n):
        _standardise_into(out[i], np.asarray(features[i], dtype=np.float32), tissue)
    position = positions((rows, cols))
    for i in range(2):
        _standardise_into(out[n + i], position[i], tissue)
    return out


def _standardise_into(out: np.ndarray, channel: np.ndarray, tissue: np.ndarray) -> None:
    values = channel[tissue].astype(np.float64)
    mean = values.mean()
    std = values.std()
    np.subtract(channel, np.float32(mean), out=out)
    if std > 1e-8:
        out /= np.float32(std)
