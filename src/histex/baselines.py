"""Baselines that place spot measurements onto bins without learning.

These are the non-learned comparisons of the pseudo-Visium benchmark (METHOD.md section 9): the measured spots
interpolated onto bins (nearest spot, piecewise-linear, piecewise-cubic) and a TESLA-like inverse-distance weighting
in a joint space of position and colour. :func:`spots_on_bins` evaluates any of them on exactly the bins and genes of a
:func:`histex.tl.super_resolve` table, so that they can be scored against the same ground truth.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.interpolate import CloughTocher2DInterpolator, LinearNDInterpolator, NearestNDInterpolator
from scipy.spatial import cKDTree

from histex import geometry

#: Methods of :func:`interpolate_spots`.
INTERPOLATION_METHODS: tuple[str, ...] = ("nearest", "linear", "cubic")
#: Methods of :func:`spots_on_bins`.
BASELINE_METHODS: tuple[str, ...] = (*INTERPOLATION_METHODS, "idw")
#: Channels of a features element that hold the mean colour of each bin (see :func:`histex.pp.extract_features`).
RGB_CHANNELS: tuple[str, str, str] = ("mean_r", "mean_g", "mean_b")


def interpolate_spots(
    spot_xy: np.ndarray, values: np.ndarray, query_xy: np.ndarray, *, method: str = "linear"
) -> np.ndarray:
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
        ``"linear"``: piecewise-linear on the Delaunay triangulation of the spots; ``"cubic"``: piecewise-cubic,
        C1-smooth Clough-Tocher interpolation on the same triangulation; ``"nearest"``: the nearest spot.
        ``"linear"`` and ``"cubic"`` take the nearest spot's value outside the convex hull of the spots.

    Returns
    -------
    numpy.ndarray
        ``(n_queries, n_genes)`` float32.

    Notes
    -----
    A cubic interpolant overshoots near sharp changes and can dip below zero where a gene is expressed next to spots
    that have none. Expression is non-negative, so ``"cubic"`` clips negative values to 0 (it does not clip
    overshoots above the data). ``"linear"`` and ``"nearest"`` are convex combinations of the spot values and need no
    clipping.
    """
    if method not in INTERPOLATION_METHODS:
        raise ValueError(f"method must be one of {list(INTERPOLATION_METHODS)}, got {method!r}.")
    spot_xy = np.asarray(spot_xy, dtype=float)
    values = np.asarray(values, dtype=np.float64)
    nearest = NearestNDInterpolator(spot_xy, values)(query_xy)
    if method == "nearest":
        return nearest.astype(np.float32)
    if method == "linear":
        out = LinearNDInterpolator(spot_xy, values)(query_xy)
        out = np.where(np.isnan(out), nearest, out)
        return out.astype(np.float32)
    out = CloughTocher2DInterpolator(spot_xy, values)(query_xy)
    out = np.where(np.isnan(out), nearest, out)
    return np.maximum(out, 0.0).astype(np.float32)


