"""Training an ensemble of HISTEX networks from spots. Arrays in, arrays out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from histex import geometry
from histex._device import resolve_device
from histex.model.checkpoint import Checkpoint, TrainingState
from histex.model.context import ContextPoints, nearest_context
from histex.model.ensemble import Ensemble, compute_dtype
from histex.nn import HistexNet, ImageOnlyNet

logger = logging.getLogger(__name__)


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
    context_withheld: float = 0.0
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
        self.window = window

    def indices(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices ``(n, window**2)`` of the windows centred on ``anchors`` ``(n, 2)`` (row, col), and which
        of them lie on the grid (the others index bin 0 and must be zeroed).
        """
        return self.window_indices(self.shape, self.window, anchors)

    @staticmethod
    def window_indices(shape: tuple[int, int], window: int, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = shape
        offsets = geometry.window_offsets(window)
        r = anchors[:, None, 0] + offsets[None, :, 0]
        c = anchors[:, None, 1] + offsets[None, :, 1]
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        return np.where(inside, r * cols + c, 0).astype(np.int64), inside

    def gather(self, index: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
        """Tokens ``(..., window**2, d)`` at ``index``; ``inside`` (same shape, or None when all are) zeroes the
        positions off the grid.
        """
        return gather_tokens(self.flat, index, inside)


def gather_tokens(flat: torch.Tensor, index: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
    """The rows ``index`` of the flat token grid, zeroed where ``inside`` is 0 (window bins off the grid)."""
    tokens = flat[index]
    return tokens if inside is None else tokens * inside[..., None]


def embedding_dim(config: FitConfig, *, with_context: bool = True) -> int:
    """Width of the embedding the network of :func:`build_network` returns beside its expression (without gene
    tokens, the MLP's last hidden layer).
    """
    return config.dim if config.use_context and with_context else config.hidden[-1]


def build_network(config: FitConfig, n_features: int, n_genes: int) -> torch.nn.Module:
    """The network of ``config``: :class:`HistexNet` with the expression context, else the image-only MLP."""
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
            context_withheld=config.context_withheld,
        )
    return ImageOnlyNet(n_features, n_genes, hidden=config.hidden, nonlinear=config.nonlinear)


def windows_per_step(config: FitConfig, device: torch.device) -> int:
    """Windows a prediction runs at a time: ``config.predict_batch_size``, by default 2,048 on a GPU, 256
    elsewhere.
    """
    return config.predict_batch_size or (2048 if device.type == "cuda" else 256)


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
        """Epochs run."""
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


def train(
    problems: Problem | list[Problem],
    config: FitConfig,
    *,
    checkpoint: Checkpoint | None = None,
    init: Ensemble | None = None,
) -> tuple[Ensemble, History]:
    """Train ``n_states`` independently seeded networks together, on the spots of one or several sections.

    Batches mix the spots of all sections. Each state holds out ``config.holdout`` of the spots and keeps the
    parameters of the epoch with the lowest loss on them; training stops when no state has improved for
    ``config.patience`` epochs, or after ``config.epochs``. Without held-out spots every state trains on all spots
    for ``config.epochs`` epochs.

    With ``checkpoint``, the whole training state (parameters, optimiser, random generators, history) is saved
    every ``checkpoint.every`` epochs, and a fit that finds a checkpoint of the same problem resumes from it: it
    ends with the weights an uninterrupted fit would have (on the CPU, where every operation is deterministic).

    With ``init``, training continues from that ensemble's parameters (fine-tuning; they are updated in place)
    instead of fresh ones.
    """
    problems = [problems] if isinstance(problems, Problem) else list(problems)
    if not problems:
        raise ValueError("Nothing to train on: no sections were given.")
    device = resolve_device(config.device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # seeding the states must not change the caller's RNG
        return _train(problems, config, device, checkpoint, init)


class SpotLoss:
    """Each state's loss on spots: the mean squared error between the spot's target and the mean of the network's
    predictions over the bins of its disk.

    The spots of all sections are numbered one after another; their windows index one table of every section's
    tokens (on the CPU, one section's table is a view of its features, not a copy).
    """

    def __init__(self, problems: Problem | list[Problem], config: FitConfig, device: torch.device):
        problems = [problems] if isinstance(problems, Problem) else problems
        self.device, self.use_context = device, config.use_context
        grids = [_TokenGrid(p.features, config.window, device) for p in problems]
        self.flat = grids[0].flat if len(grids) == 1 else torch.cat([g.flat for g in grids])
        del grids
        token_idx, token_inside, masks, ctx_idx, ctx_values = [], [], [], [], []
        token_offset = ctx_offset = 0
        for p in problems:
            anchors, mask = _training_windows(p, config.window)
            index, inside = _TokenGrid.window_indices(p.tissue.shape, config.window, anchors)
            token_idx.append(index + token_offset)
            token_inside.append(inside)
            masks.append(mask)
            token_offset += p.tissue.size
            if config.use_context:
                exclude = np.arange(len(p.targets)) if config.context_dropout == "self" else None
                ctx_idx.append(
                    nearest_context(p.context, p.spot_rc, config.k_context, exclude_spots=exclude) + ctx_offset
                )
                ctx_values.append(p.context.values)
                ctx_offset += len(p.context)
        inside = np.concatenate(token_inside)
        self.token_idx = torch.from_numpy(np.concatenate(token_idx)).to(device)
        self.token_inside = torch.from_numpy(inside.astype(np.float32)).to(device)
        self.off_grid = ~inside.all(axis=1)  # most spots' windows lie wholly on the grid: no zeroing for them
        self.mask = torch.from_numpy(np.concatenate(masks).astype(np.float32)).to(device)
        self.targets = torch.from_numpy(np.concatenate([p.targets for p in problems])).to(device)
        if config.use_context:
            self.ctx_idx = torch.from_numpy(np.concatenate(ctx_idx)).to(device)
            self.ctx_values = torch.from_numpy(np.concatenate(ctx_values)).to(device)
        self.dtype = compute_dtype(config.precision, device)

    def __call__(self, ensemble: Ensemble, spots: np.ndarray) -> torch.Tensor:
        """Loss per state and spot ``(n_states, n)`` for ``spots`` ``(n_states, n)`` (each state its own)."""
        pred, m = self.window_outputs(ensemble, spots)
        spot_pred = (pred * m[..., None]).sum(2) / m.sum(2, keepdim=True)
        return (spot_pred - self.targets[torch.from_numpy(spots).to(self.device)]).square().mean(-1)

    def window_outputs(
        self, ensemble: Ensemble, spots: np.ndarray, *, hidden: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each state's output for every bin of the windows of ``spots`` (``(n_states, n)``, each state its own; or
        ``(n,)``, the same for all), ``(n_states, n, window**2, width)`` in float32: the expression, or with
        ``hidden`` the last hidden layer; and which bins lie in each spot's disk ``(n_states, n, window**2)``.
        """
        idx = torch.from_numpy(spots).to(self.device)
        inside = self.token_inside[idx] if self.off_grid[spots].any() else None
        tokens = gather_tokens(self.flat, self.token_idx[idx], inside)
        genes = self.ctx_values[self.ctx_idx[idx]] if self.use_context else None
        out, _ = ensemble(tokens, genes, shared=spots.ndim == 1, dtype=self.dtype, hidden=hidden)
        m = self.mask[idx]
        return out.float(), (m.expand(ensemble.n_states, *m.shape) if m.ndim == 2 else m)


def new_ensemble(config: FitConfig, n_features: int, n_genes: int, device: torch.device) -> Ensemble:
    """``config.n_states`` networks, state ``i`` initialised from seed ``config.seed + i`` (as if trained alone)."""
    networks = []
    for state in range(config.n_states):
        torch.manual_seed(config.seed + state)
        networks.append(build_network(config, n_features, n_genes).to(device))
    return Ensemble(networks)


def _train(
    problems: list[Problem], config: FitConfig, device: torch.device, checkpoint: Checkpoint | None, init
) -> tuple[Ensemble, History]:
    spot_loss = SpotLoss(problems, config, device)
    n_spots, n_genes = spot_loss.targets.shape
    if init is None:
        ensemble = new_ensemble(config, problems[0].features.shape[-1], n_genes, device)
    else:
        if init.n_states != config.n_states:
            raise ValueError(f"init has {init.n_states} states, the settings {config.n_states}.")
        ensemble = init.to(device)
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

    state = TrainingState(
        epoch=0,
        loss=np.zeros((config.n_states, config.epochs), dtype=np.float32),
        validation=np.zeros((config.n_states, config.epochs if held_idx.shape[1] else 0), dtype=np.float32),
        best_loss=np.full(config.n_states, np.inf),
        best_epoch=np.full(config.n_states, config.epochs),
        best=None,
        stopped=False,
    )
    if checkpoint is not None:
        checkpoint.bind(config, spot_loss.targets, problems)
        state = checkpoint.restore(state, ensemble, optimiser, orders)
    epochs = range(state.epoch, config.epochs if not state.stopped else state.epoch)
    for epoch in tqdm(
        epochs, desc="training", disable=not config.show_progress, leave=False, initial=state.epoch, total=config.epochs
    ):
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
        state.loss[:, epoch] = (total / n_train).cpu().numpy()
        state.epoch = epoch + 1
        if state.validation.shape[1]:
            _track_best(state, ensemble, _held_out_loss(ensemble, spot_loss, held_idx, batch_size), config, device)
        if checkpoint is not None and (state.stopped or checkpoint.due(state.epoch, config.epochs)):
            checkpoint.save(state, ensemble, optimiser, orders)
        if state.stopped:
            break
    if state.best is not None:
        ensemble.restore(state.best)
    ensemble.eval()
    epochs_run = state.epoch
    history = History(
        loss=state.loss[:, :epochs_run], validation=state.validation[:, :epochs_run], best_epoch=state.best_epoch.copy()
    )
    logger.info(
        "Trained %d states for %d epochs; kept epochs %s; loss %s.",
        config.n_states,
        epochs_run,
        state.best_epoch.tolist(),
        np.round(history.loss[:, -1], 5).tolist(),
    )
    return ensemble, history


def _track_best(state: TrainingState, ensemble: Ensemble, val: np.ndarray, config: FitConfig, device) -> None:
    """The stopping rule: keep each state's parameters of its best epoch on held-out spots; stop on patience."""
    epoch = state.epoch - 1
    state.validation[:, epoch] = val
    improved = val < state.best_loss
    if improved.any():
        fresh = ensemble.snapshot()
        if state.best is None:
            state.best = fresh
        flags = torch.from_numpy(improved).to(device)
        for name in state.best:
            state.best[name][flags] = fresh[name][flags]
        state.best_loss[improved] = val[improved]
        state.best_epoch[improved] = epoch + 1
    state.stopped = bool((epoch + 1 - state.best_epoch >= config.patience).all())


@torch.no_grad()
def _held_out_loss(ensemble: Ensemble, spot_loss: SpotLoss, held_idx: np.ndarray, batch_size: int) -> np.ndarray:
    ensemble.eval()
    step = 4 * batch_size
    per_spot = [spot_loss(ensemble, held_idx[:, i : i + step]) for i in range(0, held_idx.shape[1], step)]
    return torch.cat(per_spot, dim=1).mean(1).cpu().numpy()
