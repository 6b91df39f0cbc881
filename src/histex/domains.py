"""Tissue domains on a bin grid or on cells: smoothing, clustering, marker scores, labels and boundaries. Arrays in,
arrays out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Neighbours of a bin on the grid that make it a boundary bin: the 8 around it.
_RING = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def smooth_on_grid(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of per-bin vectors over neighbouring bins (``sigma`` in bins), only over bins that exist.

    The values are placed on the dense grid, filtered together with an indicator of the bins present, and divided by
    the filtered indicator, so that the tissue edge is not pulled towards zero.
    """
    values = np.asarray(values, dtype=np.float32)
    if sigma <= 0:
        return values
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    weight = np.zeros(shape, np.float32)
    weight[rows, cols] = 1
    norm = ndimage.gaussian_filter(weight, sigma, mode="constant")[rows, cols]
    out = np.empty_like(values)
    grid = np.zeros(shape, np.float32)
    for j in range(values.shape[1]):  # one channel at a time: the dense grid of all channels may not fit
        grid[rows, cols] = values[:, j]
        out[:, j] = ndimage.gaussian_filter(grid, sigma, mode="constant")[rows, cols] / norm
        grid[rows, cols] = 0
    return out


def kmeans_domains(values: np.ndarray, n_domains: int, *, seed: int = 0) -> np.ndarray:
    """k-means labels ``0..n_domains-1``, numbered by decreasing size; mini-batches above 200,000 bins."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(values) > 200_000:
        model = MiniBatchKMeans(n_domains, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_domains, random_state=seed, n_init=4)
    return by_size(model.fit_predict(values))


def by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels so that 0 is the largest domain, 1 the next, and so on."""
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(uniq))
    return rank[inverse.ravel()]


def marker_scores(log_expression: np.ndarray, markers: dict[str, np.ndarray]) -> np.ndarray:
    """Per bin and label, the mean over the label's marker genes of the gene's z-score across bins, ``(n, labels)``.

    ``log_expression`` is bins x genes (e.g. log1p of normalised counts); ``markers`` maps a label to column indices.
    """
    x = np.asarray(log_expression, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1
    out = np.empty((len(x), len(markers)), dtype=np.float32)
    for k, idx in enumerate(markers.values()):
        out[:, k] = ((x[:, idx] - mean[idx]) / std[idx]).mean(axis=1)
    return out


def label_domains(
    domains: np.ndarray, scores: np.ndarray, labels: list[str], *, min_score: float
) -> tuple[np.ndarray, np.ndarray]:
    """Name each domain by the marker set with the highest mean score over its bins.

    Returns the label of every domain (``"unknown"`` where the best mean score is below ``min_score``, in standard
    deviations of the bins) and that best score, its confidence.
    """
    n_domains = int(domains.max()) + 1
    sums = np.zeros((n_domains, scores.shape[1]))
    np.add.at(sums, domains, scores)
    means = sums / np.bincount(domains, minlength=n_domains)[:, None].clip(1)
    best = means.argmax(axis=1)
    confidence = means[np.arange(n_domains), best]
    names = np.where(confidence >= min_score, np.asarray(labels, dtype=object)[best], "unknown")
    return names, confidence


def boundary_bins(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, ignore: str = "unknown") -> np.ndarray:
    """Bins with a neighbour (of the 8 around them) that carries another label; bins labelled ``ignore`` are never
    boundaries and do not make their neighbours ones.
    """
    codes, index = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    index = index.ravel() + 1  # 0: no bin
    ignored = np.flatnonzero(codes == ignore) + 1
    shape = (int(rows.max()) + 3, int(cols.max()) + 3)  # a margin of one bin on every side
    grid = np.zeros(shape, np.int64)
    grid[rows + 1, cols + 1] = index
    grid[np.isin(grid, ignored)] = 0
    edge = np.zeros(len(rows), bool)
    own = grid[rows + 1, cols + 1]
    for dr, dc in _RING:
        other = grid[rows + 1 + dr, cols + 1 + dc]
        edge |= (other > 0) & (other != own)
    return edge & (own > 0)


def typical_spacing(xy: np.ndarray) -> float:
    """The median distance from a point to its nearest neighbour: the spacing of cells, as a bin is of bins."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0
    distance, _ = cKDTree(xy).query(xy, k=2)
    spacing = float(np.median(distance[:, 1]))
    return spacing if spacing > 0 else 1.0


def _near_pairs(xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs ``(i, j)`` of points closer than ``radius``, both ways round and each point with itself, and their
    distances.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(xy)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    distance = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    n = len(xy)
    i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    d = np.concatenate([distance, distance, np.zeros(n)])
    return i, j, d


def smooth_on_points(values: np.ndarray, xy: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of per-point vectors over neighbouring points (``sigma`` in the units of ``xy``, the
    average over points within 3 sigma), normalised by the weights present, so that the tissue edge is not pulled
    towards zero.
    """
    import scipy.sparse as sp

    values = np.asarray(values, dtype=np.float32)
    if sigma <= 0 or len(values) < 2:
        return values
    i, j, d = _near_pairs(np.asarray(xy, dtype=np.float64), 3 * sigma)
    weights = sp.csr_matrix((np.exp(-0.5 * (d / sigma) ** 2).astype(np.float32), (i, j)), shape=(len(xy),) * 2)
    norm = np.asarray(weights.sum(axis=1), dtype=np.float32)
    return np.asarray(weights @ values, dtype=np.float32) / norm


def boundary_points(labels: np.ndarray, xy: np.ndarray, radius: float, *, ignore: str = "unknown") -> np.ndarray:
    """Points with a neighbour within ``radius`` that carries another label; points labelled ``ignore`` are never
    boundaries and do not make their neighbours ones (as :func:`boundary_bins` on a grid).
    """
    labels = np.asarray(labels, dtype=object)
    if len(labels) < 2:
        return np.zeros(len(labels), bool)
    _, index = np.unique(labels, return_inverse=True)
    i, j, _ = _near_pairs(np.asarray(xy, dtype=np.float64), radius)
    counted = (labels[i] != ignore) & (labels[j] != ignore) & (index[i] != index[j])
    edge = np.zeros(len(labels), bool)
    edge[i[counted]] = True
    return edge
