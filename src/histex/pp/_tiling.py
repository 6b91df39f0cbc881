"""Streaming an image through an encoder: blocks of tiles read lazily, resampled in workers, encoded in batches.

The bin grid is cut into square blocks. A worker reads the part of the image a block needs (from the pyramid level
closest to the working resolution), resamples it so that one encoder patch is one bin, and cuts the tiles of every
tiling (``n_shifts`` shifted copies of the tile grid) that touch the block. The main process batches tiles across
blocks for the encoder, averages each bin's token over the tilings, and hands finished blocks to a sink, so that
memory is bounded by a few blocks whatever the slide's size.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from histex import geometry
from histex._device import empty_cache, is_out_of_memory
from histex.encoders import Encoder

logger = logging.getLogger(__name__)

WHITE = 255
_BLOCK_BYTES = 256 * 2**20  # feature accumulator per block
_CHUNK_BYTES = 32 * 2**20  # zarr chunk of the features element


# -- the source image --------------------------------------------------------------------------------------------
@dataclass
class ImageSource:
    """A lazily read RGB image pyramid: ``levels[k]`` is a ``(c, y, x)`` array (numpy or dask) downscaled by
    ``factors[k]`` from level 0, whose pixels are ``mpp`` µm. ``channels`` are the RGB channels; ``scale`` maps the
    stored values to 0-255 (1 for uint8).
    """

    levels: list
    factors: list[int]
    mpp: float
    channels: tuple[int, int, int] = (0, 1, 2)
    scale: float = 1.0

    @property
    def shape_yx(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.levels[0].shape[1:])

    def level_for(self, working_mpp: float) -> int:
        """The coarsest level still at least as fine as the working resolution (reading less, losing nothing);
        level 0 when even that is coarser (the image is then upsampled).
        """
        ok = [k for k, d in enumerate(self.factors) if self.mpp * d <= working_mpp * (1 + 1e-6)]
        return max(ok, key=lambda k: self.factors[k], default=0)

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0, y1) x [x0, x1)`` of a level as ``(y, x, 3)`` uint8, the edge pixels repeated beyond the
        image (so that resampling near the edge sees only the image; :func:`whiten_outside` blanks what lies
        beyond), white where the window misses the image altogether.
        """
        arr = self.levels[level]
        h, w = arr.shape[1:]
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        if cy0 >= cy1 or cx0 >= cx1:
            return np.full((y1 - y0, x1 - x0, 3), WHITE, dtype=np.uint8)
        part = _to_uint8(np.asarray(arr[list(self.channels), cy0:cy1, cx0:cx1]).transpose(1, 2, 0), self.scale)
        pad = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
        return np.pad(part, pad, mode="edge") if any(a or b for a, b in pad) else part


def whiten_outside(working: np.ndarray, origin_yx: tuple[int, int], f: float, shape_yx: tuple[float, float]) -> None:
    """Set to white the working pixels whose centres lie beyond a source image of ``shape_yx`` pixels."""
    ys = (np.arange(working.shape[0]) + origin_yx[0] + 0.5) * f
    xs = (np.arange(working.shape[1]) + origin_yx[1] + 0.5) * f
    working[(ys < 0) | (ys >= shape_yx[0])] = WHITE
    working[:, (xs < 0) | (xs >= shape_yx[1])] = WHITE


def _to_uint8(part: np.ndarray, scale: float) -> np.ndarray:
    if part.dtype == np.uint8:
        return part
    if np.issubdtype(part.dtype, np.floating):
        part = np.nan_to_num(part)
    return np.clip(part.astype(np.float32) * scale, 0, 255).round().astype(np.uint8)


# -- resampling ----------------------------------------------------------------------------------------------------
def _integer(f: float) -> int | None:
    k = round(f)
    return k if k >= 1 and abs(f - k) < 1e-6 else None


def source_span(w0: int, w1: int, f: float) -> tuple[int, int]:
    """Source pixels needed to resample working pixels ``[w0, w1)`` at ``f`` source px per working px."""
    if (k := _integer(f)) is not None:
        return w0 * k, w1 * k
    pad = math.ceil(4 * max(0.5 * (f - 1), 0)) + 2
    return math.floor((w0 + 0.5) * f - 0.5) - pad, math.ceil((w1 - 0.5) * f - 0.5) + 1 + pad


