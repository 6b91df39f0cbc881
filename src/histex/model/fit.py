"""Training an ensemble of HISTEX networks from spots, and predicting every in-tissue bin. Arrays in, arrays out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from histex import geometry
from histex._device import resolve_device
from histex.model.context import ContextPoints, nearest_context
from histex.nn import HistexNet, ImageOnlyNet

logger = logging.getLogger("histex")


@dataclass
class Problem:
    """Everything the network learns from, on the bin grid (positions in bin coordinates ``(row, col)``)."""

    features: np.ndarray  # (n_features, rows, cols) float32, standardised
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
    seed: int = 0
    device: str | torch.device | None = None
    predict_batch_size: int = 256
    show_progress: bool = True


@dataclass
class Prediction:
    """Predictions for the in-tissue bins, in target units."""

    rows: np.ndarray  # (n_bins,)
    cols: np.ndarray
    mean: np.ndarray  # (n_bins, n_genes): median over states, averaged over windows
    spread: np.ndarray  # (n_bins, n_genes): standard deviation over states, averaged over windows
    embedding: np.ndarray  # (n_bins, dim): first state's embedding
    history: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # (n_states, epochs) training loss


class _TokenGrid:
    """The feature map, zero-padded and flattened, so that windows are gathered by index.

    The padding (a window less one bin) holds every window that touches the grid, also those of overlapping
    prediction blocks that start before the first bin.
    """

    def __init__(self, features: np.ndarray, window: int, device: torch.device):
        self.pad = window - 1
        d, rows, cols = features.shape
        padded = np.zeros((rows + 2 * self.pad, cols + 2 * self.pad, d), dtype=np.float32)
        padded[self.pad : self.pad + rows, self.pad : self.pad + cols] = features.transpose(1, 2, 0)
        self.padded_cols = cols + 2 * self.pad
        self.flat = torch.from_numpy(padded.reshape(-1, d)).to(device)
        self.offsets = geometry.window_offsets(window)

    def indices(self, anchors: np.ndarray) -> np.ndarray:
        """Flat indices ``(n, window**2)`` of the windows centred on ``anchors`` ``(n, 2)`` (row, col)."""
        r = anchors[:, None, 0] + self.offsets[None, :, 0] + self.pad
        c = anchors[:, None, 1] + self.offsets[None, :, 1] + self.pad
        return (r * self.padded_cols + c).astype(np.int64)


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


def train(problem: Problem, config: FitConfig) -> tuple[list[torch.nn.Module], np.ndarray]:
    """Train ``n_states`` independently seeded networks; returns them and the loss per state and epoch."""
    device = resolve_device(config.device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # seeding the states must not change the caller's RNG
        return _train(problem, config, device)


def _train(problem: Problem, config: FitConfig, device: torch.device) -> tuple[list[torch.nn.Module], np.ndarray]:
    grid = _TokenGrid(problem.features, config.window, device)
    anchors, masks = _training_windows(problem, config.window)
    token_idx = torch.from_numpy(grid.indices(anchors)).to(device)
    mask = torch.from_numpy(masks.astype(np.float32)).to(device)
    targets = torch.from_numpy(problem.targets).to(device)
    n_spots, n_genes = problem.targets.shape
    if config.use_context:
        exclude = np.arange(n_spots) if config.context_dropout == "self" else None
        ctx_idx = torch.from_numpy(
            nearest_context(problem.context, problem.spot_rc, config.k_context, exclude_spots=exclude)
        ).to(device)
        ctx_values = torch.from_numpy(problem.context.values).to(device)
    batch_size = config.batch_size or default_batch_size(n_spots)
    n_batches = -(-n_spots // batch_size)
    history = np.zeros((config.n_states, config.epochs), dtype=np.float32)
    models = []
    for state in range(config.n_states):
        seed = config.seed + state
        torch.manual_seed(seed)
        order_rng = torch.Generator().manual_seed(seed)
        model = build_network(config, problem.features.shape[0], n_genes).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        model.train()
        desc = f"training state {state + 1}/{config.n_states}"
        for epoch in tqdm(range(config.epochs), desc=desc, disable=not config.show_progress, leave=False):
            order = torch.randperm(n_spots, generator=order_rng).to(device)  # reshuffled every epoch
            total = 0.0
            for b in range(n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                tokens = grid.flat[token_idx[idx]]
                genes = ctx_values[ctx_idx[idx]] if config.use_context else None
                pred, _ = model(tokens, genes)
                m = mask[idx]
                spot_pred = (pred * m[..., None]).sum(1) / m.sum(1, keepdim=True)
                loss = torch.nn.functional.mse_loss(spot_pred, targets[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(idx)
            history[state, epoch] = total / n_spots
        model.eval()
        models.append(model)
        logger.info("State %d: loss %.5f -> %.5f.", state, history[state, 0], history[state, -1])
    return models, history


def prediction_windows(tissue: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Anchors (window centres, ``(n, 2)`` row/col) of ``window x window`` blocks laid with ``stride`` that touch
    tissue. With ``stride == window`` the blocks tile the grid; smaller strides overlap, and every bin is covered
    by about ``(window / stride) ** 2`` windows."""
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}.")
    rows, cols = tissue.shape
    half = window // 2
    top = np.arange(-(window - stride), rows, stride)
    left = np.arange(-(window - stride), cols, stride)
    tl = np.stack(np.meshgrid(top, left, indexing="ij"), axis=-1).reshape(-1, 2)
    # A block touches tissue if the tissue count in its rectangle is positive (summed-area table).
    sat = np.pad(tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r0, c0 = np.clip(tl[:, 0], 0, rows), np.clip(tl[:, 1], 0, cols)
    r1, c1 = np.clip(tl[:, 0] + window, 0, rows), np.clip(tl[:, 1] + window, 0, cols)
    count = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return tl[count > 0] + half


@torch.no_grad()
def predict(models: list[torch.nn.Module], problem: Problem, config: FitConfig) -> Prediction:
    """Predict every in-tissue bin: median over the ensemble per window, averaged over overlapping windows."""
    device = resolve_device(config.device)
    grid = _TokenGrid(problem.features, config.window, device)
    rows, cols = problem.tissue.shape
    tissue_rows, tissue_cols = np.nonzero(problem.tissue)
    slot = np.full(rows * cols, -1, dtype=np.int64)  # flat bin index -> output row
    slot[tissue_rows * cols + tissue_cols] = np.arange(len(tissue_rows))
    n_bins, n_genes = len(tissue_rows), problem.targets.shape[1]
    anchors = prediction_windows(problem.tissue, config.window, config.stride)
    if config.use_context:
        centres = anchors + 0.5  # the centre of the anchor bin is the centre of the window
        ctx_idx = nearest_context(problem.context, centres, config.k_context)
        ctx_values = torch.from_numpy(problem.context.values).to(device)
    offsets = geometry.window_offsets(config.window)
    mean = np.zeros((n_bins, n_genes), dtype=np.float32)
    spread = np.zeros((n_bins, n_genes), dtype=np.float32)
    embedding = None
    hits = np.zeros(n_bins, dtype=np.int64)
    step = config.predict_batch_size
    for start in tqdm(range(0, len(anchors), step), desc="predicting", disable=not config.show_progress, leave=False):
        a = anchors[start : start + step]
        tokens = grid.flat[torch.from_numpy(grid.indices(a)).to(device)]
        genes = ctx_values[torch.from_numpy(ctx_idx[start : start + step]).to(device)] if config.use_context else None
        outputs = [m(tokens, genes) for m in models]
        preds = torch.stack([o[0] for o in outputs])  # (states, b, window**2, genes)
        med = preds.median(dim=0).values if len(models) > 1 else preds[0]
        if len(models) > 1:  # torch's std over the leading axis is ten times slower than this
            std = (preds - preds.mean(dim=0)).square_().mean(dim=0).sqrt_()
        else:
            std = torch.zeros_like(med)
        emb = outputs[0][1]
        if embedding is None:
            embedding = np.zeros((n_bins, emb.shape[-1]), dtype=np.float32)
        # Scatter the window bins that are in-tissue bins of the grid into the outputs.
        r = a[:, None, 0] + offsets[None, :, 0]
        c = a[:, None, 1] + offsets[None, :, 1]
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        target = np.where(inside, slot[np.where(inside, r * cols + c, 0)], -1)
        keep = torch.from_numpy(target >= 0)
        dest = torch.from_numpy(target[target >= 0])
        # index_add_ into tensors that share the output arrays' memory: np.add.at is unbuffered and far slower.
        torch.from_numpy(mean).index_add_(0, dest, med.cpu()[keep])
        torch.from_numpy(spread).index_add_(0, dest, std.cpu()[keep])
        torch.from_numpy(embedding).index_add_(0, dest, emb.cpu()[keep].float())
        np.add.at(hits, dest.numpy(), 1)
    if embedding is None:
        embedding = np.zeros((n_bins, config.dim), dtype=np.float32)
    hits = np.maximum(hits, 1)[:, None].astype(np.float32)
    mean /= hits  # in place: whole-slide outputs are large
    spread /= hits
    embedding /= hits
    return Prediction(rows=tissue_rows, cols=tissue_cols, mean=mean, spread=spread, embedding=embedding)
