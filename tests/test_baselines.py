"""The non-learned baselines: interpolation between spots, colour-aware inverse-distance weighting, on bins."""

import numpy as np
import pytest
from scipy.interpolate import CloughTocher2DInterpolator
from scipy.spatial import Delaunay

from histex import baselines, geometry
from histex.baselines import idw_spots, interpolate_spots, spots_on_bins

PITCH = 100.0


@pytest.fixture(scope="module")
def lattice():
    return geometry.hex_lattice(1000.0, 1000.0, pitch=PITCH)


def _inside_hull(spot_xy, n, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1000, size=(4 * n, 2))
    q = q[Delaunay(spot_xy).find_simplex(q) >= 0]
    return q[:n]


def _plane(xy):
    x, y = xy[:, 0], xy[:, 1]
    return np.stack([0.01 * x - 0.005 * y + 20.0, -0.002 * x + 0.02 * y + 3.0], axis=1)


def _quadratic(xy):
    x, y = xy[:, 0] / 1000, xy[:, 1] / 1000
    return np.stack([10 * (x - 0.4) ** 2 + 6 * (y - 0.6) ** 2 + 3 * x * y], axis=1)


# --- interpolation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_plane_is_reproduced_inside_the_hull(lattice, method):
    q = _inside_hull(lattice, 500)
    out = interpolate_spots(lattice, _plane(lattice), q, method=method)
    assert out.dtype == np.float32 and out.shape == (len(q), 2)
    np.testing.assert_allclose(out, _plane(q), atol=1e-4, rtol=0)


def test_nearest_does_not_reproduce_a_plane(lattice):
    q = _inside_hull(lattice, 500)
    out = interpolate_spots(lattice, _plane(lattice), q, method="nearest")
    # Half a pitch off along the gradient is up to 0.5 counts; the plane is not reproduced.
    assert np.abs(out - _plane(q)).max() > 0.1


