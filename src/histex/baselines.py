"""Baselines that place spot measurements onto bins without learning."""

from __future__ import annotations

import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator


def interpolate_spots(spot_xy: np.ndarray, values: np.ndarray, query_xy: np.ndarray, *, method: str = "linear"):
    """Interpolate spot values (``(n_spots, n_genes)``) at query locations (e.g. bin centres).

    ``method="linear"`` is piecewise-linear on the Delaunay triangulation of the spots, with the nearest spot's
    value outside their convex hull; ``"nearest"`` takes the nearest spot.
    """
    spot_xy = np.asarray(spot_xy, dtype=float)
    values = np.asarray(values, dtype=np.float64)
    nearest = NearestNDInterpolator(spot_xy, values)(query_xy)
    if method == "nearest":
        return nearest.astype(np.float32)
    if method != "linear":
        raise ValueError(f"method must be 'linear' or 'nearest', got {method!r}.")
    out = LinearNDInterpolator(spot_xy, values)(query_xy)
    out = np.where(np.isnan(out), nearest, out)
    return out.astype(np.float32)
