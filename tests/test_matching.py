"""Matching the predicted bins to the measured spots: disks, ratios, interpolation, the streamed blocks, and each
gene's shape within a spot."""

import itertools

import numpy as np
import pytest

from histex.model.matching import (
    ShapeChoice,
    SpotMatch,
    disk_incidence,
    interpolation_weights,
    left_out_errors,
    log_ratios,
    mix_shapes,
    shape_weights,
    simplest_within,
    spot_consistency,
)
from histex.model.predict import Block


def lattice(n_rows: int = 40, n_cols: int = 40, pitch: float = 12.5):
    """Bins of a grid and spots on a hexagonal lattice over it, in bin units (100 µm pitch of 8 µm bins)."""
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    bin_rc = np.column_stack([rows, cols])
    spots = []
    for i, r in enumerate(np.arange(3.5, n_rows - 3, pitch * np.sqrt(3) / 2)):
        for c in np.arange(3.5 + (i % 2) * pitch / 2, n_cols - 3, pitch):
            spots.append((r, c))
    return bin_rc, np.array(spots)


def blocks_of(mean: np.ndarray, cuts) -> list[Block]:
    edges = [0, *cuts, len(mean)]
    return [
        Block(a, b, mean[a:b], 0.1 * mean[a:b], np.full((b - a, 2), a, np.float32))
        for a, b in itertools.pairwise(edges)
    ]


def test_disk_incidence_holds_the_bins_whose_centres_lie_in_the_disk():
    bin_rc, _ = lattice(10, 10)
    incidence = disk_incidence(np.array([[5.0, 5.0]]), 3.4375, bin_rc).toarray()[0]
    centres = bin_rc + 0.5
    inside = ((centres - 5.0) ** 2).sum(1) <= 3.4375**2
    assert np.array_equal(incidence > 0, inside) and inside.sum() == 32  # a disk on a corner of four bins


def test_interpolation_weights_are_barycentric_between_spots_and_the_owner_inside_a_disk():
    spot_rc = np.array([[0.0, 0.0], [0.0, 30.0], [30.0, 0.0]])
    bin_rc = np.array([[9, 9], [0, 0]])  # the first's centre (9.5, 9.5) lies inside the triangle, off the disks
    incidence = disk_incidence(spot_rc, 3.0, bin_rc)
    spots, weights = interpolation_weights(spot_rc, bin_rc, incidence)
    by_spot = dict(zip(spots[0], weights[0], strict=True))
    assert by_spot[0] == pytest.approx(1 - 19 / 30) and by_spot[1] == pytest.approx(9.5 / 30)
    assert by_spot[2] == pytest.approx(9.5 / 30)
    assert spots[1, 0] == 0 and tuple(weights[1]) == (1.0, 0.0, 0.0)  # in spot 0's disk


def test_matched_disks_sum_to_what_the_spots_measured():
    bin_rc, spot_rc = lattice()
    rng = np.random.default_rng(0)
    prediction = rng.uniform(0.5, 1.5, (len(bin_rc), 3)).astype(np.float32)
    measured = rng.uniform(10, 80, (len(spot_rc), 3))
    match = SpotMatch(spot_rc, 3.4375, measured, bin_rc, pseudocount=0.0)
    (block,) = match.blocks(blocks_of(prediction, []))
    sums = match.incidence @ block.mean
    np.testing.assert_allclose(sums, measured, rtol=1e-5)
    np.testing.assert_allclose(block.spread, 0.1 * block.mean, rtol=1e-5)  # the spread scales with the bins
    # the shape within a disk is the prediction's
    disk = match.incidence[0].indices
    ratio = block.mean[disk] / prediction[disk]
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), rtol=1e-5)
    # the network's consistency, kept for var["spot_consistency"]
    consistency = spot_consistency(match.sums, measured)
    assert consistency[1] == pytest.approx(np.corrcoef(match.sums[:, 1], measured[:, 1])[0, 1])


