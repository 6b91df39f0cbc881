"""Matching predictions to the measured spots: the bins of each spot's disk rescaled to sum to what it measured.

A network trained on the spots fits them only on average, and it cannot see what the image does not show: a clone,
a gradient, a state that looks like its neighbours. The spots measured it. Per gene, each spot gives the log-ratio
of its measured counts to the prediction summed over its disk; the bins of a disk are multiplied by their spot's
ratio, and the bins between disks by the ratios of the spots around them, linearly interpolated. The image keeps
the shape within a spot, the spots set the level, gene by gene. Arrays in, arrays out; :class:`SpotMatch` does it
on the blocks of :func:`histex.model.predict_blocks` as they come, holding only the rows that wait for a spot
below them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

#: Added to measured and predicted counts, as a share of the gene's mean count per spot, so that a spot that
#: measured nothing of a rare gene does not set its ratio to zero (0.1 and 2 were less accurate on the benchmark).
PSEUDOCOUNT = 0.5


def disk_incidence(spot_rc: np.ndarray, radius_bins: float, bin_rc: np.ndarray) -> sp.csr_matrix:
    """Spots x bins, 1 where the bin's centre lies in the spot's disk.

    Parameters
    ----------
    spot_rc
        ``(n_spots, 2)`` spot centres in bin coordinates ``(row, col)``.
    radius_bins
        Spot radius in bins.
    bin_rc
        ``(n_bins, 2)`` integer ``(row, col)`` of the bins; a bin's centre is ``(row + 0.5, col + 0.5)``.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_spots, n_bins)`` float64.
    """
    from scipy.spatial import cKDTree

    spot_rc = np.asarray(spot_rc, float).reshape(-1, 2)
    centres = np.asarray(bin_rc, float).reshape(-1, 2) + 0.5
    members = cKDTree(centres).query_ball_point(spot_rc, radius_bins) if len(centres) else [[] for _ in spot_rc]
    rows = np.repeat(np.arange(len(spot_rc)), [len(m) for m in members])
    cols = np.concatenate([np.asarray(m, np.int64) for m in members]) if len(rows) else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(spot_rc), len(centres)))


def spot_consistency(disk_sums: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Per gene, the Pearson correlation over spots between what each spot measured and the prediction summed over
    its disk (NaN for a gene constant in either)."""
    from histex.metrics import pearson_per_gene

    return pearson_per_gene(np.asarray(disk_sums, float), np.asarray(measured, float))


def log_ratios(
    measured: np.ndarray, disk_sums: np.ndarray, pseudocount: float = PSEUDOCOUNT, *, offset: np.ndarray | None = None
) -> np.ndarray:
    """``log((measured + a) / (disk_sums + a))`` per spot and gene, ``a`` = ``pseudocount`` times the gene's mean
    measured count (at least 1e-6), or ``offset`` (per gene) when given: for some of the spots, ``a`` of all."""
    measured = np.asarray(measured, float)
    a = pseudocount_offset(measured, pseudocount) if offset is None else offset
    return np.log((measured + a) / (np.maximum(np.asarray(disk_sums, float), 0.0) + a))


def pseudocount_offset(measured: np.ndarray, pseudocount: float = PSEUDOCOUNT) -> np.ndarray:
    """The ``a`` of :func:`log_ratios`: ``pseudocount`` times each gene's mean measured count, at least 1e-6."""
    return np.maximum(pseudocount * np.asarray(measured, float).mean(axis=0), 1e-6)


def interpolation_weights(
    spot_rc: np.ndarray, bin_rc: np.ndarray, incidence: sp.csr_matrix
) -> tuple[np.ndarray, np.ndarray]:
    """Which spots' ratios each bin takes, and how much of each: three spots and weights per bin.

    A bin in a spot's disk takes that spot's ratio (the first spot, where disks overlap). Any other bin takes the
    ratios of the three spots of the Delaunay triangle it lies in, by barycentric weights (linear interpolation);
    outside the spots' convex hull, or with fewer than three spots, the nearest spot's.

    Returns
    -------
    spots
        ``(n_bins, 3)`` spot indices.
    weights
        ``(n_bins, 3)`` weights summing to 1.
    """
    from scipy.spatial import Delaunay, QhullError, cKDTree

    spot_rc = np.asarray(spot_rc, float).reshape(-1, 2)
    centres = np.asarray(bin_rc, float).reshape(-1, 2) + 0.5
    n = len(centres)
    spots = np.zeros((n, 3), np.int64)
    weights = np.zeros((n, 3))
    _, nearest = cKDTree(spot_rc).query(centres) if n else (None, np.zeros(0, np.int64))
    spots[:, 0], weights[:, 0] = nearest, 1.0
    if len(spot_rc) >= 3:
        try:
            tri = Delaunay(spot_rc)
        except QhullError:  # spots on one line: nearest spot everywhere
            tri = None
        if tri is not None:
            simplex = tri.find_simplex(centres)
            inside = simplex >= 0
            t = tri.transform[simplex[inside]]
            b = np.einsum("nij,nj->ni", t[:, :2], centres[inside] - t[:, 2])
            spots[inside] = tri.simplices[simplex[inside]]
            weights[inside] = np.column_stack([b, 1.0 - b.sum(axis=1)])
    by_bin = incidence.tocsc()  # canonical: each bin's spots in increasing order
    in_disk = np.diff(by_bin.indptr) > 0
    owner = by_bin.indices[by_bin.indptr[:-1][in_disk]]
    spots[in_disk] = owner[:, None]
    weights[in_disk] = (1.0, 0.0, 0.0)
    return spots, weights


