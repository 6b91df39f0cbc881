"""Predicting every in-tissue bin with a trained ensemble, streamed in row bands. Arrays in, arrays out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from histex._device import resolve_device
from histex.model.context import nearest_context
from histex.model.ensemble import Ensemble, compute_dtype
from histex.model.fit import FitConfig, Problem, SpotLoss, _TokenGrid, embedding_dim, windows_per_step

if TYPE_CHECKING:
    from histex.model.matching import SpotMatch
    from histex.model.trust import BinTrust


@dataclass
class Prediction:
    """Predictions for the in-tissue bins (row-major order), in target units unless transformed. ``mean``, ``spread``
    and ``embedding`` are NumPy arrays, or whatever arrays :func:`predict` was given to fill.
    """

    rows: np.ndarray  # (n_bins,)
    cols: np.ndarray
    mean: np.ndarray  # (n_bins, n_genes): median over states, averaged over windows
    spread: np.ndarray  # (n_bins, n_genes): standard deviation over states, averaged over windows
    embedding: np.ndarray  # (n_bins, dim): first state's embedding
    lower: np.ndarray | None = None  # (n_bins, n_genes): the predictive interval's ends, in counts (BinTrust)
    upper: np.ndarray | None = None


@dataclass
class Block:
    """Final predictions of the in-tissue bins ``start:stop`` (row-major order), in target units."""

    start: int
    stop: int
    mean: np.ndarray
    spread: np.ndarray
    embedding: np.ndarray


def prediction_windows(tissue: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Anchors (window centres, ``(n, 2)`` row/col) of ``window x window`` blocks laid with ``stride`` that touch
    tissue, in row-major order. With ``stride == window`` the blocks tile the grid; smaller strides overlap, and
    every bin is covered by about ``(window / stride) ** 2`` windows.
    """
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


