"""Accuracy of predicted bins against ground truth on the same bin grid.

The metrics of the pseudo-Visium protocol (ground truth summed into spots, then predicted back) are computed per
gene over the in-tissue bins: Pearson correlation (:func:`pearson_per_gene`), SSIM on the masked map
(:func:`ssim_per_gene`) and RMSE after min–max scaling of each map (:func:`rmse_per_gene`). :func:`score` computes all three from two bin tables and
:func:`summarise` averages them over genes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import ndimage


def pearson_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column (gene) of ``pred`` with the same column of ``truth``, over rows (bins).

    Parameters
    ----------
    pred, truth
        ``(n_bins, n_genes)`` arrays of the same shape.

    Returns
    -------
    numpy.ndarray
        ``(n_genes,)`` correlations; NaN for a gene that is constant in either map (no defined correlation).
    """
    pred, truth = _same_shape(pred, truth)
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(axis=0) / denom
    return np.where(denom > 0, r, np.nan)


def align_bins(
    pred_table: AnnData,
    truth_table: AnnData,
    *,
    genes: list[str] | None = None,
    truth_layer: str | None = None,
    in_tissue_key: str = "in_tissue",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Matrices of predicted and true values on the bins and genes that both tables hold.

    Parameters
    ----------
    pred_table
        Predicted bins, e.g. the table of :func:`histex.tl.super_resolve`.
    truth_table
        Ground-truth bins on the same grid, e.g. ``tables["truth"]`` of :func:`histex.datasets.toy`.
    genes
        Genes to compare; default all genes both tables hold.
    truth_layer
        Layer of the truth to compare with; default ``X``.
    in_tissue_key
        Boolean column of ``truth_table.obs``; when present, only its in-tissue bins are kept.

    Returns
    -------
    pred, truth : numpy.ndarray
        Dense ``(n_bins, n_genes)`` values on the shared bins, matched by ``obs["array_row"]`` and
        ``obs["array_col"]``.
    genes : list of str
        The gene names of the columns.
    """
    p, t, genes, _, _ = _align_bins(
        pred_table, truth_table, genes=genes, truth_layer=truth_layer, in_tissue_key=in_tissue_key
    )
    return p, t, genes


def _align_bins(
    pred_table: AnnData,
    truth_table: AnnData,
    *,
    genes: list[str] | None,
    truth_layer: str | None,
    in_tissue_key: str,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """:func:`align_bins`, plus the ``array_row`` and ``array_col`` of the shared bins."""
    genes = list(pred_table.var_names.intersection(truth_table.var_names) if genes is None else genes)
    if not genes:
        raise ValueError("The prediction and the truth share no genes.")
    truth_obs = truth_table.obs
    keep = truth_obs[in_tissue_key].to_numpy(bool) if in_tissue_key in truth_obs else np.ones(len(truth_obs), bool)
    key_t = pd.MultiIndex.from_arrays([truth_obs["array_row"].to_numpy(), truth_obs["array_col"].to_numpy()])
    key_p = pd.MultiIndex.from_arrays([pred_table.obs["array_row"].to_numpy(), pred_table.obs["array_col"].to_numpy()])
    pos = key_t.get_indexer(key_p)
    both = np.flatnonzero((pos >= 0) & np.where(pos >= 0, keep[np.maximum(pos, 0)], False))
    if len(both) == 0:
        raise ValueError("The prediction and the truth share no in-tissue bins.")
    p = _dense(pred_table[both, genes].X)
    truth_rows = truth_table[pos[both], genes]
    t = _dense(truth_rows.layers[truth_layer] if truth_layer else truth_rows.X)
    rows = truth_obs["array_row"].to_numpy()[pos[both]]
    cols = truth_obs["array_col"].to_numpy()[pos[both]]
    return p, t, genes, rows, cols


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def mean_pearson(pred_table: AnnData, truth_table: AnnData, **kwargs) -> float:
    """Mean over genes of the per-gene Pearson correlation on the shared in-tissue bins (NaN genes skipped).

    Parameters
    ----------
    pred_table, truth_table
        Predicted and ground-truth bin tables on the same grid.
    **kwargs
        Passed to :func:`align_bins` (``genes``, ``truth_layer``, ``in_tissue_key``).

    Returns
    -------
    float
        The mean correlation.
    """
    p, t, _ = align_bins(pred_table, truth_table, **kwargs)
    return float(np.nanmean(pearson_per_gene(p, t)))


def tile_artefact(features: np.ndarray, period: int, mask: np.ndarray | None = None) -> float:
    """How much of a feature map follows the tile grid: the share of each channel's variance explained by the
    position of a bin within its tile (``row % period``, ``col % period``), averaged over channels.

    A map free of tile-border effects scores near the sampling floor (about ``period**2 / n_bins``); a map whose
    values depend on where the tile borders fall scores higher.

    Parameters
    ----------
    features
        ``(channels, rows, cols)`` feature map on the bin grid.
    period
        Tile edge in bins.
    mask
        ``(rows, cols)`` bins to use (e.g. tissue); all by default.
    """
    _, rows, cols = features.shape
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    keep = np.ones((rows, cols), bool) if mask is None else np.asarray(mask, bool)
    phase = ((rr % period) * period + (cc % period))[keep]
    values = features[:, keep].astype(np.float64)
    counts = np.bincount(phase, minlength=period * period)
    used = counts > 0
    shares = []
    for v in values:
        total = v.var()
        if total <= 0:
            continue
        means = np.bincount(phase, weights=v, minlength=period * period)[used] / counts[used]
        between = np.average((means - v.mean()) ** 2, weights=counts[used])
        shares.append(between / total)
    return float(np.mean(shares)) if shares else 0.0


def _same_shape(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``truth`` as float64 arrays, checked to have the same shape."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth differ in shape: {pred.shape} vs {truth.shape}.")
    return pred, truth


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``truth`` as float64 ``(n_bins, n_genes)`` arrays of the same shape."""
    pred, truth = _same_shape(pred, truth)
    if pred.ndim != 2:
        raise ValueError(f"pred and truth must be (n_bins, n_genes) arrays, not {pred.ndim}-D.")
    return pred, truth


def _minmax(x: np.ndarray) -> np.ndarray:
    """Each column of a non-empty ``x`` scaled to ``[0, 1]`` over the rows; a constant column becomes 0."""
    lo = x.min(axis=0)
    span = x.max(axis=0) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (x - lo) / safe, 0.0)


