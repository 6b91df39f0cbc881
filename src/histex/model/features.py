"""Image features made ready for the network: position channels and standardisation over tissue."""

from __future__ import annotations

import numpy as np


def with_position(features: np.ndarray) -> np.ndarray:
    """Append the normalised position of each bin (row / rows, col / cols) as two channels."""
    _, rows, cols = features.shape
    r, c = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    return np.concatenate([features, r[None], c[None]], axis=0).astype(np.float32)


def standardise(features: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per channel over the in-tissue bins (constant channels are only centred)."""
    values = features[:, tissue]
    mean = values.mean(axis=1)
    std = values.std(axis=1)
    std = np.where(std > 1e-8, std, 1.0)
    return ((features - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
