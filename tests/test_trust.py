"""Per-gene reliability and per-bin predictive intervals: the array math, and what super_resolve writes."""

import numpy as np
import pytest
import scipy.sparse as sp
import spatialdata as sd
from helpers import figure_of
from scipy import stats

import histex as hx
from histex.cells import cell_variance
from histex.model import trust


def _nb(mean, phi):
    r = 1 / np.maximum(phi, 1e-12)
    return stats.nbinom(r, r / (r + mean))


@pytest.mark.parametrize("phi", [0.0, 0.3])
def test_count_interval_is_the_nearest_interval_of_the_distribution(phi):
    mean = np.geomspace(0.01, 150, 400)
    lower, upper = trust.count_interval(mean, phi)
    dist = stats.poisson(mean) if phi == 0 else _nb(mean, phi)
    np.testing.assert_array_equal(lower, dist.ppf(0.05))  # the 5% quantile
    below = dist.cdf(lower - 1)
    reaches = dist.ppf(below + 0.9)  # the first count at which [lower, count] holds 90%
    assert ((upper == reaches) | (upper == reaches - 1)).all()
    # of it and the count before, the one whose interval holds nearer 90% (the count before only if not empty)
    at_reach, before_reach = dist.cdf(reaches) - below, dist.cdf(reaches - 1) - below
    nearer = np.where(
        (np.abs(before_reach - 0.9) < np.abs(at_reach - 0.9)) & (reaches - 1 >= lower), reaches - 1, reaches
    )
    np.testing.assert_array_equal(upper, nearer)
    assert (lower <= upper).all() and np.array_equal(upper, np.round(upper))


@pytest.mark.parametrize(("mean", "phi"), [(0.4, 0.0), (1.7, 0.0), (6.0, 0.2), (30.0, 0.5), (400.0, 0.05)])
def test_randomised_interval_holds_the_level_on_average(mean, phi):
    n = 20000
    draws = trust.bin_draws(0, n, 1, seed=3)[:, 0]
    lower, upper = trust.count_interval(np.full(n, mean), phi, 0.8, draws=draws)
    dist = stats.poisson(mean) if phi == 0 else _nb(mean, phi)
    held = dist.cdf(upper) - dist.cdf(lower - 1)
    assert abs(held.mean() - 0.8) < 0.01
    # and counts drawn from the distribution fall in it as often
    y = dist.rvs(size=n, random_state=1)
    assert abs(((y >= lower) & (y <= upper)).mean() - 0.8) < 0.015


def test_a_single_likely_count_is_kept_however_much_it_holds():
    lower, upper = trust.count_interval(np.array([0.01, 0.0]), 0.0, 0.9, draws=np.array([0.99, 0.99]))
    np.testing.assert_array_equal(lower, [0, 0])
    np.testing.assert_array_equal(upper, [0, 0])  # [0, 0] holds 99%: never an empty interval


def test_bin_draws_do_not_depend_on_the_blocks():
    whole = trust.bin_draws(0, 500, 30, seed=2)
    assert whole.min() >= 0 and whole.max() < 1
    assert abs(whole.mean() - 0.5) < 0.01 and abs(np.corrcoef(whole[:, 0], whole[:, 1])[0, 1]) < 0.1
    np.testing.assert_array_equal(trust.bin_draws(100, 50, 10, seed=2, gene_start=5), whole[100:150, 5:15])
    assert not np.array_equal(trust.bin_draws(0, 500, 30, seed=3), whole)


def test_interval_layers_name_the_level():
    assert trust.interval_layers(0.9) == ("lower90", "upper90")
    assert trust.interval_layers(0.95) == ("lower95", "upper95")
    assert trust.interval_layers(0.875) == ("lower87_5", "upper87_5")
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        trust.count_interval(np.ones(3), 0.0, 1.0)


def _lattice(n_side: int) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    return np.column_stack([rows.ravel() * np.sqrt(3) / 2, cols.ravel() + 0.5 * (rows.ravel() % 2)])