def pearson_per_bin(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson correlation across genes of each row (bin) of ``pred`` with the same row of ``truth``.

    Values are used as given (no scaling), so the correlation is dominated by the genes with the highest
    expression; scale or log-transform the columns first to weigh genes equally.

    Parameters
    ----------
    pred, truth
        ``(n_bins, n_genes)`` arrays of the same shape.

    Returns
    -------
    numpy.ndarray
        ``(n_bins,)`` correlations; NaN for a bin whose values are equal for all genes in either array.
    """
    pred, truth = _pair(pred, truth)
    return pearson_per_gene(pred.T, truth.T)


def rmse_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Root-mean-square error of each gene after min–max scaling of each map to ``[0, 1]``.

    ``pred`` and ``truth`` are scaled separately, each column over its own rows (bins), as in the paper; the
    error therefore measures the shape of the map, not its level: ``a * x + b`` with ``a > 0`` scores 0 against
    ``x``. A constant column (no range) is scaled to 0 everywhere, so a constant prediction scores the RMS of the
    scaled truth, and two constant maps score 0.

    Parameters
    ----------
    pred, truth
        ``(n_bins, n_genes)`` arrays of the same shape, e.g. the in-tissue bins of :func:`align_bins`.

    Returns
    -------
    numpy.ndarray
        ``(n_genes,)`` errors in ``[0, 1]``; NaN for every gene when there are no bins.
    """
    pred, truth = _pair(pred, truth)
    if len(pred) == 0:
        return np.full(pred.shape[1], np.nan)
    return np.sqrt(np.mean((_minmax(pred) - _minmax(truth)) ** 2, axis=0))


def ssim_per_gene(
    pred: np.ndarray,
    truth: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    window: int = 7,
    sigma: float | None = None,
    min_support: float = 0.5,
) -> np.ndarray:
    """Structural similarity (SSIM) of each gene's map on the bin grid, computed on the masked map.

    Each gene's values are placed on the grid at ``(rows, cols)``. Only in-tissue bins (the bins given, less those
    that ``mask`` leaves out) enter any statistic; grid cells without an in-tissue bin are treated as missing, not
    as zeros. Filling the background with zeros in both maps would count every background window as a perfect
    match (SSIM 1) and inflate the score.

    The steps, per gene:

    1. Both maps are min–max scaled to ``[0, 1]`` over the in-tissue bins, each map separately (as the paper scales
       maps), so that the dynamic range is ``L = 1``; a constant map is scaled to 0 everywhere.
    2. Local means, variances and the covariance are weighted averages over a window with normalised masked
       filtering: ``E_w[z] = filter(z * m) / filter(m)`` with ``m`` the in-tissue indicator, so each window's
       statistics use only its in-tissue bins. Variances and covariance are the (biased) weighted moments
       ``E_w[x y] - E_w[x] E_w[y]``.
    3. The SSIM index of Wang et al. (2004) at each bin,
       ``(2 mu_x mu_y + C1) (2 cov_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (var_x + var_y + C2))`` with
       ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``.
    4. The mean of the index over the in-tissue bins whose window has at least ``min_support`` of its weight in
       tissue (bins near the tissue edge with too few neighbours are left out).

    Parameters
    ----------
    pred, truth
        ``(n_bins, n_genes)`` arrays of the same shape, one row per bin.
    rows, cols
        ``(n_bins,)`` integer grid positions of the bins (``obs["array_row"]``, ``obs["array_col"]``); each
        position at most once.
    mask
        ``(n_bins,)`` booleans, True for in-tissue bins; default all bins given. Bins outside the mask are ignored,
        as if they had not been given.
    window
        Odd edge, in bins, of the square window (uniform weights, as :func:`skimage.metrics.structural_similarity`
        by default), or of the truncation of the Gaussian window when ``sigma`` is set.
    sigma
        Standard deviation, in bins, of a Gaussian window (Wang et al. use 1.5); default a uniform window.
    min_support
        Least share, in ``[0, 1]``, of a bin's window weight that must lie in tissue for the bin to be averaged.
        1 keeps only bins whose whole window is in tissue.

    Returns
    -------
    numpy.ndarray
        ``(n_genes,)`` mean SSIM in ``[-1, 1]`` (1 for identical maps up to a positive affine transform); NaN for
        every gene when no in-tissue bin has enough support.

    Notes
    -----
    On a full rectangular grid of maps that already span ``[0, 1]``, with ``min_support=1``, the result equals
    :func:`skimage.metrics.structural_similarity` with ``data_range=1`` and ``use_sample_covariance=False``
    (``window`` = its ``win_size``; with ``sigma=1.5`` and ``gaussian_weights=True``, ``window=11``).
    """
    pred, truth = _pair(pred, truth)
    n_bins, n_genes = pred.shape
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if rows.shape != (n_bins,) or cols.shape != (n_bins,):
        raise ValueError(f"rows and cols must have shape ({n_bins},), one entry per bin: {rows.shape}, {cols.shape}.")
    if not (np.array_equal(rows, np.round(rows)) and np.array_equal(cols, np.round(cols))):
        raise ValueError("rows and cols must be integer grid positions.")
    keep = np.ones(n_bins, bool) if mask is None else np.asarray(mask)
    if keep.shape != (n_bins,):
        raise ValueError(f"mask must have shape ({n_bins},), one entry per bin, not {keep.shape}.")
    keep = keep.astype(bool)
    if not (isinstance(window, int | np.integer) and window >= 1 and window % 2 == 1):
        raise ValueError(f"window must be an odd positive integer, not {window!r}.")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be positive, not {sigma!r}.")
    if not 0 <= min_support <= 1:
        raise ValueError(f"min_support must lie in [0, 1], not {min_support!r}.")
    if not keep.any():
        return np.full(n_genes, np.nan)

    r = rows[keep].astype(np.int64)
    c = cols[keep].astype(np.int64)
    r -= r.min()
    c -= c.min()
    shape = (int(r.max()) + 1, int(c.max()) + 1)
    if len(np.unique(r * shape[1] + c)) != len(r):
        raise ValueError("Some bins share a grid position (rows, cols).")

    radius = window // 2
    if sigma is None:

        def smooth(z: np.ndarray) -> np.ndarray:
            return ndimage.uniform_filter(z, size=window, mode="constant", cval=0.0)

    else:

        def smooth(z: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(z, sigma=sigma, mode="constant", cval=0.0, truncate=radius / sigma)

    m = np.zeros(shape)
    m[r, c] = 1.0
    support = smooth(m)[r, c]
    # the filter sums with rounding error; a bin whose whole window is in tissue must pass min_support=1
    used = support >= min_support - 1e-9
    if not used.any():
        return np.full(n_genes, np.nan)
    support = support[used]

    def local_mean(z: np.ndarray) -> np.ndarray:
        grid = np.zeros(shape)
        grid[r, c] = z
        return smooth(grid)[r, c][used] / support

    c1, c2 = 0.01**2, 0.03**2
    x_all = _minmax(pred[keep])
    y_all = _minmax(truth[keep])
    out = np.empty(n_genes)
    for g in range(n_genes):
        x, y = x_all[:, g], y_all[:, g]
        mu_x, mu_y = local_mean(x), local_mean(y)
        var_x = np.maximum(local_mean(x * x) - mu_x**2, 0.0)
        var_y = np.maximum(local_mean(y * y) - mu_y**2, 0.0)
        cov = local_mean(x * y) - mu_x * mu_y
        index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        out[g] = index.mean()
    return out


def score(
    pred_table: AnnData,
    truth_table: AnnData,
    *,
    genes: list[str] | None = None,
    truth_layer: str | None = None,
    in_tissue_key: str = "in_tissue",
    window: int = 7,
    sigma: float | None = None,
    min_support: float = 0.5,
) -> pd.DataFrame:
    """Pearson correlation, SSIM and RMSE of each gene on the shared in-tissue bins (pseudo-Visium protocol).

    Bins are matched with :func:`align_bins`; the in-tissue bins of the truth that the prediction holds form the
    mask of :func:`ssim_per_gene`, placed on the grid by ``obs["array_row"]`` and ``obs["array_col"]``.

    Parameters
    ----------
    pred_table, truth_table
        Predicted and ground-truth bin tables on the same grid.
    genes, truth_layer, in_tissue_key
        As in :func:`align_bins`.
    window, sigma, min_support
        As in :func:`ssim_per_gene`.

    Returns
    -------
    pandas.DataFrame
        One row per gene (index: gene names) with columns ``pearson`` (:func:`pearson_per_gene`), ``ssim``
        (:func:`ssim_per_gene`) and ``rmse`` (:func:`rmse_per_gene`).
    """
    p, t, genes, rows, cols = _align_bins(
        pred_table, truth_table, genes=genes, truth_layer=truth_layer, in_tissue_key=in_tissue_key
    )
    return pd.DataFrame(
        {
            "pearson": pearson_per_gene(p, t),
            "ssim": ssim_per_gene(p, t, rows, cols, window=window, sigma=sigma, min_support=min_support),
            "rmse": rmse_per_gene(p, t),
        },
        index=pd.Index(genes, name="gene"),
    )


def summarise(scores: pd.DataFrame) -> dict[str, float]:
    """Mean over genes of each metric of :func:`score`, skipping NaN.

    Parameters
    ----------
    scores
        Per-gene metrics, one column per metric.

    Returns
    -------
    dict
        ``{metric: mean}``; NaN for a metric that is NaN for every gene.
    """
    return {str(k): float(v) for k, v in scores.mean(axis=0, skipna=True).items()}
