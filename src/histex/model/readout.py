"""Refit a trained ensemble's output layer to the spots of a new section: closed-form ridge regression.

A model applied to another section reads that section through the features and hidden layers it learned, and maps
them to genes with its linear head. Where the new section holds a cell type that the training sections barely had,
the hidden layers may tell it apart while the head, fitted on sections where its genes hardly varied, does not map it
to them. The section's spots measure those genes: each head is refitted to them, shrunk towards the trained head,
with every other weight kept. The shrinkage is chosen by generalised cross-validation, and a gene the spots do not
inform keeps the trained head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from histex.model.ensemble import Ensemble
from histex.model.fit import FitConfig, Problem, SpotLoss, resolve_device, windows_per_step
from histex.nn._networks import positive_head

#: Ridge penalties tried, per spot, on the whitened hidden layer (unit variance over bins).
PENALTIES = np.logspace(-4, 2, 25)


@dataclass
class ReadoutFit:
    """How the heads were refitted to a section's spots: each state's ridge penalty (per spot, on the whitened
    hidden layer), which genes each state refitted (the others kept the trained head and moved its intercept
    only), and the spots used.
    """

    penalty: np.ndarray  # (n_states,)
    refitted: np.ndarray  # (n_states, n_genes) bool
    n_spots: int

    def summary(self) -> dict:
        """What the refit did, for ``uns``: the spots, each state's penalty and how many genes were refitted."""
        return {
            "n_spots": self.n_spots,
            "penalty": [float(p) for p in self.penalty],
            "genes_refitted": int(self.refitted.any(axis=0).sum()),
        }


@torch.no_grad()
def refit_readout(ensemble: Ensemble, problem: Problem, config: FitConfig) -> tuple[Ensemble, ReadoutFit]:
    """A copy of ``ensemble`` whose heads are refitted to ``problem``'s spots; ``ensemble`` is unchanged.

    Each spot is seen as in training: the window centred on it, its own measurement left out of its context, its
    prediction the mean over the bins of its disk. For each state, the residuals of the spots' scaled counts from
    the trained prediction are regressed on the spots' mean last hidden layer, with an intercept, by ridge
    regression (:func:`ridge_gcv`). The hidden layer is first whitened with its covariance over the bins of the
    disks, not over the spots: a direction that varies between bins but averages out within every spot would
    otherwise cost little at the spots and add noise at every bin. The change is added to the head's weights; the
    head's activation is the identity above zero, so a change of its linear map is a change of the expression.
    """
    if len(problem.spot_rc) < 3:
        raise ValueError(f"Refitting the readout needs spots; the section has {len(problem.spot_rc)}.")
    device = resolve_device(config.device)
    spot_loss = SpotLoss(problem, config, device)
    ensemble.eval()
    n_spots, n_states = len(problem.spot_rc), ensemble.n_states
    weight = ensemble.params["head.linear.weight"].detach()  # (states, genes, width)
    bias = ensemble.params["head.linear.bias"].detach()
    width = weight.shape[-1]
    step = windows_per_step(config, device)
    spot_hidden, spot_pred = [], []
    second = torch.zeros(n_states, width, width, dtype=torch.float64)
    first = torch.zeros(n_states, width, dtype=torch.float64)
    count = 0.0
    for start in range(0, n_spots, step):
        spots = np.arange(start, min(start + step, n_spots))
        hidden, mask = spot_loss.window_outputs(ensemble, spots, hidden=True)  # (states, n, bins, width)
        pred = torch.stack([positive_head(hidden[i], weight[i].float(), bias[i].float()) for i in range(n_states)])
        in_disk = mask[..., None]
        spot_pred.append(((pred * in_disk).sum(2) / in_disk.sum(2)).cpu().double())
        in_disk_hidden = hidden * in_disk  # the mask is 0 or 1: bins outside the disks add nothing below
        spot_hidden.append((in_disk_hidden.sum(2) / in_disk.sum(2)).cpu().double())
        weighted = in_disk_hidden.flatten(1, 2)
        second += (weighted.transpose(1, 2) @ weighted).cpu().double()
        first += weighted.sum(1).cpu().double()
        count += float(mask[0].sum())
    spot_hidden = torch.cat(spot_hidden, dim=1).numpy()  # (states, spots, width)
    residual = problem.targets[None].astype(np.float64) - torch.cat(spot_pred, dim=1).numpy()
    bin_mean = (first / count).numpy()
    bin_cov = (second / count).numpy() - bin_mean[:, :, None] * bin_mean[:, None, :]
    new_weight, new_bias, penalties, refitted = weight.clone(), bias.clone(), [], []
    for state in range(n_states):
        whiten = _whitening(bin_cov[state])  # (width, rank): x @ whiten has unit covariance over bins
        coef, intercept, penalty, genes = ridge_gcv(spot_hidden[state] @ whiten, residual[state])
        change = whiten @ coef  # (width, genes)
        new_weight[state] += torch.from_numpy(change.T).to(weight)
        new_bias[state] += torch.from_numpy(intercept).to(bias)
        penalties.append(penalty)
        refitted.append(genes)
    ensemble = ensemble.with_params({"head.linear.weight": new_weight, "head.linear.bias": new_bias})
    return ensemble, ReadoutFit(penalty=np.asarray(penalties), refitted=np.stack(refitted), n_spots=n_spots)


def _whitening(cov: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """``W`` ``(p, rank)`` with ``W.T @ cov @ W = I`` over the directions whose variance exceeds ``floor`` times the
    largest (dead units and exact dependencies are dropped).
    """
    eig, vec = np.linalg.eigh((cov + cov.T) / 2)
    keep = eig > floor * max(eig.max(), 0.0)
    return vec[:, keep] / np.sqrt(eig[keep])


def ridge_gcv(x: np.ndarray, y: np.ndarray, penalties: np.ndarray = PENALTIES):
    """Ridge regression of every column of ``y`` ``(n, genes)`` on ``x`` ``(n, p)`` with an intercept.

    One penalty for all columns, ``penalty * n`` with ``penalty`` the one of ``penalties`` of least generalised
    cross-validation error (Golub, Heath & Wahba 1979) summed over the columns; a column whose error is lower with
    the intercept alone keeps only that. (A penalty per column, each by its own error, was less accurate where few
    spots estimate each error; the method page gives the figures.)

    Returns the coefficients ``(p, genes)`` (zero for the columns left with their intercept), the intercepts
    ``(genes,)``, the penalty, and which columns were refitted ``(genes,)``.
    """
    n = len(x)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    eig = s**2
    uty = u.T @ yc  # (k, genes)
    total = (yc**2).sum(axis=0)
    shrink = eig[None, :] / (eig[None, :] + penalties[:, None] * n)  # (penalties, k)
    # Residual sum of squares and effective degrees of freedom of each penalty; +1 for the intercept.
    rss = total[None, :] - ((2 * shrink - shrink**2) @ uty**2)
    dof = shrink.sum(axis=1) + 1
    gcv = n * np.maximum(rss, 0) / np.maximum(n - dof, 1)[:, None] ** 2  # (penalties, genes)
    best = int(gcv.sum(axis=1).argmin())
    refitted = gcv[best] < n * total / (n - 1) ** 2
    coef = np.zeros((x.shape[1], y.shape[1]))
    coef[:, refitted] = vt.T @ ((s / (eig + penalties[best] * n))[:, None] * uty[:, refitted])
    return coef, y_mean - x_mean @ coef, float(penalties[best]), refitted