def test_spot_dispersion_recovers_the_counts_dispersion():
    rc = _lattice(45)
    rng = np.random.default_rng(0)
    means = np.array([40.0, 40.0, 5.0])
    phis = np.array([0.0, 0.3, 0.3])
    counts = np.column_stack(
        [rng.poisson(means[0], len(rc))] + [_nb(m, p).rvs(len(rc), random_state=i) for i, (m, p) in
                                            enumerate(zip(means[1:], phis[1:], strict=True))]
    )  # fmt: skip
    phi = trust.spot_dispersion(counts, rc)
    assert phi[0] < 0.01
    np.testing.assert_allclose(phi[1:], 0.3, atol=0.06)
    # a gene that changes across the tissue counts as dispersed: the estimate errs wide
    trend = rng.poisson(np.linspace(5, 80, len(rc))[np.argsort(np.argsort(rc[:, 1]))])
    assert trust.spot_dispersion(trend[:, None], rc)[0] > 0.0
    with pytest.raises(ValueError, match="at least two spots"):
        trust.spot_dispersion(counts[:1], rc[:1])


def test_expected_pearson_is_what_counts_drawn_around_the_map_score():
    rng = np.random.default_rng(1)
    mean = rng.gamma(2.0, 1.5, size=(40000, 3)) * np.array([0.1, 1.0, 10.0])
    phi = np.array([0.0, 0.2, 0.5])
    y = _nb(mean, np.broadcast_to(phi, mean.shape)).rvs(random_state=2)
    noise = (mean + phi * mean**2).sum(axis=0)
    expected = trust.expected_pearson(len(mean), mean.sum(axis=0), (mean**2).sum(axis=0), noise)
    np.testing.assert_allclose(expected, hx.metrics.pearson_per_gene(mean, y), atol=0.02)
    assert trust.expected_pearson(5, np.full(1, 5.0), np.full(1, 5.0), np.full(1, 5.0))[0] == 0  # a flat map


def test_reliability_is_the_expected_pearson_checked_on_the_spots():
    expected = np.array([0.8, 0.8, 0.8, 0.5])
    np.testing.assert_allclose(trust.reliability(expected, np.array([1.0, 0.5, -0.3, np.nan])), [0.8, 0.4, 0, 0])
    np.testing.assert_allclose(trust.reliability(expected), expected)  # no spots: an upper bound


def test_bin_trust_accumulates_blocks_as_one():
    rng = np.random.default_rng(4)
    mean, sd = rng.gamma(1.0, 2.0, (300, 5)), rng.uniform(0, 0.5, (300, 5))
    dispersion = np.full(5, 0.1)
    incidence = sp.random(7, 300, density=0.1, format="csr", random_state=0)
    whole, parts = (trust.BinTrust(dispersion, incidence=incidence, seed=1) for _ in range(2))
    lower, upper = whole.add(0, mean, sd)
    pieces = [parts.add(a, mean[a:b], sd[a:b]) for a, b in ((0, 120), (120, 121), (121, 300))]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), lower)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), upper)
    np.testing.assert_allclose(parts.expected_pearson(), whole.expected_pearson())
    np.testing.assert_allclose(parts.disk_sums, incidence @ mean)
    phi = trust.bin_dispersion(mean, sd, dispersion)
    np.testing.assert_allclose(phi, 0.1 + (sd / mean) ** 2)


