"""Accuracy of predicted bins against ground truth on the same bin grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def pearson_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column (gene) of ``pred`` with the same column of ``truth``, over rows (bins).

    A gene that is constant in either map has no defined correlation and gets NaN.
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


def align_bins(pred_table, truth_table, *, genes=None, truth_layer: str | None = None, in_tissue_key="in_tissue"):
    """Matrices of predicted and true values on the bins and genes that both tables hold.

    Bins are matched by ``obs["array_row"]``/``obs["array_col"]``; when the truth has ``obs[in_tissue_key]``, only
    its in-tissue bins are kept.

    Returns
    -------
    ``(pred, truth, genes)``: two dense ``(n_bins, n_genes)`` float arrays and the gene names.
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


def mean_pearson(pred_table, truth_table, **kwargs) -> float:
    """Mean over genes of the per-gene Pearson correlation on the shared in-tissue bins (NaN genes skipped)."""
    p, t, _ = align_bins(pred_table, truth_table, **kwargs)
    return float(np.nanmean(pearson_per_gene(p, t)))