class SpotMatch:
    """Rescale predicted bins so that each spot's disk sums to what it measured, gene by gene, block by block.

    Parameters
    ----------
    spot_rc
        ``(n_spots, 2)`` spot centres in bin coordinates.
    radius_bins
        Spot radius in bins.
    measured
        ``(n_spots, n_genes)`` counts the spots measured, in the units whose disk sums the predictions give.
    bin_rc
        ``(n_bins, 2)`` integer ``(row, col)`` of the predicted bins, in the order the blocks give them.
    pseudocount
        See :func:`log_ratios`.

    Notes
    -----
    Spots whose disk holds no predicted bin (off the tissue mask) take no part. A bin can be released once every
    spot it takes a ratio from has all its disk's bins summed; :meth:`blocks` holds the rows until then.
    """

    def __init__(
        self,
        spot_rc: np.ndarray,
        radius_bins: float,
        measured: np.ndarray,
        bin_rc: np.ndarray,
        *,
        pseudocount: float = PSEUDOCOUNT,
    ):
        incidence = disk_incidence(spot_rc, radius_bins, bin_rc)
        covers = np.diff(incidence.indptr) > 0
        self.spot_index = np.flatnonzero(covers)  # the spots that take part, into the given spots
        if not len(self.spot_index):
            raise ValueError("No spot's disk holds a predicted bin: there is nothing to match the bins to.")
        self.incidence = incidence[covers]
        self.measured = np.asarray(measured, float)[covers]
        self.offset = pseudocount_offset(self.measured, pseudocount)  # of all spots, once
        self.sums = np.zeros_like(self.measured)
        self.spots, self.weights = interpolation_weights(np.asarray(spot_rc)[covers], bin_rc, self.incidence)
        # a spot is summed once the last bin of its disk has come; a bin waits for the spots it takes
        self.incidence.sort_indices()
        last_bin = self.incidence.indices[self.incidence.indptr[1:] - 1]
        needs = np.where(self.weights > 0, last_bin[self.spots], -1).max(axis=1)
        self._ready_after = np.maximum.accumulate(needs) if len(needs) else needs

    def ratios(self, spots: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Log-ratios of the participating ``spots`` (default all; ``(n, genes)``), from the disk sums so far."""
        return log_ratios(self.measured[spots], self.sums[spots], offset=self.offset)

    def factors(self, start: int, stop: int) -> np.ndarray:
        """Multiplicative factors of bins ``start:stop`` (their spots must be summed)."""
        spots, weights = self.spots[start:stop], self.weights[start:stop]
        needed, local = np.unique(spots, return_inverse=True)  # only these spots' ratios, not the slide's
        field = np.einsum("nk,nkg->ng", weights, self.ratios(needed)[local.reshape(spots.shape)])
        return np.exp(field).astype(np.float32)

    def blocks(self, blocks: Iterable) -> Iterator:
        """The blocks (:class:`histex.model.predict.Block`, in counts) matched, in order, each released as soon as
        the spots it depends on are summed."""
        pending: list = []
        received = 0
        released = 0
        for block in blocks:
            self.sums += self.incidence[:, block.start : block.stop] @ np.asarray(block.mean, float)
            pending.append(block)
            received = block.stop
            # bins start:k are ready when every spot they need ended before `received`
            k = min(int(np.searchsorted(self._ready_after, received, side="left")), received)
            if k > released:
                out, pending = _take(pending, released, k)
                yield self._apply(out)
                released = k
        if pending:
            out, _ = _take(pending, released, received)
            yield self._apply(out)

    def _apply(self, block):
        f = self.factors(block.start, block.stop)
        return replace(block, mean=block.mean * f, spread=block.spread * f)


def _take(pending: list, start: int, stop: int) -> tuple:
    """Rows ``start:stop`` of the pending blocks as one block, and the blocks left (the rest of a split one)."""
    from histex.model.predict import Block

    parts, rest = [], []
    for block in pending:
        if block.stop <= stop:
            parts.append(block)
        elif block.start < stop:
            n = stop - block.start
            parts.append(Block(block.start, stop, block.mean[:n], block.spread[:n], block.embedding[:n]))
            rest.append(Block(stop, block.stop, block.mean[n:], block.spread[n:], block.embedding[n:]))
        else:
            rest.append(block)
    joined = Block(
        start,
        stop,
        np.concatenate([b.mean for b in parts]),
        np.concatenate([b.spread for b in parts]),
        np.concatenate([b.embedding for b in parts]),
    )
    return joined, rest
