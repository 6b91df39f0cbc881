"""How far to trust a prediction: per-bin predictive intervals and per-gene reliability. Arrays in, arrays out.

The count in a bin is modelled as negative binomial around the prediction: mean the predicted count ``mu``,
variance ``mu + phi * mu**2``. Its dispersion ``phi`` has two parts: the gene's, fitted on the spots
(:func:`spot_dispersion`), and the ensemble's disagreement on the bin, ``(ensemble_sd / mu)**2``
(:func:`bin_dispersion`). :func:`count_interval` gives the interval of whole counts that holds the level's share of
that distribution.

A gene's reliability is what its 8 µm map would score against counts drawn from that distribution, the Pearson
correlation ``sqrt(var(mu) / (var(mu) + mean(mu + phi * mu**2)))`` over the bins (:class:`BinTrust`), times how
well the network alone explained the spots it was fitted on (their Pearson correlation, clipped at 0): a gene whose
map hardly varies beside its counting noise cannot be read at 8 µm, and a gene whose map varies but does not
explain the spots is not what the map shows.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

#: Nearest spots whose mean count a spot's count is held against in fitting a gene's dispersion.
NEIGHBOURS = 6
#: Share of the predictive distribution that the stored interval holds.
LEVEL = 0.9
#: A gene is flagged ``reliable`` when its reliability (expected Pearson at 8 µm) reaches this.
RELIABLE = 0.4
#: Above this predicted count the interval is the normal approximation's (the exact sum would take as many steps).
NORMAL_ABOVE = 200.0


def spot_dispersion(counts: np.ndarray, spot_rc: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Per gene, the negative binomial dispersion of the spots' counts, fitted by the method of moments around the
    mean of each spot's ``neighbours`` nearest spots.

    If each spot's count has mean ``m`` and variance ``m + phi * m**2``, and its neighbours share its mean, the
    squared difference from their mean has expectation ``(1 + 1 / k) * (m + phi * m**2)``, and the product of the
    two has expectation ``m**2``. What the neighbours do not share (the tissue changing from one spot to the next)
    is counted as dispersion too, so the estimate errs wide.

    Parameters
    ----------
    counts
        ``(n_spots, n_genes)`` counts.
    spot_rc
        ``(n_spots, 2)`` spot centres, in any unit.
    neighbours
        Spots in each spot's neighbourhood.

    Returns
    -------
    numpy.ndarray
        ``(n_genes,)`` float64, 0 or more (0 for a gene no spot measured).
    """
    from scipy.spatial import cKDTree

    counts = np.asarray(counts, dtype=np.float64)
    k = min(int(neighbours), len(counts) - 1)
    if k < 1:
        raise ValueError("Fitting the dispersion needs at least two spots.")
    _, nearest = cKDTree(np.asarray(spot_rc, float)).query(spot_rc, k + 1)
    around = counts[nearest[:, 1:]].mean(axis=1)
    excess = ((counts - around) ** 2).mean(axis=0) / (1.0 + 1.0 / k) - counts.mean(axis=0)
    second = (counts * around).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(second > 0, excess / second, 0.0)
    return np.maximum(phi, 0.0)


def bin_dispersion(mean: np.ndarray, ensemble_sd: np.ndarray, dispersion: np.ndarray) -> np.ndarray:
    """Each bin's dispersion: the gene's ``dispersion`` plus the ensemble's relative disagreement squared.

    The ensemble's states are draws of the bin's rate; a rate spread by ``sd`` around ``mean`` widens the count's
    variance by ``sd**2``, which is ``(sd / mean)**2 * mean**2``.
    """
    mean = np.asarray(mean, dtype=np.float64)
    relative = np.asarray(ensemble_sd, dtype=np.float64) / np.maximum(mean, 1e-6)
    return np.asarray(dispersion, dtype=np.float64) + relative**2


