"""Refitting a trained ensemble's output layer to a new section's spots (histex.model.readout)."""

import numpy as np
import pytest
import torch
from tests.test_model import _toy_problem

from histex.model import FitConfig, predict, refit_readout, ridge_gcv, train
from histex.model.predict import median_of_states
from histex.model.readout import PENALTIES, _whitening


def test_ridge_gcv_fits_signal_and_leaves_noise_alone():
    rng = np.random.default_rng(0)
    n, p = 400, 20
    x = rng.normal(size=(n, p)) * np.linspace(0.2, 3, p)
    beta = rng.normal(size=p)
    signal = x @ beta + 2.0 + rng.normal(scale=0.5, size=n)
    noise = rng.normal(scale=1.0, size=n) + 5.0
    coef, intercept, penalty, refitted = ridge_gcv(x, np.stack([signal, noise], axis=1))
    assert refitted.tolist() == [True, False]
    assert np.corrcoef(coef[:, 0], beta)[0, 1] > 0.99 and intercept[0] == pytest.approx(2.0, abs=0.2)
    assert np.all(coef[:, 1] == 0) and intercept[1] == pytest.approx(noise.mean())  # the intercept alone
    assert penalty in PENALTIES and penalty < PENALTIES[-1]
    # more noise, more shrinkage
    *_, noisier, _ = ridge_gcv(x, (x @ beta + rng.normal(scale=20, size=n))[:, None])
    assert noisier > penalty


def test_whitening_gives_unit_covariance_and_drops_dead_units():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    h = np.column_stack([h, np.zeros(500)])  # a dead unit
    cov = np.cov(h, rowvar=False)
    w = _whitening(cov)
    assert w.shape == (7, 6)
    np.testing.assert_allclose(w.T @ cov @ w, np.eye(6), atol=1e-8)


def test_median_of_states_is_torchs_median():
    torch.manual_seed(0)
    for n in (1, 2, 3, 4, 5, 6):
        x = torch.randn(n, 7, 11, 5)
        x[:, 0, 0] = 0.5  # ties
        assert torch.equal(median_of_states(x), x.median(dim=0).values)


def _scores(pred, truth):
    return float(np.corrcoef(pred.ravel(), truth.ravel())[0, 1])


@pytest.mark.slow
def test_refit_readout_relearns_a_gene_the_head_lost():
    """A trained ensemble whose head no longer reads the gene (weights zeroed): the refit, from the spots alone,
    restores the map from the hidden layer to the gene; the ensemble given is left as it was."""
    problem, truth = _toy_problem()
    config = FitConfig(epochs=40, n_states=2, lr=1e-3, hidden=(32, 32), dim=16, heads=2, stride=7,
                       device="cpu", show_progress=False, carry_context=True, context_skip=True)  # fmt: skip
    ensemble, _ = train(problem, config)
    trained = _scores(predict(ensemble, problem, config).mean[:, 0], truth)
    assert trained > 0.6
    lost = ensemble.with_params({"head.linear.weight": torch.zeros_like(ensemble.params["head.linear.weight"])})
    before = {k: v.clone() for k, v in lost.params.items()}
    assert np.std(predict(lost, problem, config).mean) < 1e-6  # a constant: the head reads nothing

    refitted, fit = refit_readout(lost, problem, config)
    assert all(torch.equal(before[k], lost.params[k]) for k in before)  # the ensemble given is unchanged
    assert fit.n_spots == len(problem.spot_rc) and fit.refitted.all() and fit.penalty.shape == (2,)
    restored = _scores(predict(refitted, problem, config).mean[:, 0], truth)
    assert restored > trained - 0.1
    assert fit.summary()["genes_refitted"] == 1


def test_refit_readout_needs_spots():
    problem, _ = _toy_problem()
    config = FitConfig(epochs=1, n_states=1, hidden=(8,), dim=8, heads=2, device="cpu", show_progress=False)
    ensemble, _ = train(problem, config)
    from dataclasses import replace

    empty = replace(problem, spot_rc=np.zeros((0, 2)), targets=np.zeros((0, 1), np.float32))
    with pytest.raises(ValueError, match="needs spots"):
        refit_readout(ensemble, empty, config)
