"""Baselines that place spot measurements onto bins without learning."""

from __future__ import annotations

import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator


def interpolate_spots(spot_xy: np.ndarray, values: np.ndarray, query_xy: np.ndarray, *, method: str = "linear"):
    """Interpolate spot values at query locations (e.g. bin centres).

    Parameters
    ----------
    spot_xy
        ``(n_spots, 2)`` spot centres.
    values
        ``(n_spots, n_genes)`` values per spot.
    query_xy
        ``(n_queries, 2)`` locations, in the units of ``spot_xy``.
    method
        ``"linear"``: piecewise-linear on the Delaunay triangulation of the spots, with the nearest spot's value
        outside their convex hull; ``"nearest"``: the nearest spot.

    Returns
    -------
    numpy.ndarray
        ``(n_queries, n_genes)`` float32.
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


def spots_on_bins(sdata, table_key: str = "histex", *, method: str = "linear"):
    """Interpolate the measured spots onto the bins of a ``super_resolve`` table, as a baseline to compare with.

    Spot counts are divided by the number of bins in a spot, so the result is in counts per bin like the table.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve`.
    table_key
        The table whose bins and genes to interpolate onto.
    method
        ``"linear"`` or ``"nearest"``, see :func:`interpolate_spots`.

    Returns
    -------
    anndata.AnnData
        The table's bins (``obs["array_row"]``, ``obs["array_col"]``) and genes.
    """
    import anndata as ad
    import scipy.sparse as sp

    from histex import _sdata

    table = sdata.tables[table_key]
    meta = table.uns["histex"]["data"]
    spots = _sdata.read_spots(sdata, meta["spots_key"], meta["table_key"], meta["image_key"], meta["coordinate_system"])
    counts = spots.table[:, table.var_names].X
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    values = interpolate_spots(
        spots.xy_px, counts / float(meta["bins_per_spot"]), np.asarray(table.obsm["spatial"]), method=method
    )
    out = ad.AnnData(values, obs=table.obs[["array_row", "array_col"]].copy())
    out.var_names = table.var_names
    return out
