"""Matching predictions to the measured spots: the bins of each spot's disk rescaled to sum to what it measured.

A network trained on the spots fits them only on average, and it cannot see what the image does not show: a clone,
a gradient, a state that looks like its neighbours. The spots measured it. Per gene, each spot gives the log-ratio
of its measured counts to the prediction summed over its disk; the bins of a disk are multiplied by their spot's
ratio, and the bins between disks by the ratios of the spots around them, linearly interpolated. The image keeps
the shape within a spot, the spots set the level, gene by gene. Arrays in, arrays out; :class:`SpotMatch` does it
on the blocks of :func:`histex.model.predict_blocks` as they come, holding only the rows that wait for a spot
below them.

Where the image cannot tell a gene's pattern (a clone, a gradient, a gene every cell expresses), the network's
pattern for it within a spot is noise. :class:`ShapeChoice` gives each gene the shape that best predicts spots it
did not see: its own pattern, the pattern all genes share (where the cells are), none (flat), or a mixture.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

#: Added to measured and predicted counts, as a share of the gene's mean count per spot, so that a spot that
#: measured nothing of a rare gene does not set its ratio to zero (0.1 and 2 were less accurate on the benchmark).
PSEUDOCOUNT = 0.5
#: The shapes :class:`ShapeChoice` tries, in steps of a quarter between a gene's own pattern, the shared one and none.
SHAPE_STEPS = 4
#: The nearest other spots whose log-ratios predict a spot left out, in choosing shapes.
LEFT_OUT_NEIGHBOURS = 6
#: A gene keeps more of its own pattern only where that lowers the left-out error by this many standard errors.
SIMPLER_WITHIN_SE = 0.5


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
    its disk (NaN for a gene constant in either).
    """
    from histex.metrics import pearson_per_gene

    return pearson_per_gene(np.asarray(disk_sums, float), np.asarray(measured, float))


def log_ratios(
    measured: np.ndarray, disk_sums: np.ndarray, pseudocount: float = PSEUDOCOUNT, *, offset: np.ndarray | None = None
) -> np.ndarray:
    """``log((measured + a) / (disk_sums + a))`` per spot and gene, ``a`` = ``pseudocount`` times the gene's mean
    measured count (at least 1e-6), or ``offset`` (per gene) when given: for some of the spots, ``a`` of all.
    """
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
        the spots it depends on are summed.
        """
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


def shape_weights(steps: int = SHAPE_STEPS) -> np.ndarray:
    """The mixtures :class:`ShapeChoice` tries, ``(n, 2)`` weights ``(shared, flat)`` on a grid of ``1 / steps``
    with ``shared + flat <= 1``; the first is ``(0, 0)``, the gene's own pattern.
    """
    grid = np.arange(steps + 1) / steps
    return np.array([(shared, flat) for shared in grid for flat in grid if shared + flat <= 1 + 1e-9])


def log_relative(pred: np.ndarray, gene_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's log expression relative to its mean, ``(..., genes)``, and the shared pattern ``(..., 1)``: the log
    of the mean over genes of the relative expression (genes with a mean above zero), where the cells are.
    """
    mean = np.maximum(np.asarray(gene_mean, float), 1e-12)
    relative = np.maximum(np.asarray(pred, float), 1e-6 * mean) / mean
    used = np.asarray(gene_mean) > 0
    shared = relative[..., used].mean(axis=-1, keepdims=True) if used.any() else np.ones((*relative.shape[:-1], 1))
    return np.log(relative), np.log(shared)


def mix_shapes(
    pred: np.ndarray, gene_mean: np.ndarray, shared: np.ndarray | float, flat: np.ndarray | float, logs=None
) -> np.ndarray:
    """Predictions ``(..., genes)`` with each gene's pattern over the bins mixed, in log space, with the shared
    pattern (weight ``shared``) and with none (weight ``flat``); ``logs`` are :func:`log_relative`'s, if at hand.
    A gene with both weights zero keeps its prediction exactly.
    """
    log_own, log_shared = log_relative(pred, gene_mean) if logs is None else logs
    own = 1.0 - np.asarray(shared) - np.asarray(flat)
    mixed = np.exp(own * log_own + np.asarray(shared) * log_shared) * np.maximum(np.asarray(gene_mean, float), 1e-12)
    return np.where(own == 1.0, pred, mixed)


def left_out_errors(
    disk_sums: np.ndarray, measured: np.ndarray, spot_rc: np.ndarray, offset: np.ndarray, k: int = LEFT_OUT_NEIGHBOURS
) -> np.ndarray:
    """How well disk sums and the log-ratios of the other spots predict each spot: per spot and gene, the squared
    error in ``log(counts + offset)`` when a spot's ratio is the inverse-distance-weighted mean of its ``k`` nearest
    other spots' (matching as if the spot had not been measured).
    """
    from scipy.spatial import cKDTree

    k = min(k, len(spot_rc) - 1)
    log_measured = np.log(np.asarray(measured, float) + offset)
    log_sums = np.log(np.maximum(np.asarray(disk_sums, float), 0.0) + offset)
    ratios = log_measured - log_sums
    distance, neighbours = cKDTree(spot_rc).query(spot_rc, k + 1)
    inverse = 1.0 / np.maximum(distance[:, 1:], 1e-9) ** 2
    weights = inverse / inverse.sum(axis=1, keepdims=True)
    predicted = np.maximum(log_sums + np.einsum("nk,nkg->ng", weights, ratios[neighbours[:, 1:]]), np.log(offset))
    return (log_measured - predicted) ** 2


