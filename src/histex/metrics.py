"""Accuracy of predicted bins against ground truth on the same bin grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


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
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth differ in shape: {pred.shape} vs {truth.shape}.")
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
    return p, t, genes


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