def test_streamed_blocks_give_the_same_bins_in_order_whatever_the_cuts():
    bin_rc, spot_rc = lattice()
    rng = np.random.default_rng(1)
    prediction = rng.gamma(1.0, 1.0, (len(bin_rc), 4)).astype(np.float32)
    measured = rng.poisson(40, (len(spot_rc), 4)).astype(float)
    whole = np.concatenate(
        [b.mean for b in SpotMatch(spot_rc, 3.4375, measured, bin_rc).blocks(blocks_of(prediction, []))]
    )
    cuts = np.sort(rng.choice(np.arange(1, len(bin_rc)), 30, replace=False))
    streamed = list(SpotMatch(spot_rc, 3.4375, measured, bin_rc).blocks(blocks_of(prediction, cuts)))
    assert len(streamed) > 1  # released as the spots complete, not all at the end
    assert [b.start for b in streamed[1:]] == [b.stop for b in streamed[:-1]] and streamed[-1].stop == len(bin_rc)
    np.testing.assert_allclose(np.concatenate([b.mean for b in streamed]), whole, rtol=1e-6)
    embedding = np.concatenate([b.embedding for b in streamed])[:, 0]
    assert np.all(np.diff(embedding) >= 0)  # rows kept with their own embedding


def test_a_step_that_the_prediction_lacks_comes_from_the_spots():
    """A clone on the left half expresses the gene, the right half not; the network predicted it flat."""
    bin_rc, spot_rc = lattice(60, 60)
    truth = np.where(bin_rc[:, 1] < 30, 2.0, 0.2)[:, None]
    incidence = disk_incidence(spot_rc, 3.4375, bin_rc)
    measured = incidence @ truth
    flat = np.ones_like(truth, dtype=np.float32)
    (block,) = SpotMatch(spot_rc, 3.4375, measured, bin_rc).blocks(blocks_of(flat, []))
    r = np.corrcoef(block.mean[:, 0], truth[:, 0])[0, 1]
    assert r > 0.9
    left, right = block.mean[bin_rc[:, 1] < 20, 0].mean(), block.mean[bin_rc[:, 1] >= 40, 0].mean()
    assert left > 3 * right  # the pseudocount tempers the ratios: 1.6 and 0.5 for 2 and 0.2


def test_log_ratios_keep_a_spot_without_counts_finite_and_spots_off_tissue_out():
    ratios = log_ratios(np.array([[0.0], [10.0]]), np.array([[5.0], [5.0]]))
    assert np.all(np.isfinite(ratios)) and ratios[0, 0] < 0 < ratios[1, 0]
    bin_rc, spot_rc = lattice(20, 20)
    far = np.vstack([spot_rc, [[200.0, 200.0]]])
    match = SpotMatch(far, 3.4375, np.ones((len(far), 1)), bin_rc)
    assert len(match.spot_index) == len(spot_rc)
    with pytest.raises(ValueError, match="No spot's disk holds a predicted bin"):
        SpotMatch(np.array([[500.0, 500.0]]), 3.4375, np.ones((1, 1)), bin_rc)


def test_shape_mixtures_run_from_the_gene_s_own_pattern_to_the_shared_one_and_none():
    weights = shape_weights()
    assert len(weights) == 15 and tuple(weights[0]) == (0.0, 0.0) and np.all(weights.sum(axis=1) <= 1)
    rng = np.random.default_rng(0)
    pred = rng.gamma(2.0, 1.0, (50, 4)).astype(np.float32)
    mean = pred.mean(axis=0)
    assert np.array_equal(mix_shapes(pred, mean, 0.0, 0.0), pred)  # exactly, not through logs
    assert np.allclose(mix_shapes(pred, mean, 0.0, 1.0), mean)  # flat: the gene's mean in every bin
    shared = mix_shapes(pred, mean, 1.0, 0.0)
    profile = (pred / mean).mean(axis=1)
    assert np.allclose(shared / shared[:, :1], (mean / mean[0])[None].repeat(50, axis=0))  # one pattern for all
    assert np.allclose(shared[:, 0], profile * mean[0])
    half = mix_shapes(pred, mean, 0.5, 0.0)[:, 1]
    assert np.allclose(half, np.sqrt(pred[:, 1] / mean[1] * profile) * mean[1])  # geometric, in log space