def median_of_states(preds: torch.Tensor) -> torch.Tensor:
    """The median over the leading (state) axis, the lower of the middle two for an even count, as
    ``torch.median`` gives it: sorted by a network of element-wise minima and maxima, which for a handful of states
    is ten to twenty times faster on the CPU than ``torch.median`` over a leading axis.
    """
    values = list(preds.unbind(0))
    n = len(values)
    for sweep in range(n):  # odd-even transposition sort: n sweeps sort n values
        for i in range(sweep % 2, n - 1, 2):
            values[i], values[i + 1] = torch.minimum(values[i], values[i + 1]), torch.maximum(values[i], values[i + 1])
    return values[(n - 1) // 2]


@torch.no_grad()
def predict_blocks(ensemble: Ensemble, problem: Problem, config: FitConfig) -> Iterator[Block]:
    """Predict every in-tissue bin: median over the states per window, averaged over overlapping windows.

    Windows are run ``config.predict_batch_size`` at a time (by default 2,048 on a GPU, 256 elsewhere) in
    row-major order, and the bins are yielded as soon as no later window covers them: only a band of a few rows
    of bins is held, never the whole slide twice.
    """
    device = resolve_device(config.device)
    dtype = compute_dtype(config.precision, device)
    grid = _TokenGrid(problem.features, config.window, device)
    rows, cols = problem.tissue.shape
    tissue_rows, tissue_cols = np.nonzero(problem.tissue)
    n_bins, n_genes = len(tissue_rows), problem.targets.shape[1]
    slot = np.full(rows * cols, -1, dtype=np.int64)  # flat bin index -> output row
    slot[tissue_rows * cols + tissue_cols] = np.arange(n_bins)
    first_slot_of_row = np.searchsorted(tissue_rows, np.arange(rows + 1))
    anchors = prediction_windows(problem.tissue, config.window, config.stride)
    tops = anchors[:, 0] - config.window // 2
    use_context = config.use_context and problem.context is not None  # a slide without spots: image alone
    if use_context:
        centres = anchors + 0.5  # the centre of the anchor bin is the centre of the window
        ctx_idx = nearest_context(problem.context, centres, config.k_context)
        ctx_values = torch.from_numpy(problem.context.values).to(device)
    ensemble.eval()

    band_start = 0  # output row of the band's first bin
    band = None  # [mean, spread, embedding, hits] over the band's bins, on the CPU
    step = windows_per_step(config, device)
    for start in tqdm(range(0, len(anchors), step), desc="predicting", disable=not config.show_progress, leave=False):
        a = anchors[start : start + step]
        index, inside = grid.indices(a)
        off_grid = None if inside.all() else torch.from_numpy(inside.astype(np.float32)).to(device)
        tokens = grid.gather(torch.from_numpy(index).to(device), off_grid)
        genes = ctx_values[torch.from_numpy(ctx_idx[start : start + step]).to(device)] if use_context else None
        preds, embeddings = ensemble(tokens, genes, shared=True, dtype=dtype)  # (states, b, window**2, genes)
        preds = preds.float()
        if ensemble.n_states > 1:
            med = median_of_states(preds)
            # torch's std over the leading axis is ten times slower than this
            std = (preds - preds.mean(dim=0)).square_().mean(dim=0).sqrt_()
        else:
            med, std = preds[0], torch.zeros_like(preds[0])
        emb = embeddings[0].float()
        # The window bins that are in-tissue bins of the grid, and their output rows.
        target = np.where(inside, slot[index], -1)
        keep = torch.from_numpy(target >= 0)
        dest = torch.from_numpy(target[target >= 0] - band_start)
        band = _grow(band, int(dest.max()) + 1 if len(dest) else 0, n_genes, emb.shape[-1])
        for acc, values in zip(band, (med, std, emb), strict=False):
            acc.index_add_(0, dest, values.cpu()[keep])
        band[3].index_add_(0, dest, torch.ones(len(dest)))
        # Later windows start at or below the next window's top row: the bins above it are final.
        next_top = tops[start + step] if start + step < len(anchors) else rows
        done = int(first_slot_of_row[np.clip(next_top, 0, rows)])
        if done > band_start:
            n = done - band_start
            hits = band[3][:n].clamp_(min=1)[:, None]
            yield Block(band_start, done, *((acc[:n] / hits).numpy() for acc in band[:3]))
            band = [acc[n:] for acc in band]
            band_start = done


@torch.no_grad()
def predict_spots(ensemble: Ensemble, problem: Problem, config: FitConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Predict the bins of every spot's window as at training: each spot's own measurement left out of its context.

    Yields, ``windows_per_step`` spots at a time in spot order, the median over states of the window's bins
    ``(n, window**2, genes)`` in target units and which of them lie in the spot's disk ``(n, window**2)`` (bool).
    What the network makes of a spot it cannot see, so that its disk sums can be held against the spots without
    the spot's own counts leaking in through the context (:class:`histex.model.matching.ShapeChoice`).
    """
    device = resolve_device(config.device)
    spot_loss = SpotLoss(problem, config, device)
    ensemble.eval()
    n_spots, step = len(problem.spot_rc), windows_per_step(config, device)
    for start in range(0, n_spots, step):
        spots = np.arange(start, min(start + step, n_spots))
        preds, in_disk = spot_loss.window_outputs(ensemble, spots)
        med = median_of_states(preds) if ensemble.n_states > 1 else preds[0]
        yield med.cpu().numpy(), in_disk[0].cpu().numpy() > 0


def _transformed(block: Block, transform) -> Block:
    mean, spread = transform(block.mean, block.spread)
    return replace(block, mean=mean, spread=spread)


def _grow(band: list[torch.Tensor] | None, length: int, n_genes: int, dim: int) -> list[torch.Tensor]:
    if band is None:
        band = [torch.zeros(0, n_genes), torch.zeros(0, n_genes), torch.zeros(0, dim), torch.zeros(0)]
    extra = length - len(band[3])
    if extra <= 0:
        return band
    return [torch.cat([acc, acc.new_zeros(extra, *acc.shape[1:])]) for acc in band]


def predict(
    ensemble: Ensemble,
    problem: Problem,
    config: FitConfig,
    transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    out: Prediction | None = None,
    match: SpotMatch | None = None,
    trust: BinTrust | None = None,
) -> Prediction:
    """Predict every in-tissue bin (:func:`predict_blocks`) into one set of arrays.

    ``transform(mean, spread) -> (mean, spread)`` is applied to each block before it is stored (to counts per bin,
    say), so that the slide's predictions exist once, in their final form. ``out`` receives them: its ``mean``,
    ``spread`` and ``embedding`` may be any arrays that take row blocks in order, from the top (NumPy arrays, or
    writers into a zarr store); by default they are allocated in memory. ``match`` (a
    :class:`histex.model.matching.SpotMatch`, in the units ``transform`` gives) rescales the blocks to the spots.
    ``trust`` (a :class:`histex.model.trust.BinTrust`, the final blocks in counts) fills ``out.lower`` and
    ``out.upper`` with each bin's predictive interval, allocated in memory when ``out`` has none.
    """
    tissue_rows, tissue_cols = np.nonzero(problem.tissue)
    n_bins, n_genes = len(tissue_rows), problem.targets.shape[1]
    if out is None:
        out = Prediction(
            rows=tissue_rows,
            cols=tissue_cols,
            mean=np.empty((n_bins, n_genes), dtype=np.float32),
            spread=np.empty((n_bins, n_genes), dtype=np.float32),
            embedding=np.empty((n_bins, embedding_dim(config, with_context=problem.context is not None)), np.float32),
        )
    if trust is not None and out.lower is None:
        out.lower, out.upper = (np.empty((n_bins, n_genes), dtype=np.float32) for _ in range(2))
    blocks = predict_blocks(ensemble, problem, config)
    if transform is not None:
        blocks = (_transformed(b, transform) for b in blocks)
    if match is not None:
        blocks = match.blocks(blocks)
    for block in blocks:
        rows = slice(block.start, block.stop)
        out.mean[rows], out.spread[rows], out.embedding[rows] = block.mean, block.spread, block.embedding
        if trust is not None:
            out.lower[rows], out.upper[rows] = trust.add(block.start, block.mean, block.spread)
    return out