def resample_window(window: np.ndarray, origin_yx: tuple[int, int], f: float, out_origin_yx, out_shape) -> np.ndarray:
    """Working pixels ``out_origin + [0, out_shape)`` from a source ``window`` whose first pixel is ``origin_yx``.

    Working pixel ``j`` covers source pixels ``[j f, (j + 1) f)``: with an integer ``f`` it is their exact mean;
    otherwise the source is smoothed against aliasing (when reducing) and sampled linearly at the working pixel's
    centre, ``(j + 0.5) f - 0.5`` in source pixel indices.
    """
    (oy, ox), (h, w) = out_origin_yx, out_shape
    if (k := _integer(f)) is not None:
        y, x = oy * k - origin_yx[0], ox * k - origin_yx[1]
        part = window[y : y + h * k, x : x + w * k]
        if k == 1:
            return np.ascontiguousarray(part)
        blocks = part.reshape(h, k, w, k, -1).astype(np.float32)
        return blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    out = np.empty((h, w, window.shape[2]), dtype=np.uint8)
    offset = [(oy + 0.5) * f - 0.5 - origin_yx[0], (ox + 0.5) * f - 0.5 - origin_yx[1]]
    for ch in range(window.shape[2]):
        plane = window[..., ch].astype(np.float32)
        if f > 1:
            plane = ndimage.gaussian_filter(plane, sigma=0.5 * (f - 1), mode="nearest")
        ndimage.affine_transform(
            plane, [f, f], offset=offset, output_shape=(h, w), output=out[..., ch], order=1, mode="nearest"
        )
    return out


# -- where tiles fall -------------------------------------------------------------------------------------------------
def shifts_per_axis(n_shifts: int) -> int:
    """``k`` for ``n_shifts = k**2`` tilings; anything else is an error."""
    k = math.isqrt(n_shifts) if n_shifts >= 1 else 0
    if k < 1 or k * k != n_shifts:
        raise ValueError(f"n_shifts must be a square number (1, 4, 9, 16, ...); got {n_shifts}.")
    return k