def test_cubic_beats_linear_on_a_quadratic(lattice):
    q = _inside_hull(lattice, 2000, seed=1)
    truth = _quadratic(q)
    values = _quadratic(lattice)
    err = {
        m: np.sqrt(np.mean((interpolate_spots(lattice, values, q, method=m) - truth) ** 2))
        for m in ("linear", "cubic", "nearest")
    }
    assert err["cubic"] < 0.5 * err["linear"] < 0.5 * err["nearest"]


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_outside_the_hull_falls_back_to_the_nearest_spot(lattice, method):
    values = _quadratic(lattice) + _plane(lattice)[:, :1]
    outside = np.array([[-40.0, 300.0], [1040.0, 520.0], [512.0, -30.0], [527.0, 1100.0], [-200.0, -200.0]])
    assert (Delaunay(lattice).find_simplex(outside) < 0).all()
    out = interpolate_spots(lattice, values, outside, method=method)
    nearest = interpolate_spots(lattice, values, outside, method="nearest")
    np.testing.assert_array_equal(out, nearest)
    idx = np.argmin(((outside[:, None] - lattice[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(nearest, values[idx], rtol=1e-6)


def test_cubic_clips_its_undershoot_to_zero(lattice):
    # A step: the cubic interpolant rings below zero on the empty side of the edge.
    values = np.where(lattice[:, :1] >= 500, 10.0, 0.0)
    q = _inside_hull(lattice, 3000, seed=2)
    raw = CloughTocher2DInterpolator(lattice, values)(q)
    assert np.nanmin(raw) < -1e-3  # the case the clip is for
    out = interpolate_spots(lattice, values, q, method="cubic")
    assert out.min() >= 0
    np.testing.assert_allclose(out, np.maximum(raw, 0), atol=1e-5)


def test_unknown_interpolation_method_is_refused(lattice):
    with pytest.raises(ValueError, match="cubic"):
        interpolate_spots(lattice, _plane(lattice), lattice, method="spline")


# --- inverse-distance weighting in (x, y, colour) ------------------------------------------------------------------

RED, BLUE = np.array([200.0, 80.0, 90.0]), np.array([90.0, 80.0, 200.0])


@pytest.fixture(scope="module")
def two_classes(lattice):
    """Spots red-ish on the left (gene 0 expressed) and blue-ish on the right (gene 1), with a little colour noise."""
    rng = np.random.default_rng(3)
    left = lattice[:, 0] < 500
    colour = np.where(left[:, None], RED, BLUE) + rng.normal(0, 3, size=(len(lattice), 3))
    values = np.stack([np.where(left, 10.0, 0.0), np.where(left, 0.0, 10.0)], axis=1)
    return colour, values


def _boundary_queries():
    # On the left of the boundary (x = 500): the nearest spots are red, but the bins look blue.
    xs, ys = np.meshgrid([410.0, 430.0, 450.0], np.arange(150.0, 900.0, 50.0))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def test_idw_follows_colour_across_a_boundary(lattice, two_classes):
    colour, values = two_classes
    q = _boundary_queries()
    q_colour = np.tile(BLUE, (len(q), 1))
    spatial = idw_spots(lattice, colour, values, q, q_colour, colour_weight=0.0)
    assert spatial.dtype == np.float32 and spatial.shape == (len(q), 2)
    assert (spatial[:, 0] > spatial[:, 1]).all()  # without colour: the nearer (left, red) class wins
    # The classes differ by two colour spreads: at colour_weight=1 that is two pitches, and the blue class outweighs
    # the nearer red one; at colour_weight=2 (four pitches) the red spots drop out of the neighbourhood.
    mild = idw_spots(lattice, colour, values, q, q_colour, colour_weight=1.0)
    assert (mild[:, 1] > mild[:, 0]).all()
    coloured = idw_spots(lattice, colour, values, q, q_colour, colour_weight=2.0)
    assert (coloured[:, 1] > 9.9).all() and (coloured[:, 0] < 0.1).all()
    assert (coloured[:, 1] >= mild[:, 1]).all() and (mild[:, 1] >= spatial[:, 1]).all()
    # And a red-looking bin at the same place stays with the red class.
    red = idw_spots(lattice, colour, values, q, np.tile(RED, (len(q), 1)), colour_weight=2.0)
    assert (red[:, 0] > 9.9).all()


def test_idw_without_colour_is_spatial_idw(lattice, two_classes):
    colour, values = two_classes
    q = _inside_hull(lattice, 300, seed=4)
    rng = np.random.default_rng(5)
    a = idw_spots(lattice, colour, values, q, rng.uniform(0, 255, (len(q), 3)), colour_weight=0.0)
    b = idw_spots(lattice, np.zeros(len(lattice)), values, q, np.ones(len(q)), colour_weight=1.0)  # constant: ignored
    np.testing.assert_allclose(a, b, rtol=1e-6)
    one = idw_spots(lattice, colour, values, q, rng.uniform(0, 255, (len(q), 3)), k=1, colour_weight=0.0)
    np.testing.assert_array_equal(one, interpolate_spots(lattice, values, q, method="nearest"))
    # Brute force for k = 4, power 2.
    d = np.sqrt(((q[:, None] - lattice[None]) ** 2).sum(-1))
    nn = np.argsort(d, axis=1)[:, :4]
    w = 1 / np.take_along_axis(d, nn, axis=1) ** 2
    expected = (w[..., None] * values[nn]).sum(1) / w.sum(1, keepdims=True)
    got = idw_spots(lattice, colour, values, q, colour[:1].repeat(len(q), 0), k=4, colour_weight=0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_idw_exact_hit_returns_the_spot(lattice, two_classes):
    colour, _ = two_classes
    values = np.random.default_rng(6).gamma(2.0, 3.0, size=(len(lattice), 5))
    pick = np.array([0, 17, 40, len(lattice) - 1])
    out = idw_spots(lattice, colour, values, lattice[pick], colour[pick], k=10, colour_weight=1.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, values[pick], rtol=1e-6)
    # Two spots at the same place and colour: their mean.
    xy2, col2 = np.vstack([lattice, lattice[:1]]), np.vstack([colour, colour[:1]])
    vals2 = np.vstack([values, values[:1] + 2.0])
    out = idw_spots(xy2, col2, vals2, lattice[:1], colour[:1], pitch=PITCH)
    np.testing.assert_allclose(out[0], values[0] + 1.0, rtol=1e-6)


def test_idw_is_a_convex_combination(lattice, two_classes):
    colour, _ = two_classes
    values = np.random.default_rng(7).gamma(1.0, 2.0, size=(len(lattice), 3))
    q = np.random.default_rng(8).uniform(-100, 1100, size=(400, 2))
    out = idw_spots(lattice, colour, values, q, np.random.default_rng(9).uniform(0, 255, (400, 3)), k=7)
    assert (out >= 0).all() and (out <= values.max(0) + 1e-4).all()
    # k larger than the number of spots uses them all.
    few = idw_spots(lattice[:3], colour[:3], values[:3], q, colour[:1].repeat(len(q), 0), k=50, power=0)
    np.testing.assert_allclose(few, np.tile(values[:3].mean(0), (len(q), 1)), rtol=1e-5)


def test_idw_refuses_bad_input(lattice, two_classes):
    colour, values = two_classes
    with pytest.raises(ValueError, match="channels"):
        idw_spots(lattice, colour, values, lattice, colour[:, :2])
    with pytest.raises(ValueError, match="k must"):
        idw_spots(lattice, colour, values, lattice, colour, k=0)
    with pytest.raises(ValueError, match="colour_weight"):
        idw_spots(lattice, colour, values, lattice, colour, colour_weight=-1)
    with pytest.raises(ValueError, match="values"):
        idw_spots(lattice, colour, values[:-1], lattice, colour)


# --- on the bins of a super_resolve table --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    import histex as hx

    sdata = hx.datasets.toy(size_um=720, n_genes=20, seed=1)
    hx.pp.extract_features(sdata, show_progress=False)
    hx.tl.super_resolve(sdata, epochs=2, n_states=1, show_progress=False)
    return sdata


def _spot_counts(sdata):
    from histex import _sdata

    table = sdata.tables["histex"]
    meta = table.uns["histex"]["data"]
    spots = _sdata.read_spots(sdata, meta["spots_key"], meta["table_key"], meta["image_key"], meta["coordinate_system"])
    x = spots.table[:, table.var_names].X
    return spots, np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float), meta


@pytest.mark.parametrize("method", baselines.BASELINE_METHODS)
def test_spots_on_bins_all_methods(fitted, method):
    table = fitted.tables["histex"]
    out = spots_on_bins(fitted, method=method)
    assert out.shape == table.shape
    assert list(out.var_names) == list(table.var_names)
    np.testing.assert_array_equal(out.obs["array_row"], table.obs["array_row"])
    np.testing.assert_array_equal(out.obs["array_col"], table.obs["array_col"])
    assert out.X.dtype == np.float32 and np.isfinite(out.X).all() and (out.X >= 0).all()
    _, counts, meta = _spot_counts(fitted)
    # Counts per bin: the mean over bins is about the mean spot count per bin of a spot.
    expected = counts.sum() / len(counts) / float(meta["bins_per_spot"]) * out.n_obs
    assert 0.5 < out.X.sum() / expected < 2.0


def test_spots_on_bins_reads_the_layer_that_was_fitted(fitted):
    """Spots fitted from a layer, with log-normalised values in X, are placed on the bins from that layer."""
    import spatialdata as sd

    import histex as hx

    sdata = sd.deepcopy(fitted)
    spots = sdata.tables["table"]
    counts = np.asarray(spots.X.toarray() if hasattr(spots.X, "toarray") else spots.X, dtype=np.float32)
    spots.layers["counts"] = counts.copy()
    spots.X = np.log1p(counts)
    hx.tl.super_resolve(sdata, layer="counts", epochs=1, n_states=1, show_progress=False)
    from_layer = spots_on_bins(sdata, method="nearest")
    np.testing.assert_allclose(from_layer.X, spots_on_bins(fitted, method="nearest").X, rtol=1e-6)


def test_spots_on_bins_idw_plumbing(fitted):
    # Without colour and with one neighbour, IDW is the nearest spot.
    nearest = spots_on_bins(fitted, method="nearest")
    one = spots_on_bins(fitted, method="idw", k=1, colour_weight=0.0)
    assert np.mean(np.isclose(one.X, nearest.X, rtol=1e-5).all(axis=1)) > 0.99
    # With colour it is another estimate.
    assert not np.allclose(
        spots_on_bins(fitted, method="idw").X, spots_on_bins(fitted, method="idw", colour_weight=0).X
    )


def test_spot_colours_are_disk_means(fitted):
    from histex._sdata import image_array

    table = fitted.tables["histex"]
    spots, _, meta = _spot_counts(fitted)
    bin_rgb, spot_rgb = baselines._bin_and_spot_colours(fitted, table, meta, spots.xy_px)
    rgb = np.asarray(image_array(fitted, meta["features_key"]).sel(c=list(baselines.RGB_CHANNELS)).data, dtype=float)
    rows, cols = table.obs["array_row"].to_numpy(), table.obs["array_col"].to_numpy()
    np.testing.assert_allclose(bin_rgb, rgb[:, rows, cols].T, rtol=1e-6)
    # Brute force: bins whose centre lies within the spot radius of the spot centre (both in bin coordinates).
    rr, cc = np.meshgrid(np.arange(rgb.shape[1]), np.arange(rgb.shape[2]), indexing="ij")
    centres = np.stack([rr.ravel() + 0.5, cc.ravel() + 0.5], axis=1)
    spot_rc = spots.xy_px[:, ::-1] / float(meta["bin_px"])
    for i in range(0, len(spot_rc), 7):
        inside = ((centres - spot_rc[i]) ** 2).sum(1) <= float(meta["radius_bins"]) ** 2
        assert inside.any()
        np.testing.assert_allclose(spot_rgb[i], rgb.reshape(3, -1)[:, inside].mean(1), rtol=1e-6)
    assert spot_rgb.std(axis=0).min() > 0  # the toy's spots differ in colour


def test_spots_on_bins_refuses_unknown_method(fitted):
    with pytest.raises(ValueError, match="idw"):
        spots_on_bins(fitted, method="kriging")
