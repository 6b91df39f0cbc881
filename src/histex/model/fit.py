"""Training an ensemble of HISTEX networks from spots. Arrays in, arrays out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from histex import geometry
from histex._device import resolve_device
from histex.model.context import ContextPoints, nearest_context
from histex.model.ensemble import Ensemble, compute_dtype
from histex.nn import HistexNet, ImageOnlyNet

logger = logging.getLogger("histex")


@dataclass
class Problem:
    """Everything the network learns from, on the bin grid (positions in bin coordinates ``(row, col)``)."""

    features: np.ndarray  # (rows, cols, n_features) float32, standardised (histex.model.features)
    tissue: np.ndarray  # (rows, cols) bool
    spot_rc: np.ndarray  # (n_spots, 2) spot centres
    radius_bins: float
    targets: np.ndarray  # (n_spots, n_genes) scaled spot expression
    context: ContextPoints | None  # None: image only


@dataclass
class FitConfig:
    """Settings of one fit; see :func:`histex.tl.super_resolve` for their meaning."""

    use_context: bool = True
    epochs: int = 100
    n_states: int = 5
    batch_size: int | None = None
    lr: float = 1e-4
    k_context: int = 5
    window: int = 7
    stride: int = 7
    context_dropout: str = "self"
    hidden: tuple[int, ...] = (1024, 512, 512, 512)
    nonlinear: bool = True
    carry_context: bool = False
    context_skip: bool = False
    fusion_dropout: float = 0.0
    dim: int = 128
    heads: int = 8
    holdout: float = 0.0
    patience: int = 10
    precision: str = "auto"
    seed: int = 0
    device: str | torch.device | None = None
    predict_batch_size: int | None = None  # windows per prediction step; None: 2048 on a GPU, 256 elsewhere
    show_progress: bool = True


class _TokenGrid:
    """The bins' feature tokens as one table, from which windows are gathered by index.

    On the CPU the table is a view of the features, not a copy. A window that reaches past the grid gets zero
    tokens there.
    """

    def __init__(self, features: np.ndarray, window: int, device: torch.device):
        rows, cols, d = features.shape
        self.shape = (rows, cols)
        self.flat = torch.from_numpy(np.ascontiguousarray(features).reshape(rows * cols, d)).to(device)
        self.offsets = geometry.window_offsets(window)

    def indices(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices ``(n, window**2)`` of the windows centred on ``anchors`` ``(n, 2)`` (row, col), and which
        of them lie on the grid (the others index bin 0 and must be zeroed)."""
        rows, cols = self.shape
        r = anchors[:, None, 0] + self.offsets[None, :, 0]
        c = anchors[:, None, 1] + self.offsets[None, :, 1]
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        return np.where(inside, r * cols + c, 0).astype(np.int64), inside

    def gather(self, index: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
        """Tokens ``(..., window**2, d)`` at ``index``; ``inside`` (same shape, or None when all are) zeroes the
        positions off the grid."""
        tokens = self.flat[index]
        return tokens if inside is None else tokens * inside[..., None]


def embedding_dim(config: FitConfig) -> int:
    """Width of the embedding the network of :func:`build_network` returns beside its expression."""
    return config.dim if config.use_context else config.hidden[-1]


def build_network(config: FitConfig, n_features: int, n_genes: int) -> torch.nn.Module:
    if config.use_context:
        return HistexNet(
            n_features,
            n_genes,
            dim=config.dim,
            heads=config.heads,
            hidden=config.hidden,
            nonlinear=config.nonlinear,
            carry_context=config.carry_context,
            context_skip=config.context_skip,
            fusion_dropout=config.fusion_dropout,
        )
    return ImageOnlyNet(n_features, n_genes, hidden=config.hidden, nonlinear=config.nonlinear)


def default_batch_size(n_spots: int) -> int:
    """``min(32, n_spots // 16)``, at least 1 (paper)."""
    return max(1, min(32, n_spots // 16))


def _training_windows(problem: Problem, window: int) -> tuple[np.ndarray, np.ndarray]:
    anchors, masks = geometry.disk_masks(problem.spot_rc, problem.radius_bins, window)
    # Bins beyond the grid are not bins: leave them out of the spot's mean.
    rows, cols = problem.tissue.shape
    rc = anchors[:, None, :] + geometry.window_offsets(window)[None]
    inside = (rc[..., 0] >= 0) & (rc[..., 0] < rows) & (rc[..., 1] >= 0) & (rc[..., 1] < cols)
    return anchors, masks & inside


def bins_per_spot(problem: Problem, window: int) -> float:
    """Mean number of bins in a spot's disk: the divisor that maps spot counts to counts per bin."""
    return float(_training_windows(problem, window)[1].sum(axis=1).mean())


@dataclass
class History:
    """The loss of every state at every epoch run: on its training spots and on the spots it held out."""

    loss: np.ndarray  # (n_states, epochs run)
    validation: np.ndarray  # (n_states, epochs run); empty without held-out spots
    best_epoch: np.ndarray  # (n_states,) 1-based epoch whose parameters each state keeps

    @property
    def epochs(self) -> int:
        return self.loss.shape[1]


def holdout_split(n_spots: int, n_states: int, share: float, seed: int) -> list[np.ndarray]:
    """The spots each state holds out: ``share`` of them, disjoint between states while there are enough.

    State ``i`` holds out the ``i``-th slice of one random order, so that the ensemble as a whole learns from every
    spot; with fewer than ``share * n_states`` spots' worth the slices wrap around.
    """
    if not 0 <= share < 1:
        raise ValueError(f"holdout must be in [0, 1), got {share}.")
    n_held = 0 if share == 0 else max(1, round(share * n_spots))
    if n_held >= n_spots:
        raise ValueError(f"holdout={share} leaves no spot to train on ({n_spots} spots).")
    order = np.random.default_rng(seed).permutation(n_spots)
    return [np.sort(order[(i * n_held + np.arange(n_held)) % n_spots]) for i in range(n_states)]


def train(problem: Problem, config: FitConfig) -> tuple[Ensemble, History]:
    """Train ``n_states`` independently seeded networks together.

    Each state holds out ``config.holdout`` of the spots and keeps the parameters of the epoch with the lowest
    loss on them; training stops when no state has improved for ``config.patience`` epochs, or after
    ``config.epochs``. Without held-out spots every state trains on all spots for ``config.epochs`` epochs.
    """
    device = resolve_device(config.device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # seeding the states must not change the caller's RNG
        return _train(problem, config, device)


class _SpotLoss:
    """Each state's loss on spots: the mean squared error between the spot's target and the mean of the network's
    predictions over the bins of its disk."""

    def __init__(self, problem: Problem, config: FitConfig, device: torch.device):
        self.device, self.use_context = device, config.use_context
        self.grid = _TokenGrid(problem.features, config.window, device)
        anchors, masks = _training_windows(problem, config.window)
        index, inside = self.grid.indices(anchors)
        self.token_idx = torch.from_numpy(index).to(device)
        self.token_inside = torch.from_numpy(inside.astype(np.float32)).to(device)
        self.off_grid = ~inside.all(axis=1)  # most spots' windows lie wholly on the grid: no zeroing for them
        self.mask = torch.from_numpy(masks.astype(np.float32)).to(device)
        self.targets = torch.from_numpy(problem.targets).to(device)
        if config.use_context:
            n_spots = len(problem.targets)
            exclude = np.arange(n_spots) if config.context_dropout == "self" else None
            ctx_idx = nearest_context(problem.context, problem.spot_rc, config.k_context, exclude_spots=exclude)
            self.ctx_idx = torch.from_numpy(ctx_idx).to(device)
            self.ctx_values = torch.from_numpy(problem.context.values).to(device)
        self.dtype = compute_dtype(config.precision, device)

    def __call__(self, ensemble: Ensemble, spots: np.ndarray) -> torch.Tensor:
        """Loss per state and spot ``(n_states, n)`` for ``spots`` ``(n_states, n)`` (each state its own)."""
        idx = torch.from_numpy(spots).to(self.device)
        inside = self.token_inside[idx] if self.off_grid[spots].any() else None
        tokens = self.grid.gather(self.token_idx[idx], inside)
        genes = self.ctx_values[self.ctx_idx[idx]] if self.use_context else None
        pred, _ = ensemble(tokens, genes, dtype=self.dtype)
        m = self.mask[idx]
        spot_pred = (pred.float() * m[..., None]).sum(2) / m.sum(2, keepdim=True)
        return (spot_pred - self.targets[idx]).square().mean(-1)


def _train(problem: Problem, config: FitConfig, device: torch.device) -> tuple[Ensemble, History]:
    spot_loss = _SpotLoss(problem, config, device)
    n_spots, n_genes = problem.targets.shape
    networks = []
    for state in range(config.n_states):
        torch.manual_seed(config.seed + state)  # each state's initialisation, as if it were trained alone
        networks.append(build_network(config, problem.features.shape[-1], n_genes).to(device))
    ensemble = Ensemble(networks)
    del networks
    # fused: one kernel for all parameters instead of a dozen per tensor (a tenth of a CPU step)
    optimiser = torch.optim.Adam(ensemble.parameters(), lr=config.lr, fused=device.type in ("cpu", "cuda"))
    torch.manual_seed(config.seed)  # dropout masks

    held = holdout_split(n_spots, config.n_states, config.holdout, config.seed)
    fitted = np.stack([np.setdiff1d(np.arange(n_spots), h) for h in held])  # (states, n_train), equal lengths
    held_idx = np.stack(held)
    orders = [torch.Generator().manual_seed(config.seed + state) for state in range(config.n_states)]
    n_train = fitted.shape[1]
    batch_size = config.batch_size or default_batch_size(n_spots)
    n_batches = -(-n_train // batch_size)

    loss_history = np.zeros((config.n_states, config.epochs), dtype=np.float32)
    val_history = np.zeros((config.n_states, config.epochs if held_idx.shape[1] else 0), dtype=np.float32)
    best_loss = np.full(config.n_states, np.inf)
    best_epoch = np.full(config.n_states, config.epochs)
    best = None
    epochs_run = config.epochs
    for epoch in tqdm(range(config.epochs), desc="training", disable=not config.show_progress, leave=False):
        ensemble.train()
        # Every state reshuffles its own spots every epoch.
        order = np.stack([fitted[s][torch.randperm(n_train, generator=g).numpy()] for s, g in enumerate(orders)])
        total = torch.zeros(config.n_states, device=device)
        for b in range(n_batches):
            idx = order[:, b * batch_size : (b + 1) * batch_size]
            losses = spot_loss(ensemble, idx).mean(1)  # (states,)
            optimiser.zero_grad(set_to_none=True)
            losses.sum().backward()  # the states share no parameters: each gets its own gradient
            optimiser.step()
            total += losses.detach() * idx.shape[1]
        loss_history[:, epoch] = (total / n_train).cpu().numpy()
        if not val_history.shape[1]:
            continue
        val_history[:, epoch] = _held_out_loss(ensemble, spot_loss, held_idx, batch_size)
        improved = val_history[:, epoch] < best_loss
        if improved.any():
            fresh = ensemble.snapshot()
            if best is None:
                best = fresh
            flags = torch.from_numpy(improved).to(device)
            for name in best:
                best[name][flags] = fresh[name][flags]
            best_loss[improved] = val_history[improved, epoch]
            best_epoch[improved] = epoch + 1
        if (epoch + 1 - best_epoch >= config.patience).all():
            epochs_run = epoch + 1
            break
    if best is not None:
        ensemble.restore(best)
    ensemble.eval()
    history = History(
        loss=loss_history[:, :epochs_run], validation=val_history[:, :epochs_run], best_epoch=best_epoch.copy()
    )
    logger.info(
        "Trained %d states for %d epochs; kept epochs %s; loss %s.",
        config.n_states,
        epochs_run,
        best_epoch.tolist(),
        np.round(history.loss[:, -1], 5).tolist(),
    )
    return ensemble, history


@torch.no_grad()
def _held_out_loss(ensemble: Ensemble, spot_loss: _SpotLoss, held_idx: np.ndarray, batch_size: int) -> np.ndarray:
    ensemble.eval()
    step = 4 * batch_size
    per_spot = [spot_loss(ensemble, held_idx[:, i : i + step]) for i in range(0, held_idx.shape[1], step)]
    return torch.cat(per_spot, dim=1).mean(1).cpu().numpy()