def tiling_shifts(n_shifts: int, tile_bins: int) -> tuple[tuple[int, int], ...]:
    """Offsets in bins of ``n_shifts`` tilings: a ``k x k`` lattice of shifts over one tile (``n_shifts = k**2``)."""
    k = shifts_per_axis(n_shifts)
    if k > tile_bins:
        raise ValueError(f"n_shifts={n_shifts} asks for more shifts per axis than a tile has bins ({tile_bins}).")
    steps = [i * tile_bins // k for i in range(k)]
    return tuple((dy, dx) for dy in steps for dx in steps)


@dataclass(frozen=True)
class Tiling:
    """Blocks of the bin grid and the tiles of every shifted tiling that cover each block, in bins."""

    n_rows: int
    n_cols: int
    tile_bins: int
    margin_bins: int
    shifts: tuple[tuple[int, int], ...]
    block_bins: int

    def blocks(self) -> list[tuple[int, int, int, int]]:
        b = self.block_bins
        return [
            (r0, min(r0 + b, self.n_rows), c0, min(c0 + b, self.n_cols))
            for r0 in range(0, self.n_rows, b)
            for c0 in range(0, self.n_cols, b)
        ]

    def tiles(self, block: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        """First bin ``(row, col)`` of each tile that covers part of ``block`` (negative before the grid)."""
        r0, r1, c0, c1 = block
        t = self.tile_bins
        out = []
        for dy, dx in self.shifts:
            rows = [-dy + i * t for i in range((r0 + dy) // t, (r1 - 1 + dy) // t + 1)]
            cols = [-dx + j * t for j in range((c0 + dx) // t, (c1 - 1 + dx) // t + 1)]
            out.extend((r, c) for r in rows for c in cols)
        return out

    def n_tiles(self) -> int:
        return sum(len(self.tiles(b)) for b in self.blocks())


def plan_tiling(grid: geometry.BinGrid, encoder: Encoder, *, n_shifts: int, batch_size: int, n_features: int):
    """A :class:`Tiling` whose blocks hold about two batches of tiles, and a chunk edge (bins) that divides them."""
    t = encoder.tile_size // encoder.patch_size
    shifts = tiling_shifts(n_shifts, t)
    per_side = math.ceil(math.sqrt(2 * batch_size / n_shifts))
    # a shifted tiling covers a block of k x k tiles with up to (k + 1) x (k + 1): larger blocks waste less
    per_side = max(per_side, 2 if n_shifts == 1 else 8)
    by_memory = max(1, math.isqrt(_BLOCK_BYTES // (4 * n_features)) // t)
    k = int(np.clip(per_side, 2, max(2, by_memory)))
    chunk_tiles = max(
        (g for g in range(1, k + 1) if k % g == 0 and 4 * n_features * (g * t) ** 2 <= _CHUNK_BYTES), default=1
    )
    tiling = Tiling(grid.n_rows, grid.n_cols, t, encoder.margin // encoder.patch_size, shifts, k * t)
    return tiling, chunk_tiles * t


# -- the worker's side: one block of tiles --------------------------------------------------------------------------
class BlockTiles(torch.utils.data.Dataset):
    """Blocks of tiles, ready for the encoder: ``{"index", "tiles" (n, 3, s, s) uint8, "rgb" (3, h, w)}``."""

    def __init__(self, source: ImageSource, grid: geometry.BinGrid, tiling: Tiling, patch: int, working_mpp: float):
        self.source, self.grid, self.tiling, self.patch = source, grid, tiling, patch
        self.level = source.level_for(working_mpp)
        self.level_mpp = source.mpp * source.factors[self.level]
        self.f = working_mpp / self.level_mpp  # level pixels per working pixel
        self.blocks = tiling.blocks()

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        block = self.blocks[index]
        p, m, t = self.patch, self.tiling.margin_bins * self.patch, self.tiling.tile_bins
        starts = self.tiling.tiles(block)
        wy0 = min(r for r, _ in starts) * p - m
        wx0 = min(c for _, c in starts) * p - m
        wy1 = (max(r for r, _ in starts) + t) * p + m
        wx1 = (max(c for _, c in starts) + t) * p + m
        sy0, sy1 = source_span(wy0, wy1, self.f)
        sx0, sx1 = source_span(wx0, wx1, self.f)
        window = self.source.read(self.level, sy0, sy1, sx0, sx1)
        working = resample_window(window, (sy0, sx0), self.f, (wy0, wx0), (wy1 - wy0, wx1 - wx0))
        d = self.source.factors[self.level]
        whiten_outside(working, (wy0, wx0), self.f, tuple(n / d for n in self.source.shape_yx))
        size = t * p + 2 * m
        tiles = np.stack([working[r * p - m - wy0 :][:size, c * p - m - wx0 :][:, :size] for r, c in starts])
        r0, r1, c0, c1 = block
        rgb = geometry.region_bin_means(
            window, (sy0, sx0), self.grid.bin_px / self.source.factors[self.level], (r0, r1), (c0, c1)
        )
        return {
            "index": index,
            "tiles": torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))),
            "rgb": torch.from_numpy(rgb / 255.0),
        }


def _release_freed_memory() -> None:
    """Hand memory freed by numpy back to the system (glibc keeps it, fragmented, and the process's resident size
    would creep up with the number of blocks, i.e. with the slide's area).
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim if sys.platform.startswith("linux") else False
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _worker_init(_):
    import dask

    torch.set_num_threads(1)
    dask.config.set(scheduler="synchronous")  # a worker is one process; no thread pools inside it


# -- the main process: batching, encoding, assembling ----------------------------------------------------------------
@dataclass
class _Block:
    bounds: tuple[int, int, int, int]
    remaining: int
    sums: torch.Tensor
    rgb: np.ndarray


@dataclass
class EncodeStats:
    n_tiles: int = 0
    n_bins: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    peak_gpu_bytes: int | None = None
    oom_backoffs: int = 0

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / self.seconds if self.seconds else float("nan")

    @property
    def bins_per_s(self) -> float:
        return self.n_bins / self.seconds if self.seconds else float("nan")


def default_num_workers(device: torch.device) -> int:
    """Worker processes for reading and resampling: up to 8 beside a GPU, up to 2 beside a CPU encoder; none where
    workers would be spawned (macOS, Windows), which re-imports everything and copies in-memory images into each.
    """
    if torch.multiprocessing.get_start_method(allow_none=False) != "fork":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus - 1) if device.type == "cuda" else min(2, cpus - 1))


def encode_blocks(
    source: ImageSource,
    grid: geometry.BinGrid,
    encoder: Encoder,
    *,
    working_mpp: float,
    n_shifts: int = 1,
    tiling: Tiling | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    sink: Callable[[tuple[int, int, int, int], np.ndarray, np.ndarray], None],
    show_progress: bool = True,
) -> EncodeStats:
    """Encode every bin of ``grid`` and pass each finished block to ``sink(bounds, features, rgb)``.

    ``features`` is ``(n_features, h, w)`` float32, the token of each bin averaged over the tilings; ``rgb`` is the
    ``(3, h, w)`` mean colour of the bin's source pixels in [0, 1]. ``tiling`` (from :func:`plan_tiling`, whose
    chunk size the sink may rely on) overrides ``n_shifts``.
    """
    n_features = len(encoder.feature_names)
    if tiling is None:
        tiling, _ = plan_tiling(grid, encoder, n_shifts=n_shifts, batch_size=batch_size, n_features=n_features)
    dataset = BlockTiles(source, grid, tiling, encoder.patch_size, working_mpp)
    device = encoder.device
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if num_workers else None,
        worker_init_fn=_worker_init if num_workers else None,
    )
    stats = EncodeStats(batch_size=batch_size)
    n_total = tiling.n_tiles()
    t = tiling.tile_bins
    blocks: dict[int, _Block] = {}
    queue_tiles: list[torch.Tensor] = []
    queue_where: list[tuple[int, int, int]] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    writer = ThreadPoolExecutor(max_workers=1)  # writing (compressing) a block overlaps with encoding the next
    pending: list[Future] = []

    def write(bounds, feats, rgb) -> None:
        sink(bounds, feats, rgb)
        _release_freed_memory()

    def finish(index: int) -> None:
        block = blocks.pop(index)
        feats = (block.sums / len(tiling.shifts)).cpu().numpy()
        pending.append(writer.submit(write, block.bounds, feats, block.rgb))
        while len(pending) > 2:  # at most two finished blocks wait in memory
            pending.pop(0).result()

    def run(n: int) -> None:
        nonlocal queue_tiles, queue_where
        tiles = torch.cat(queue_tiles) if len(queue_tiles) > 1 else queue_tiles[0]
        batch, where = tiles[:n], queue_where[:n]
        queue_tiles, queue_where = ([tiles[n:]] if n < len(tiles) else []), queue_where[n:]
        feats = _encode_with_backoff(encoder, batch, stats)
        for k, (index, tr, tc) in enumerate(where):
            block = blocks[index]
            r0, r1, c0, c1 = block.bounds
            a0, a1 = max(tr, r0), min(tr + t, r1)
            b0, b1 = max(tc, c0), min(tc + t, c1)
            block.sums[:, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += feats[k, :, a0 - tr : a1 - tr, b0 - tc : b1 - tc]
            block.remaining -= 1
            if block.remaining == 0:
                finish(index)
        progress.update(len(where))

    start = time.perf_counter()
    batches = iter(loader)
    try:
        with (
            writer,
            tqdm(total=n_total, desc=f"features ({encoder.name})", unit="tile", disable=not show_progress) as progress,
        ):
            for item in batches:
                index = int(item["index"])
                r0, r1, c0, c1 = bounds = dataset.blocks[index]
                sums = torch.zeros((n_features, r1 - r0, c1 - c0), dtype=torch.float32, device=device)
                blocks[index] = _Block(bounds, len(item["tiles"]), sums, item["rgb"].numpy())
                queue_tiles.append(item["tiles"].to(device, non_blocking=True))  # from pinned memory, asynchronously
                queue_where.extend((index, r, c) for r, c in tiling.tiles(bounds))
                while len(queue_where) >= stats.batch_size:
                    run(stats.batch_size)
            while queue_where:
                run(min(stats.batch_size, len(queue_where)))
            for future in pending:
                future.result()
    finally:  # on error too: stop the workers and free the device memory now, not when the traceback goes
        del batches
        blocks.clear()
        queue_tiles.clear()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        stats.peak_gpu_bytes = int(torch.cuda.max_memory_allocated(device))
    stats.seconds = time.perf_counter() - start
    stats.n_tiles = n_total
    stats.n_bins = grid.n_rows * grid.n_cols
    return stats


def _encode_with_backoff(encoder: Encoder, tiles: torch.Tensor, stats: EncodeStats) -> torch.Tensor:
    """Encode a batch, halving the batch size for the rest of the run whenever the device runs out of memory."""
    outputs, i = [], 0
    while i < len(tiles):
        size = stats.batch_size
        try:
            out = encoder.encode(tiles[i : i + size].to(encoder.device, non_blocking=True))
        except Exception as error:
            if not is_out_of_memory(error) or size == 1:
                raise
            empty_cache(encoder.device)
            stats.batch_size = max(1, size // 2)
            stats.oom_backoffs += 1
            logger.warning("Out of memory with %d tiles per batch; going on with %d.", size, stats.batch_size)
            continue
        outputs.append(torch.as_tensor(out, device=encoder.device, dtype=torch.float32))
        i += size
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