def simplest_within(
    mean: np.ndarray, standard_error: np.ndarray, own: np.ndarray, tolerance: float = SIMPLER_WITHIN_SE
) -> np.ndarray:
    """Per gene, the index of the mixture with the least own weight whose mean error is within ``tolerance``
    standard errors (the least one's) of the least mean error, then the least error; ``mean`` and
    ``standard_error`` ``(mixtures, genes)``, ``own`` ``(mixtures,)``.

    Spots see a gene's pattern only summed over a disk, where the network's noise from bin to bin averages out;
    the gene's own pattern must earn its place by predicting the spots clearly better than a simpler one.
    """
    genes = np.arange(mean.shape[1])
    best = mean.argmin(axis=0)
    within = mean <= (mean[best, genes] + tolerance * standard_error[best, genes])[None]
    key = np.where(within, own[:, None] * (1.0 + mean.max()) + mean, np.inf)  # own weight first, then error
    return key.argmin(axis=0)


@dataclass(frozen=True)
class ShapeChoice:
    """Per gene, the shape its predictions take within a spot before they are matched to the spots.

    A block transform (``(mean, spread) -> (mean, spread)``, counts per bin) for :func:`histex.model.predict`,
    applied before :class:`SpotMatch`. ``shared`` and ``flat`` are each gene's weights (:func:`mix_shapes`); the
    gene's own predicted pattern takes the rest. :meth:`fit` chooses them.
    """

    gene_mean: np.ndarray  # (genes,) mean count per bin, the spots' mean over the bins of a disk
    shared: np.ndarray  # (genes,)
    flat: np.ndarray  # (genes,)

    @classmethod
    def fit(
        cls,
        windows: Iterable[tuple[np.ndarray, np.ndarray]],
        measured: np.ndarray,
        spot_rc: np.ndarray,
        bins_per_spot: float,
        *,
        pseudocount: float = PSEUDOCOUNT,
        steps: int = SHAPE_STEPS,
    ) -> ShapeChoice:
        """Choose each gene's shape by how well it predicts the spots, each left out in turn.

        Parameters
        ----------
        windows
            In spot order, the predicted bins of spots' windows ``(n, window**2, genes)`` in counts per bin, made
            without each spot's own measurement (:func:`histex.model.predict.predict_spots`), and which of them
            lie in the spot's disk ``(n, window**2)``.
        measured
            ``(n_spots, genes)`` counts the spots measured.
        spot_rc
            ``(n_spots, 2)`` spot centres in bin coordinates.
        bins_per_spot
            Mean number of bins in a disk (to put the spots' means per bin).

        Notes
        -----
        For every mixture of :func:`shape_weights`, each spot's disk sum is held against what it measured with the
        ratio interpolated from its neighbours (:func:`left_out_errors`); each gene takes the mixture with the
        least of its own pattern whose error is within half a standard error of the least
        (:func:`simplest_within`). Holds ``len(shape_weights(steps))`` disk sums per spot and gene.
        """
        measured = np.asarray(measured, float)
        gene_mean = measured.mean(axis=0) / bins_per_spot
        weights = shape_weights(steps)
        sums = np.zeros((len(weights), *measured.shape), np.float32)
        covered = np.zeros(len(measured), bool)
        start = 0
        for pred, in_disk in windows:
            stop = start + len(pred)
            logs, disk = log_relative(pred, gene_mean), in_disk.astype(float)
            for i, (shared, flat) in enumerate(weights):
                sums[i, start:stop] = np.einsum(
                    "nb,nbg->ng", disk, mix_shapes(pred, gene_mean, shared, flat, logs=logs)
                )
            covered[start:stop] = in_disk.any(axis=1)
            start = stop
        if start != len(measured):
            raise ValueError(f"The windows cover {start} spots; {len(measured)} were measured.")
        best = np.zeros(measured.shape[1], np.int64)  # the gene's own pattern, with too few spots to choose
        if covered.sum() >= 3:
            offset = pseudocount_offset(measured[covered], pseudocount)
            rc = np.asarray(spot_rc, float)[covered]
            mean, standard_error = np.zeros((2, *sums.shape[::2]))
            for i, disk_sums in enumerate(sums):
                errors = left_out_errors(disk_sums[covered], measured[covered], rc, offset)
                mean[i], standard_error[i] = errors.mean(axis=0), errors.std(axis=0) / np.sqrt(len(errors))
            best = simplest_within(mean, standard_error, 1.0 - weights.sum(axis=1))
        return cls(gene_mean, weights[best, 0], weights[best, 1])

    def __call__(self, mean: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mix each gene's shape into a block of predictions: ``(mean, spread)`` rescaled alike."""
        mixed = mix_shapes(mean, self.gene_mean, self.shared, self.flat).astype(np.float32)
        scale = np.divide(mixed, mean, out=np.ones_like(mixed), where=mean > 0)
        return mixed, spread * scale