def idw_spots(
    spot_xy: np.ndarray,
    spot_colour: np.ndarray,
    values: np.ndarray,
    query_xy: np.ndarray,
    query_colour: np.ndarray,
    *,
    k: int = 10,
    power: float = 2.0,
    colour_weight: float = 1.0,
    pitch: float | None = None,
) -> np.ndarray:
    """Inverse-distance weighting of spots in a joint space of position and colour (TESLA-like).

    Each query (a bin) gets the weighted mean of the values of its ``k`` nearest spots, where "nearest" and the
    weights ``1 / d ** power`` use the distance ``d`` in the space ``(x, y, colour)``: a spot whose disk looks like the
    bin counts as closer than one of another colour at the same distance. This is the imputation of TESLA (Hu et
    al., 2023; 10 neighbours, power 2), with the colour scaled to the spot lattice instead of to the extent of the
    section (see Notes).

    Parameters
    ----------
    spot_xy
        ``(n_spots, 2)`` spot centres.
    spot_colour
        ``(n_spots, n_channels)`` colour of each spot, e.g. the mean RGB over the bins of its disk (a 1-D array is one
        channel).
    values
        ``(n_spots, n_genes)`` values per spot.
    query_xy
        ``(n_queries, 2)`` locations, in the units of ``spot_xy``.
    query_colour
        ``(n_queries, n_channels)`` colour at each query, e.g. the mean RGB of the bin, in the units of
        ``spot_colour``.
    k
        Number of neighbouring spots averaged (fewer when there are fewer spots).
    power
        Exponent of the inverse distance; 0 gives the plain mean of the ``k`` neighbours.
    colour_weight
        How far a colour difference reaches, in spot pitches (see Notes); 0 ignores colour and gives plain spatial
        inverse-distance weighting.
    pitch
        Spot centre-to-centre distance in the units of ``spot_xy``; by default the median nearest-neighbour distance
        of the spots (:func:`histex.geometry.lattice_pitch`).

    Returns
    -------
    numpy.ndarray
        ``(n_queries, n_genes)`` float32.

    Notes
    -----
    Colour scaling. All colour channels are multiplied by one factor, ``colour_weight * pitch / s``, where ``s`` is
    the spread of the spot colours: the root of the summed variances of the channels over the spots (the root mean
    square distance of a spot's colour from the mean colour). A typical colour difference between spots then counts
    as ``colour_weight`` spot pitches of distance, whatever the units of the colour. One factor for all channels keeps
    the colour geometry: a channel that varies little over the section (e.g. only by noise) weighs little, where
    standardising each channel would amplify its noise to the weight of the informative ones. Channels that do not
    vary over the spots cannot tell spots apart and are left out. TESLA instead scales its single colour axis to the
    standard deviation of the spot coordinates over the whole section, which lets colour outweigh position more the
    larger the section.

    A query that coincides with one or more spots in the joint space (distance exactly 0) gets the mean of those
    spots. Weights are computed relative to the nearest neighbour, so near-coincident queries do not overflow and
    the result is continuous. With non-negative values the result is non-negative (a convex combination).
    """
    spot_xy = _points(spot_xy, "spot_xy")
    query_xy = _points(query_xy, "query_xy")
    n_spots, n_queries = len(spot_xy), len(query_xy)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) != n_spots:
        raise ValueError(f"values must be (n_spots, n_genes) = ({n_spots}, ...), got shape {values.shape}.")
    spot_colour = _colours(spot_colour, n_spots, "spot_colour")
    query_colour = _colours(query_colour, n_queries, "query_colour")
    if spot_colour.shape[1] != query_colour.shape[1]:
        raise ValueError(
            f"spot_colour has {spot_colour.shape[1]} channels but query_colour has {query_colour.shape[1]}."
        )
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if not np.isfinite(power) or power < 0:
        raise ValueError(f"power must be a non-negative number, got {power!r}.")
    if not np.isfinite(colour_weight) or colour_weight < 0:
        raise ValueError(f"colour_weight must be a non-negative number, got {colour_weight!r}.")
    if n_spots == 0:
        raise ValueError("No spots to interpolate from.")
    if n_queries == 0:
        return np.zeros((0, values.shape[1]), dtype=np.float32)
    if pitch is None:
        pitch = geometry.lattice_pitch(spot_xy)[0] if n_spots > 1 else float("nan")
    if not np.isfinite(pitch) or pitch <= 0:
        raise ValueError(f"The spot pitch must be a positive number, got {pitch!r}; pass pitch=... .")

    # Colour in units of its spread over the spots (root of the summed per-channel variances), times the pitch.
    kept = spot_colour.std(axis=0) > 0 if colour_weight > 0 else np.zeros(spot_colour.shape[1], dtype=bool)
    spread = float(np.sqrt(spot_colour[:, kept].var(axis=0).sum())) if kept.any() else 0.0
    scale = colour_weight * pitch / spread if spread > 0 else 0.0
    spot_pts = np.hstack([spot_xy, spot_colour[:, kept] * scale])
    query_pts = np.hstack([query_xy, query_colour[:, kept] * scale])

    k = min(int(k), n_spots)
    dist, idx = cKDTree(spot_pts).query(query_pts, k=k)
    dist, idx = dist.reshape(n_queries, k), idx.reshape(n_queries, k)
    hit = dist == 0
    any_hit = hit.any(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # (d_min / d) ** power: the nearest spot weighs 1, the others less; no overflow as d_min approaches 0.
        weights = (dist[:, :1] / dist) ** power
    weights[any_hit] = hit[any_hit]
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = sp.csr_matrix(
        (weights.ravel(), idx.ravel(), np.arange(0, n_queries * k + 1, k)), shape=(n_queries, n_spots)
    )
    return np.asarray(matrix @ values, dtype=np.float32)


def spots_on_bins(
    sdata,
    table_key: str = "histex",
    *,
    method: str = "linear",
    k: int = 10,
    power: float = 2.0,
    colour_weight: float = 1.0,
):
    """Place the measured spots onto the bins of a ``super_resolve`` table, as a baseline to compare with.

    Spot counts (the layer the table was fitted on) are divided by the number of bins in a spot, so the result is
    in counts per bin like the table.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve`.
    table_key
        The table whose bins and genes to interpolate onto.
    method
        ``"nearest"``, ``"linear"`` or ``"cubic"``: interpolation between spot centres, see
        :func:`interpolate_spots`. ``"idw"``: inverse-distance weighting in position and colour, see
        :func:`idw_spots`; the colour of a bin is its mean RGB (the ``mean_r``, ``mean_g``, ``mean_b`` channels of the
        features the table was computed from), the colour of a spot the mean of those over the bins whose centres lie
        in its disk (the ``spot_diameter_um`` capture area the table was fitted with, 55 µm by default; all bins of
        the grid, tissue or not, as the spot measures them).
    k, power, colour_weight
        Parameters of ``"idw"``, see :func:`idw_spots`; unused by the other methods.

    Returns
    -------
    anndata.AnnData
        The table's bins (``obs["array_row"]``, ``obs["array_col"]``) and genes; ``X`` float32 counts per bin.
    """
    import anndata as ad

    from histex import _sdata

    if method not in BASELINE_METHODS:
        raise ValueError(f"method must be one of {list(BASELINE_METHODS)}, got {method!r}.")
    table = sdata.tables[table_key]
    meta = table.uns["histex"]["data"]
    spots = _sdata.read_spots(sdata, meta["spots_key"], meta["table_key"], meta["image_key"], meta["coordinate_system"])
    layer = _sdata.fitted_layer(table)  # the spot values the table was fitted on
    counts = spots.table[:, table.var_names]
    counts = counts.layers[layer] if layer is not None else counts.X
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    per_bin = counts / float(meta["bins_per_spot"])
    query_xy = np.asarray(table.obsm["spatial"])
    if method == "idw":
        bin_rgb, spot_rgb = _bin_and_spot_colours(sdata, table, meta, spots.xy_px)
        values = idw_spots(
            spots.xy_px, spot_rgb, per_bin, query_xy, bin_rgb, k=k, power=power, colour_weight=colour_weight
        )
    else:
        values = interpolate_spots(spots.xy_px, per_bin, query_xy, method=method)
    out = ad.AnnData(values, obs=table.obs[["array_row", "array_col"]].copy())
    out.var_names = table.var_names
    return out


def _points(xy, name: str) -> np.ndarray:
    xy = np.asarray(xy, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name} must be (n, 2) (x, y), got shape {xy.shape}.")
    if not np.isfinite(xy).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return xy


def _colours(colour, n: int, name: str) -> np.ndarray:
    colour = np.asarray(colour, dtype=float)
    colour = colour.reshape(-1, 1) if colour.ndim == 1 else colour
    if colour.ndim != 2 or len(colour) != n:
        raise ValueError(f"{name} must be ({n}, n_channels), got shape {colour.shape}.")
    if not np.isfinite(colour).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return colour


def _bin_and_spot_colours(sdata, table, meta, spot_xy_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of each bin of the table, and of the bins inside each spot's disk (``(n, 3)`` each)."""
    from histex import _sdata

    features_key = str(meta["features_key"])
    if features_key not in sdata.images:
        raise KeyError(
            f"The features {features_key!r} that table was computed from are no longer in the SpatialData; the "
            "'idw' baseline needs their mean colour channels. Run histex.pp.extract_features again."
        )
    element = _sdata.image_array(sdata, features_key)
    channels = [str(c) for c in element.coords["c"].values]
    missing = [c for c in RGB_CHANNELS if c not in channels]
    if missing:
        raise ValueError(f"Features {features_key!r} have no channels {missing}; the 'idw' baseline needs them.")
    rgb = np.asarray(element.sel(c=list(RGB_CHANNELS)).data, dtype=np.float64)  # (3, rows, cols)
    n_rows, n_cols = rgb.shape[1:]
    if tuple(int(s) for s in np.asarray(meta["grid_shape"]).ravel()) != (n_rows, n_cols):
        raise ValueError(
            f"Features {features_key!r} are {n_rows} x {n_cols} bins, but the table was fitted on a "
            f"{tuple(np.asarray(meta['grid_shape']))} grid: were they recomputed?"
        )
    bin_rgb = rgb[:, table.obs["array_row"].to_numpy(dtype=np.int64), table.obs["array_col"].to_numpy(dtype=np.int64)]

    bin_px = float(meta["bin_px"])
    if "radius_bins" in meta:
        radius = float(meta["radius_bins"])
    else:  # tables written before radius_bins was stored: the 55 µm Visium capture area
        radius = geometry.VISIUM_SPOT_DIAMETER_UM / 2 / (bin_px * float(meta["mpp"]))
    size = geometry.window_size(radius)
    anchors, masks = geometry.disk_masks(spot_xy_px[:, ::-1] / bin_px, radius, size)
    rc = anchors[:, None, :] + geometry.window_offsets(size)[None]
    masks &= (rc[..., 0] >= 0) & (rc[..., 0] < n_rows) & (rc[..., 1] >= 0) & (rc[..., 1] < n_cols)
    rr, cc = np.clip(rc[..., 0], 0, n_rows - 1), np.clip(rc[..., 1], 0, n_cols - 1)
    n_in = masks.sum(axis=1)
    spot_rgb = (rgb[:, rr, cc] * masks).sum(axis=-1) / np.maximum(n_in, 1)  # (3, n_spots)
    # A spot with no bin of the grid in its disk (at the very edge of the image) takes the colour of its nearest bin.
    empty = n_in == 0
    if empty.any():
        ar, ac = np.clip(anchors[empty, 0], 0, n_rows - 1), np.clip(anchors[empty, 1], 0, n_cols - 1)
        spot_rgb[:, empty] = rgb[:, ar, ac]
    return bin_rgb.T, spot_rgb.T
