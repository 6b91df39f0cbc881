"""Known answers for the metrics of the pseudo-Visium protocol: Pearson, masked SSIM and min–max RMSE."""

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from histex import metrics

C1, C2 = 0.01**2, 0.03**2


def grid(n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return rr.ravel(), cc.ravel()


def minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(0)
    rows, cols = grid(30, 40)
    # smooth structure plus noise, five genes
    base = np.sin(rows[:, None] / (3.0 + np.arange(5))) + np.cos(cols[:, None] / 5.0)
    return base + 0.3 * rng.random(base.shape), rows, cols


@pytest.mark.parametrize("sigma", [None, 1.5])
def test_identical_maps_score_perfectly(maps, sigma):
    x, rows, cols = maps
    np.testing.assert_allclose(metrics.ssim_per_gene(x, x, rows, cols, sigma=sigma), 1.0, atol=1e-12)
    np.testing.assert_allclose(metrics.rmse_per_gene(x, x), 0.0, atol=1e-12)
    np.testing.assert_allclose(metrics.pearson_per_gene(x, x), 1.0, atol=1e-12)


def test_affine_transform_scores_perfectly(maps):
    """Both maps are min–max scaled separately, so a * x + b (a > 0) is the same map."""
    x, rows, cols = maps
    y = 3.5 * x + 10.0
    np.testing.assert_allclose(metrics.rmse_per_gene(y, x), 0.0, atol=1e-12)
    np.testing.assert_allclose(metrics.pearson_per_gene(y, x), 1.0, atol=1e-12)
    np.testing.assert_allclose(metrics.ssim_per_gene(y, x, rows, cols), 1.0, atol=1e-12)


def test_negated_map(maps):
    x, rows, cols = maps
    np.testing.assert_allclose(metrics.pearson_per_gene(-x, x), -1.0, atol=1e-12)
    # scaled(-x) = 1 - scaled(x), so the error is the RMS of 1 - 2 scaled(x)
    s = np.stack([minmax(col) for col in x.T], axis=1)
    np.testing.assert_allclose(metrics.rmse_per_gene(-x, x), np.sqrt(np.mean((1 - 2 * s) ** 2, axis=0)))
    assert (metrics.ssim_per_gene(-x, x, rows, cols) < 0).all()


def test_ssim_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(1)
    rows, cols = grid(80, 80)
    x, y = rng.random((rows.size, 3)), rng.random((rows.size, 3))
    for sigma in (None, 1.5):
        s = metrics.ssim_per_gene(x, y, rows, cols, sigma=sigma)
        assert np.abs(s).max() < 0.05, s


def test_rmse_known_answer_and_constant_maps():
    truth = np.array([[0.0, 2.0, 5.0], [1.0, 2.0, 5.0], [4.0, 2.0, 5.0]])
    pred = np.array([[2.0, 7.0, 3.0], [0.0, 7.0, 3.0], [2.0, 7.0, 3.0]])
    # gene 0: scaled pred (1, 0, 1), scaled truth (0, .25, 1); gene 1: constant vs constant -> both 0
    # gene 2: same constants -> 0; constant pred vs varied truth below
    expected0 = np.sqrt((1 + 0.25**2 + 0) / 3)
    np.testing.assert_allclose(metrics.rmse_per_gene(pred, truth), [expected0, 0.0, 0.0])
    const = np.full((3, 1), 9.0)
    np.testing.assert_allclose(metrics.rmse_per_gene(const, truth[:, :1]), np.sqrt((0 + 0.25**2 + 1) / 3))
    r = metrics.pearson_per_gene(pred, truth)
    assert np.isnan(r[1]) and np.isnan(r[2])


def test_ssim_is_not_inflated_by_background():
    """Two maps that agree on a large zero background and are unrelated in the tissue."""
    rng = np.random.default_rng(2)
    rows, cols = grid(60, 60)
    tissue = (np.abs(rows - 30) < 8) & (np.abs(cols - 30) < 8)  # 15 x 15 of 3600 bins
    x = np.where(tissue[:, None], rng.random((rows.size, 4)), 0.0)
    y = np.where(tissue[:, None], rng.random((rows.size, 4)), 0.0)
    naive = metrics.ssim_per_gene(x, y, rows, cols)  # zero-filled background counted as data
    masked = metrics.ssim_per_gene(x, y, rows, cols, mask=tissue)
    assert (naive > 0.9).all(), naive
    assert np.abs(masked).max() < 0.1, masked
    # leaving the background bins out is the same as masking them
    np.testing.assert_allclose(metrics.ssim_per_gene(x[tissue], y[tissue], rows[tissue], cols[tissue]), masked)
    # and the values outside the mask do not matter at all
    y_bg = np.where(tissue[:, None], y, rng.random(y.shape) * 100)
    np.testing.assert_allclose(metrics.ssim_per_gene(x, y_bg, rows, cols, mask=tissue), masked)


def test_ssim_with_window_of_one_bin_is_the_pointwise_formula():
    """With a 1 x 1 window the variances and covariance vanish and SSIM is (2xy + C1) / (x^2 + y^2 + C1)."""
    rows, cols = np.array([0, 0, 1, 5]), np.array([0, 1, 0, 3])
    pred = np.array([[1.0], [3.0], [2.0], [5.0]])  # scaled: 0, .5, .25, 1
    truth = np.array([[10.0], [0.0], [40.0], [20.0]])  # scaled: .25, 0, 1, .5
    x, y = np.array([0.0, 0.5, 0.25, 1.0]), np.array([0.25, 0.0, 1.0, 0.5])
    expected = np.mean((2 * x * y + C1) / (x**2 + y**2 + C1))
    np.testing.assert_allclose(metrics.ssim_per_gene(pred, truth, rows, cols, window=1), [expected], rtol=1e-12)


def test_ssim_of_one_full_window_is_the_global_formula():
    """A 3 x 3 tissue block in a grid of background bins, window 3, min_support 1: only the centre bin counts and
    its window is the whole block, so SSIM is the global formula over the nine values (population moments)."""
    rng = np.random.default_rng(3)
    rows, cols = grid(7, 7)
    tissue = (rows >= 2) & (rows <= 4) & (cols >= 3) & (cols <= 5)
    pred = rng.random((rows.size, 2)) * 50  # background values are garbage and must be ignored
    truth = rng.random((rows.size, 2)) * 50
    got = metrics.ssim_per_gene(pred, truth, rows, cols, mask=tissue, window=3, min_support=1.0)
    for g in range(2):
        x, y = minmax(pred[tissue, g]), minmax(truth[tissue, g])
        mx, my = x.mean(), y.mean()
        vx, vy, cxy = x.var(), y.var(), np.mean((x - mx) * (y - my))
        expected = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
        assert got[g] == pytest.approx(expected, rel=1e-10)
    # no bin has a whole 5 x 5 window in tissue
    assert np.isnan(metrics.ssim_per_gene(pred, truth, rows, cols, mask=tissue, window=5, min_support=1.0)).all()


def test_ssim_matches_scikit_image_on_a_full_grid():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(4)
    rows, cols = grid(40, 50)
    x = minmax(rng.random((40, 50)))
    y = minmax(rng.random((40, 50)) + 0.5 * x)
    got = metrics.ssim_per_gene(x.reshape(-1, 1), y.reshape(-1, 1), rows, cols, min_support=1.0)
    ref = structural_similarity(x, y, data_range=1.0, use_sample_covariance=False)
    assert got[0] == pytest.approx(ref, rel=1e-10)


def test_pearson_per_bin_known_answers():
    pred = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    truth = np.array([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]])
    r = metrics.pearson_per_bin(pred, truth)
    # last bin: deviations (-1, 0, 1) and (-1, 1, 0): covariance 1, variances 2 and 2 -> 0.5
    np.testing.assert_allclose(r[[0, 1, 3]], [1.0, -1.0, 0.5])
    assert np.isnan(r[2])


