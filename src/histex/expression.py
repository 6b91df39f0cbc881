"""The expression that histex's tools describe bins and cells by: log-normalised counts and their principal
components, shared by annotation, enrichment and spatial patterns.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def log_normalised(
    table, layer: str | None = None, columns: np.ndarray | None = None, *, keep_sparse: bool = False
) -> np.ndarray | sp.csr_matrix:
    """log1p of counts scaled to the median total per bin, ``(bins, genes)`` float32, dense.

    What :func:`scanpy.pp.normalize_total` (its default target, the median of the non-zero totals) and
    :func:`scanpy.pp.log1p` compute, without a copy of the table and on a layer. Totals are over all genes; with ``columns``, only those genes are returned. With ``keep_sparse``, sparse counts
    stay sparse (CSR; zeros stay zeros), so that a Visium HD table of every gene is never made dense.
    """
    x = table.layers[layer] if layer else table.X
    totals = np.asarray(x.sum(axis=1), dtype=np.float32).reshape(-1, 1)
    if columns is not None:
        x = x[:, columns]
    target = float(np.median(totals[totals > 0])) if (totals > 0).any() else 1.0
    scale = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
    if keep_sparse and sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32, copy=True)
        x.data *= np.repeat(scale.ravel(), np.diff(x.indptr))
        np.log1p(x.data, out=x.data)
        return x
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    x = x.astype(np.float32, copy=True)
    x *= scale
    return np.log1p(x, out=x)


def expression_pcs(x, n_pcs: int, *, n_top_genes: int | None = None) -> np.ndarray:
    """Principal components of bins x genes log expression, every gene scaled to unit variance.

    With ``n_top_genes``, only the genes of highest variance are used. Sparse input stays sparse: the genes are scaled
    as columns and the centring is left implicit (ARPACK), so a table of every gene is never made dense. Dense
    input is centred and scaled in place.
    """
    from sklearn.decomposition import PCA

    mean = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
    if sp.issparse(x):
        var = np.asarray(x.multiply(x).mean(axis=0), dtype=np.float64).ravel() - mean**2
    else:
        var = x.var(axis=0, dtype=np.float64)
    if n_top_genes is not None and x.shape[1] > n_top_genes:
        keep = np.sort(np.argsort(-var, kind="stable")[:n_top_genes])
        x, mean, var = x[:, keep], mean[keep], var[keep]
    std = np.sqrt(np.clip(var, 0, None))
    std[std == 0] = 1
    n = min(n_pcs, x.shape[1] - (1 if sp.issparse(x) else 0), x.shape[0] - 1)  # ARPACK needs fewer than all
    if sp.issparse(x):
        scaled = sp.csr_matrix(x @ sp.diags((1 / std).astype(np.float32)), dtype=np.float32)
        return PCA(n, svd_solver="arpack", random_state=0).fit_transform(scaled).astype(np.float32)
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    return PCA(n, random_state=0).fit_transform(x).astype(np.float32)