def test_left_out_errors_are_zero_where_the_disks_sum_to_the_spots_and_grow_with_noise():
    _, spot_rc = lattice(60, 60)
    rng = np.random.default_rng(1)
    measured = rng.poisson(20.0, (len(spot_rc), 1)).astype(float)
    offset = np.array([1.0])
    assert left_out_errors(measured, measured, spot_rc, offset).shape == (len(spot_rc), 1)
    assert left_out_errors(measured, measured, spot_rc, offset).max() == pytest.approx(0.0, abs=1e-12)
    smooth = 20.0 * (1 + spot_rc[:, 1:] / 60)  # a gradient that the neighbours' ratios carry
    noisy = smooth * rng.lognormal(0, 0.5, smooth.shape)
    assert left_out_errors(smooth, smooth * 1.7, spot_rc, offset).mean() < 1e-3  # a constant ratio is predicted
    assert left_out_errors(noisy, smooth, spot_rc, offset).mean() > 0.1


def test_the_simplest_shape_within_half_a_standard_error_is_taken():
    own = np.array([1.0, 0.5, 0.0])
    mean = np.array([[1.00, 1.00, 1.00], [1.04, 0.90, 1.20], [1.08, 1.30, 1.04]])  # mixtures x genes
    standard_error = np.full_like(mean, 0.1)
    # within 0.05 of the least: gene 0 the half mixture (not the flat one, 0.08 above), gene 1 only its least,
    # gene 2 the flat one
    assert list(simplest_within(mean, standard_error, own)) == [1, 1, 2]
    assert list(simplest_within(mean, standard_error, own, tolerance=0.0)) == [0, 1, 0]


def test_each_gene_takes_the_shape_that_predicts_the_spots_it_did_not_see():
    """Per spot window of 9 bins: cells (the shared pattern) vary from spot to spot and bin to bin. An image-borne gene measures what
    its own prediction says; five clone-like genes measure the cells times a smooth field, their own predictions
    are the cells times noise; a gene of tissue area measures a smooth field, its prediction is noise."""
    _, spot_rc = lattice(80, 80)
    rng = np.random.default_rng(2)
    n, bins = len(spot_rc), 9
    cells = rng.lognormal(0, 0.8, (n, 1)) * rng.lognormal(0, 0.5, (n, bins))  # denser at some spots than others
    seen = cells * rng.lognormal(0, 1.0, (n, bins))  # a programme the image shows
    field = 1 + spot_rc[:, 1] / 80  # smooth over the section
    pred = np.concatenate([seen[..., None], cells[..., None] * rng.lognormal(0, 1.0, (n, bins, 5)),
                           rng.lognormal(0, 1.0, (n, bins, 1))], axis=-1)  # fmt: skip
    measured = np.column_stack([seen.sum(1), cells.sum(1)[:, None] * field[:, None] * np.ones(5), bins * field])
    in_disk = np.ones((n, bins), bool)
    windows = [(pred[i : i + 16], in_disk[i : i + 16]) for i in range(0, n, 16)]  # in chunks, in spot order
    shapes = ShapeChoice.fit(windows, measured, spot_rc, bins)
    own = 1 - shapes.shared - shapes.flat
    assert own[0] == 1.0
    assert np.all(shapes.shared[1:6] >= 0.5) and np.all(own[1:6] <= 0.25), shapes
    assert shapes.flat[6] >= 0.75, shapes
    assert np.allclose(shapes.gene_mean, measured.mean(axis=0) / bins)
    mean, spread = pred[:4, 0], 0.1 * pred[:4, 0]
    mixed, scaled = shapes(mean.astype(np.float32), spread.astype(np.float32))
    assert np.allclose(scaled / mixed, 0.1, rtol=1e-5)  # the spread follows the mean
    with pytest.raises(ValueError, match="cover 16 spots"):
        ShapeChoice.fit(windows[:1], measured, spot_rc, bins)