def make_tables(seed: int = 5):
    """A truth table on a 12 x 14 grid with an in-tissue region and wild out-of-tissue values, and a prediction on
    the same bins in shuffled order (out-of-tissue bins included) with known relations per gene."""
    rng = np.random.default_rng(seed)
    rows, cols = grid(12, 14)
    in_tissue = (rows >= 2) & (rows <= 9) & (cols >= 1) & (cols <= 11)
    base = rng.random((rows.size, 3))
    truth_x = np.where(in_tissue[:, None], base, 1000 * rng.random(base.shape))
    pred_x = np.stack([2.0 * base[:, 0] + 1.0, -base[:, 1], rng.random(rows.size)], axis=1)
    pred_x[~in_tissue] = -1000 * rng.random(((~in_tissue).sum(), 3))
    obs = pd.DataFrame({"array_row": rows, "array_col": cols, "in_tissue": in_tissue})
    obs.index = obs.index.astype(str)
    truth = AnnData(truth_x, obs=obs.copy(), var=pd.DataFrame(index=["a", "b", "c"]))
    order = rng.permutation(rows.size)
    pred = AnnData(pred_x[order], obs=obs.iloc[order].copy(), var=pd.DataFrame(index=["a", "b", "c"]))
    return pred, truth, pred_x[in_tissue], base[in_tissue], rows[in_tissue], cols[in_tissue]