def count_interval(
    mean: np.ndarray, dispersion: np.ndarray, level: float = LEVEL, *, draws: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The interval of whole counts ``[lower, upper]`` that holds ``level`` of a negative binomial.

    ``lower`` is the ``(1 - level) / 2`` quantile. Counts are whole numbers, so no interval holds exactly
    ``level``: at 0.3 counts per bin ``[0, 0]`` holds 74% and ``[0, 1]`` 96%. The last count that the level reaches
    into is kept with the probability that makes the interval hold ``level`` on average (a randomised interval, as
    for discrete tests): kept where ``draws`` (uniform in [0, 1), one per element) is below the share of that
    count's probability the level needs. Without it, intervals at low counts would hold far more than they say,
    and most 8 µm bins' counts are low. Above :data:`NORMAL_ABOVE` counts the normal approximation is used.

    Parameters
    ----------
    mean
        Predicted counts (any shape).
    dispersion
        ``phi`` of the variance ``mean + phi * mean**2``, of ``mean``'s shape or broadcastable to it (0: Poisson).
    level
        Share of the distribution the interval holds, in (0, 1).
    draws
        Uniform numbers of ``mean``'s shape (:func:`bin_draws`); default 0.5 for all, which keeps the last count
        where the level needs at least half of it (the interval whose probability is nearest ``level``).

    Returns
    -------
    tuple of numpy.ndarray
        ``lower`` and ``upper``, float32, of ``mean``'s shape.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}.")
    mean = np.asarray(mean, dtype=np.float64)
    shape = mean.shape
    mu = np.maximum(mean, 0.0).ravel()
    phi = np.maximum(np.broadcast_to(np.asarray(dispersion, dtype=np.float64), shape), 0.0).ravel()
    draw = np.full(mu.shape, 0.5) if draws is None else np.broadcast_to(np.asarray(draws, float), shape).ravel()
    lower = np.empty(mu.shape, dtype=np.float32)
    upper = np.empty(mu.shape, dtype=np.float32)

    large = mu > NORMAL_ABOVE
    if large.any():
        from scipy.stats import norm

        z = norm.ppf((1 + level) / 2)
        sd = np.sqrt(mu[large] + phi[large] * mu[large] ** 2)
        lower[large] = np.maximum(np.ceil(mu[large] - z * sd - 0.5), 0)
        upper[large] = np.floor(mu[large] + z * sd + 0.5)

    # The exact distribution, one count at a time, each element dropped as soon as its interval is known.
    index = np.flatnonzero(~large)
    m, f, u = mu[index], phi[index], draw[index]
    poisson = f < 1e-8
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p0 = np.where(poisson, -m, -np.log1p(f * m) / np.where(poisson, 1.0, f))
    pmf = np.exp(log_p0)
    cdf = pmf.copy()
    below_lower = np.full(len(index), np.nan)  # P(count < lower) once lower is known
    tail = (1 - level) / 2
    k = 0
    while len(index):
        # lower: the first count whose cumulative probability reaches the tail
        new = np.isnan(below_lower) & (cdf >= tail)
        lower[index[new]] = k
        below_lower[new] = (cdf - pmf)[new]
        # upper: the first count k at which [lower, k] holds the level; k itself kept with the share it is needed
        done = ~np.isnan(below_lower) & (cdf - below_lower >= level)
        if done.any():
            held_before = (cdf - pmf - below_lower)[done]
            needed = (level - held_before) / np.maximum(pmf[done], 1e-300)
            keep_last = (u[done] < needed) | (k == lower[index[done]])
            upper[index[done]] = np.where(keep_last, k, k - 1)
            rest = ~done
            index, m, f, u, pmf, cdf, below_lower = (a[rest] for a in (index, m, f, u, pmf, cdf, below_lower))
        # P(k + 1) = P(k) * mu * (1 + k * phi) / ((k + 1) * (1 + phi * mu))
        pmf = pmf * m * (1 + k * f) / ((k + 1) * (1 + f * m))
        cdf = cdf + pmf
        k += 1
    return lower.reshape(shape), upper.reshape(shape)


def bin_draws(start: int, n_bins: int, n_genes: int, seed: int = 0, *, gene_start: int = 0) -> np.ndarray:
    """Uniform numbers in [0, 1) for the bins ``start:start + n_bins`` (rows) and genes ``gene_start:gene_start +
    n_genes``, the same for a bin and gene however the table is cut into blocks: a counter-based hash (splitmix64)
    of the bin, the gene and ``seed``.
    """
    bins = np.arange(start, start + n_bins, dtype=np.uint64)[:, None]
    genes = np.arange(gene_start, gene_start + n_genes, dtype=np.uint64)[None, :]
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (bins << np.uint64(32)) + genes + np.uint64(seed) * golden + golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def bin_interval(
    start: int, mean: np.ndarray, dispersion: np.ndarray, level: float, seed: int, *, gene_start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The randomised interval (:func:`count_interval`) of the bins ``start:start + len(mean)`` and the genes from
    ``gene_start``, with their own draws (:func:`bin_draws`): the same for a bin however the table is blocked.
    """
    draws = bin_draws(start, *np.shape(mean), seed=seed, gene_start=gene_start)
    return count_interval(mean, dispersion, level, draws=draws)


def expected_pearson(n: float, total: np.ndarray, squares: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Per gene, the Pearson correlation over bins between the predicted counts and counts drawn around them:
    ``sqrt(var / (var + noise))``, ``var`` the variance of the prediction over the ``n`` bins (from its ``total``
    and sum of ``squares``) and ``noise`` the mean predictive variance of a bin. 0 for a flat map.
    """
    n = max(float(n), 1.0)
    var = np.maximum(np.asarray(squares, float) / n - (np.asarray(total, float) / n) ** 2, 0.0)
    noise = np.asarray(noise, float) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sqrt(var / (var + noise))
    return np.where(var > 0, r, 0.0)


def reliability(expected: np.ndarray, consistency: np.ndarray | None = None) -> np.ndarray:
    """Per gene, the expected Pearson correlation at 8 µm (:func:`expected_pearson`) times the network's own
    agreement with the spots (Pearson over spots, clipped to [0, 1]; a gene constant in the spots scores 0).
    Without spots (``None``), the expected correlation alone, which then is an upper bound.
    """
    expected = np.asarray(expected, dtype=np.float64)
    if consistency is None:
        return expected
    agreement = np.clip(np.nan_to_num(np.asarray(consistency, dtype=np.float64), nan=0.0), 0.0, 1.0)
    return expected * agreement


def interval_layers(level: float) -> tuple[str, str]:
    """The layer names of an interval at ``level``: ``("lower90", "upper90")`` at 0.9."""
    percent = f"{100 * level:g}".replace(".", "_")
    return f"lower{percent}", f"upper{percent}"


class BinTrust:
    """Intervals of the predicted bins as they come, block by block, and what a gene's reliability needs.

    Parameters
    ----------
    dispersion
        ``(n_genes,)`` the genes' dispersions (:func:`spot_dispersion`).
    level
        Share of the predictive distribution the intervals hold.
    incidence
        Spots x bins of the spots' disks (:func:`histex.model.matching.disk_incidence`), to sum the final
        prediction over each disk (:attr:`disk_sums`); ``None`` when not needed.
    seed
        Seeds the draws of the randomised intervals (:func:`bin_draws`).
    """

    def __init__(
        self, dispersion: np.ndarray, level: float = LEVEL, incidence: sp.spmatrix | None = None, seed: int = 0
    ):
        if not 0 < level < 1:
            raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}.")
        self.dispersion = np.asarray(dispersion, dtype=np.float64)
        self.level, self.seed = float(level), int(seed)
        n_genes = len(self.dispersion)
        self.n = 0
        self.total, self.squares, self.noise = (np.zeros(n_genes) for _ in range(3))
        self.incidence = None if incidence is None else sp.csc_matrix(incidence)
        self.disk_sums = None if incidence is None else np.zeros((incidence.shape[0], n_genes))
        self.seconds = 0.0

    def add(self, start: int, mean: np.ndarray, ensemble_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The interval of the bins ``start:start + len(mean)`` (counts, bins x genes); their moments are kept."""
        began = time.perf_counter()
        mean = np.asarray(mean, dtype=np.float64)
        phi = bin_dispersion(mean, ensemble_sd, self.dispersion)
        self.n += len(mean)
        self.total += mean.sum(axis=0)
        self.squares += (mean**2).sum(axis=0)
        self.noise += (mean + phi * mean**2).sum(axis=0)
        if self.incidence is not None:
            self.disk_sums += self.incidence[:, start : start + len(mean)] @ mean
        interval = bin_interval(start, mean, phi, self.level, self.seed)
        self.seconds += time.perf_counter() - began
        return interval

    def expected_pearson(self) -> np.ndarray:
        """Per gene, :func:`expected_pearson` over the bins added so far."""
        return expected_pearson(self.n, self.total, self.squares, self.noise)