def test_cell_variance_sums_thinned_bins():
    fractions = sp.csr_matrix(np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 0.25]]))
    mean = np.array([[2.0, 1.0], [4.0, 0.0], [8.0, 3.0]])
    sd = np.array([[0.5, 0.0], [1.0, 0.0], [0.0, 1.0]])
    phi = np.array([0.2, 0.0])
    got = cell_variance(fractions, mean, sd, phi, block=2)
    f = fractions.toarray()
    want = f @ mean + (f**2) @ (phi * mean**2 + sd**2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_cells_interval_holds_its_share_of_its_bins_counts():
    """Bin counts drawn from their predictive distribution, each cell taking each of its bins' transcripts with its
    share: the cells' counts fall in their intervals as often as the level says."""
    import anndata as ad

    from histex.tl._cells import _cell_interval

    rng = np.random.default_rng(5)
    n_bins, n_cells, n_genes = 400, 300, 4
    mean = rng.gamma(2.0, 2.0, (n_bins, n_genes)) * np.array([0.5, 1.0, 3.0, 10.0])
    sd = 0.1 * mean
    dispersion = np.array([0.0, 0.1, 0.3, 0.05])
    bins = ad.AnnData(X=mean.astype(np.float32), layers={"ensemble_sd": sd.astype(np.float32)})
    bins.var["dispersion"] = dispersion
    bins.uns["histex"] = {"trust": {"level": 0.8}, "params": {"seed": 0}}
    # each cell over 1 to 4 bins, taking a share of each
    rows = np.repeat(np.arange(n_cells), rng.integers(1, 5, n_cells))
    fractions = sp.csr_matrix((rng.uniform(0.2, 1.0, len(rows)), (rows, rng.integers(0, n_bins, len(rows)))),
                              shape=(n_cells, n_bins))  # fmt: skip
    fractions.sum_duplicates()
    fractions.data = np.minimum(fractions.data, 1.0)
    counts = (fractions @ mean).astype(np.float32)
    interval = _cell_interval(bins, fractions, counts)
    lower, upper = interval["lower80"], interval["upper80"]
    phi = trust.bin_dispersion(mean, sd, dispersion)
    dense = fractions.toarray()
    inside = []
    for _ in range(40):
        # the bins' rates spread as the ensemble says, their counts negative binomial around them
        y = _nb(mean, phi).rvs(random_state=rng)
        cell = np.stack([rng.binomial(y[None, :, g].repeat(n_cells, 0), dense).sum(axis=1) for g in range(n_genes)], 1)
        inside.append((cell >= lower) & (cell <= upper))
    coverage = np.mean(inside, axis=(0, 1))
    np.testing.assert_allclose(coverage, 0.8, atol=0.04)


def _predicted_toy(seed: int):
    """A toy section predicted by super_resolve, its truth held beside it."""
    sdata = hx.datasets.toy(size_um=1000, n_genes=40, seed=seed)
    hx.pp.extract_features(sdata, show_progress=False)
    genes = list(sdata.tables["table"].var_names)
    hx.tl.super_resolve(sdata, epochs=40, n_states=3, genes=genes, seed=seed, show_progress=False)
    return sdata


@pytest.fixture(scope="module")
def predicted():
    """The toy section predicted by super_resolve, its truth held beside it."""
    return _predicted_toy(2)


def _true_pearson(sdata) -> np.ndarray:
    """Each gene's Pearson at 8 µm against the truth, in the order of the prediction's genes."""
    table = sdata.tables["histex"]
    return hx.metrics.score(table, sdata.tables["truth"])["pearson"].loc[table.var_names].to_numpy()


def _reliability_rank_correlation(sdata) -> float:
    """Spearman correlation over genes of ``var["reliability"]`` with each gene's true Pearson at 8 µm."""
    return stats.spearmanr(sdata.tables["histex"].var["reliability"], _true_pearson(sdata)).statistic


@pytest.mark.slow
def test_super_resolve_says_which_genes_to_trust(predicted):
    table = predicted.tables["histex"]
    record = table.uns["histex"]["trust"]
    assert record["level"] == 0.9 and record["dispersion"] == "section spots" and record["checked_on_spots"]
    assert 0 < record["seconds"] < 30
    var = table.var
    for column in ("dispersion", "expected_pearson", "reliability", "spot_consistency"):
        assert var[column].notna().all(), column
    np.testing.assert_array_equal(var["reliable"], var["reliability"] >= trust.RELIABLE)
    pearson = _true_pearson(predicted)
    flagged = var["reliable"].to_numpy()
    assert 0 < flagged.sum() < len(flagged)
    assert pearson[flagged].mean() - pearson[~flagged].mean() > 0.15


@pytest.mark.slow
def test_reliability_ranks_the_genes_by_their_true_pearson(predicted):
    # Over 40 genes one section's rank correlation varies by about 0.11 from section to section (0.53 to 0.92
    # over toy seeds 0-7), so the bound is on the mean of three sections, with a floor for each.
    rhos = [_reliability_rank_correlation(predicted)]
    rhos += [_reliability_rank_correlation(_predicted_toy(seed)) for seed in (0, 1)]
    assert np.mean(rhos) > 0.7 and min(rhos) > 0.5, rhos


@pytest.mark.slow
def test_intervals_hold_the_true_counts(predicted):
    table, truth = predicted.tables["histex"], predicted.tables["truth"]
    lower, upper = np.asarray(table.layers["lower90"]), np.asarray(table.layers["upper90"])
    assert (lower <= upper).all() and np.array_equal(upper, np.round(upper)) and (lower >= 0).all()
    _, true, _ = hx.metrics.align_bins(table, truth)
    low = hx.metrics.align_bins(_with_x(table, lower), truth)[0]
    high = hx.metrics.align_bins(_with_x(table, upper), truth)[0]
    coverage = np.median(((true >= low) & (true <= high)).mean(axis=0))
    assert 0.85 <= coverage <= 0.95, coverage
    # another level, from what the table stores
    assert hx.tl.predictive_interval(predicted, level=0.5) == ("lower50", "upper50")
    low = hx.metrics.align_bins(_with_x(table, np.asarray(table.layers["lower50"])), truth)[0]
    high = hx.metrics.align_bins(_with_x(table, np.asarray(table.layers["upper50"])), truth)[0]
    assert 0.42 <= np.median(((true >= low) & (true <= high)).mean(axis=0)) <= 0.62
    same = hx.tl.predictive_interval(predicted, level=0.9)
    np.testing.assert_array_equal(table.layers[same[0]], lower)  # the stored 90% interval, recomputed
    np.testing.assert_array_equal(table.layers[same[1]], upper)


def _with_x(table, x):
    import anndata as ad

    return ad.AnnData(X=x, obs=table.obs, var=table.var)


@pytest.mark.slow
def test_tools_take_the_reliable_genes(predicted):
    sdata = sd.deepcopy(predicted)
    table = sdata.tables["histex"]
    reliable = list(table.var_names[table.var["reliable"]])
    patterns = hx.tl.spatial_patterns(sdata, genes="reliable", key_added="patterns")
    assert sorted(patterns.index) == sorted(reliable)
    hx.tl.annotate(sdata, genes="reliable", n_domains=3, key_added="dom")
    assert table.uns["dom"]["use"] == "expression" and table.uns["dom"]["genes"] == "reliable"
    sets = {"first": reliable[:3], "unreliable": list(table.var_names[~table.var["reliable"]][:3])}
    results = hx.tl.enrich(sdata, gene_sets=sets, groupby="dom", genes="reliable", min_size=1)
    assert set(results["term"]) == {"first"}  # the unreliable genes' set has none left
    with pytest.raises(ValueError, match="cannot be used with use='embedding'"):
        hx.tl.annotate(sdata, genes="reliable", use="embedding", key_added="bad")
    del table.var["reliable"]
    with pytest.raises(ValueError, match="no var\\['reliable'\\]"):
        hx.tl.spatial_patterns(sdata, genes="reliable", key_added="bad")


@pytest.mark.slow
def test_reliability_plot_ranks_and_marks(predicted):
    import matplotlib

    matplotlib.use("Agg")
    table = predicted.tables["histex"]
    fig = figure_of(hx.pl.reliability(predicted, n_genes=10, show=False))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    ranked = table.var["reliability"].sort_values(ascending=False).index
    assert labels == [*ranked[:5], *ranked[-5:]]
    flagged = ax.collections[0].get_offsets()
    assert len(flagged) == int(table.var.loc[labels, "reliable"].sum())
    assert ax.get_title().startswith(f"{int(table.var['reliable'].sum())} of {table.n_vars} genes reliable")
    with pytest.raises(ValueError, match="n_genes must be >= 2"):
        hx.pl.reliability(predicted, n_genes=1, show=False)