def test_score_on_tables_with_shuffled_bins():
    pred, truth, p, t, rows, cols = make_tables()
    df = metrics.score(pred, truth)
    assert list(df.index) == ["a", "b", "c"] and list(df.columns) == ["pearson", "ssim", "rmse"]
    assert df.loc["a"].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-10)
    assert df.loc["b", "pearson"] == pytest.approx(-1.0)
    # every value equals the array functions on the in-tissue bins in grid order
    np.testing.assert_allclose(df["pearson"], metrics.pearson_per_gene(p, t))
    np.testing.assert_allclose(df["ssim"], metrics.ssim_per_gene(p, t, rows, cols))
    np.testing.assert_allclose(df["rmse"], metrics.rmse_per_gene(p, t))
    # an unrelated gene on 88 bins: far from the perfect score
    assert abs(df.loc["c", "pearson"]) < 0.5 and abs(df.loc["c", "ssim"]) < 0.5 and df.loc["c", "rmse"] > 0.2
    # a subset of genes, in the order asked
    sub = metrics.score(pred, truth, genes=["c", "a"])
    pd.testing.assert_frame_equal(sub, df.loc[["c", "a"]])


def test_summarise_skips_nan():
    df = pd.DataFrame({"pearson": [1.0, np.nan, 0.5], "ssim": [np.nan, np.nan, np.nan], "rmse": [0.0, 0.2, 0.4]})
    s = metrics.summarise(df)
    assert s["pearson"] == pytest.approx(0.75) and s["rmse"] == pytest.approx(0.2) and np.isnan(s["ssim"])
    pred, truth, *_ = make_tables()
    s = metrics.summarise(metrics.score(pred, truth))
    assert set(s) == {"pearson", "ssim", "rmse"}
    assert s["pearson"] == pytest.approx(metrics.mean_pearson(pred, truth))


def test_bad_input():
    rows, cols = grid(4, 5)
    x = np.zeros((20, 2))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.ssim_per_gene(x, np.zeros((20, 3)), rows, cols)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.rmse_per_gene(x, np.zeros((19, 2)))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.pearson_per_bin(x, np.zeros((20, 3)))
    with pytest.raises(ValueError, match="n_bins, n_genes"):
        metrics.rmse_per_gene(np.zeros(20), np.zeros(20))
    with pytest.raises(ValueError, match="mask must have shape"):
        metrics.ssim_per_gene(x, x, rows, cols, mask=np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        metrics.ssim_per_gene(x, x, rows, cols, mask=np.ones(19, bool))
    with pytest.raises(ValueError, match="rows and cols"):
        metrics.ssim_per_gene(x, x, rows[:-1], cols)
    with pytest.raises(ValueError, match="integer"):
        metrics.ssim_per_gene(x, x, rows + 0.5, cols)
    with pytest.raises(ValueError, match="share a grid position"):
        metrics.ssim_per_gene(x, x, np.zeros(20, int), cols)
    with pytest.raises(ValueError, match="odd positive"):
        metrics.ssim_per_gene(x, x, rows, cols, window=4)
    with pytest.raises(ValueError, match="min_support"):
        metrics.ssim_per_gene(x, x, rows, cols, min_support=1.5)
    with pytest.raises(ValueError, match="sigma"):
        metrics.ssim_per_gene(x, x, rows, cols, sigma=0.0)
    pred, truth, *_ = make_tables()
    other = AnnData(pred.X, obs=pred.obs, var=pd.DataFrame(index=["x", "y", "z"]))
    with pytest.raises(ValueError, match="share no genes"):
        metrics.score(other, truth)
