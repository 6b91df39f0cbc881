"""Windows of a whole-slide segmentation (GeoParquet of polygons in slide pixels), read without loading the slide:
the bounds of every polygon, the densest windows, and a crop in the crop's own pixel frame.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _geometry_column(parquet_file) -> str:
    import json

    meta = json.loads((parquet_file.schema_arrow.metadata or {}).get(b"geo", b"{}"))
    column = meta.get("primary_column", "geometry")
    encoding = meta.get("columns", {}).get(column, {}).get("encoding", "WKB")
    if encoding.upper() != "WKB":
        raise ValueError(f"Only WKB-encoded GeoParquet is read in batches; {parquet_file} uses {encoding}.")
    return column


def polygon_bounds(path, *, batch_size: int = 65536) -> np.ndarray:
    """``(n, 4)`` bounds of every polygon of a GeoParquet file, decoded batch by batch to keep memory flat."""
    import pyarrow.parquet as pq
    import shapely

    pf = pq.ParquetFile(path)
    column = _geometry_column(pf)
    parts = [
        shapely.bounds(shapely.from_wkb(batch.column(0).to_numpy(zero_copy_only=False)))
        for batch in pf.iter_batches(batch_size=batch_size, columns=[column])
    ]
    return np.concatenate(parts) if parts else np.empty((0, 4))


def read_window(path, window, *, within: bool = False, row_bounds=None, batch_size: int = 65536):
    """The polygons of a GeoParquet file whose bounding box meets ``window`` (or, ``within``, lies inside it).

    Read batch by batch: only the selected rows are decoded and kept. ``row_bounds`` (from
    :func:`polygon_bounds`) saves decoding every row to find them.
    """
    import geopandas as gpd
    import pyarrow.parquet as pq
    import shapely

    pf = pq.ParquetFile(path)
    column = _geometry_column(pf)
    x0, y0, x1, y1 = window
    frames, offset = [], 0
    for batch in pf.iter_batches(batch_size=batch_size):
        wkb = batch.column(column).to_numpy(zero_copy_only=False)
        if row_bounds is None:
            box = shapely.bounds(shapely.from_wkb(wkb))
        else:
            box = row_bounds[offset : offset + len(wkb)]
        offset += len(wkb)
        if within:
            keep = (box[:, 0] >= x0) & (box[:, 1] >= y0) & (box[:, 2] <= x1) & (box[:, 3] <= y1)
        else:
            keep = (box[:, 0] < x1) & (box[:, 2] > x0) & (box[:, 1] < y1) & (box[:, 3] > y0)
        if keep.any():
            idx = np.flatnonzero(keep)
            attrs = batch.drop_columns([column]).take(idx).to_pandas()
            frames.append(gpd.GeoDataFrame(attrs, geometry=shapely.from_wkb(wkb[idx])))
    if not frames:
        return gpd.GeoDataFrame({"geometry": []}, geometry="geometry")
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry")


def densest_window(row_bounds: np.ndarray, size_px: int, *, cell_px: int = 250) -> tuple[int, int]:
    """Top-left corner of the ``size_px`` square with the most polygon centres, on a grid of ``cell_px`` cells.

    Deterministic: ties go to the first window in row-major order. A slide smaller than the window gives its
    top-left corner.
    """
    return densest_windows(row_bounds, size_px, 1, cell_px=cell_px)[0]


def densest_windows(row_bounds: np.ndarray, size_px: int, n: int, *, cell_px: int = 250) -> list[tuple[int, int]]:
    """Top-left corners of ``n`` disjoint ``size_px`` squares rich in polygon centres, on a grid of ``cell_px`` cells.

    Greedy: the square with the most centres, then the one with the most among those that overlap no square taken,
    and so on; ties go to the first window in row-major order. Squares may touch. A slide smaller than the window
    gives its top-left corner (for ``n=1``). Raises when fewer than ``n`` disjoint squares with polygons fit.
    """
    centre = (row_bounds[:, :2] + row_bounds[:, 2:]) / 2
    lo = np.floor(row_bounds[:, :2].min(axis=0)).astype(int)
    ij = np.floor((centre - lo) / cell_px).astype(np.intp)[:, ::-1]  # (row, col)
    counts = np.zeros(ij.max(axis=0) + 1)
    np.add.at(counts, (ij[:, 0], ij[:, 1]), 1)
    k = max(1, round(size_px / cell_px))
    if counts.shape[0] <= k and counts.shape[1] <= k and n == 1:
        return [(int(lo[0]), int(lo[1]))]
    padded = np.pad(counts, ((0, max(k - counts.shape[0], 0)), (0, max(k - counts.shape[1], 0))))
    table = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = table[k:, k:] - table[:-k, k:] - table[k:, :-k] + table[:-k, :-k]
    apart = int(np.ceil(size_px / cell_px))  # windows closer than this many cells in both axes overlap
    corners: list[tuple[int, int]] = []
    for _ in range(n):
        i, j = np.unravel_index(np.argmax(sums), sums.shape)
        if corners and not sums[i, j] > 0:
            raise ValueError(
                f"Only {len(corners)} disjoint {size_px} px squares with polygons fit in the slide; ask for fewer "
                f"squares or smaller ones."
            )
        corners.append((int(lo[0] + j * cell_px), int(lo[1] + i * cell_px)))
        sums[max(0, i - apart + 1) : i + apart, max(0, j - apart + 1) : j + apart] = -1
    return corners


def read_crop(
    nuclei_path,
    tissue_path=None,
    *,
    size_px: int,
    origin: tuple[int, int] | None = None,
    row_bounds: np.ndarray | None = None,
):
    """A square crop of a whole-slide segmentation, in the crop's pixel frame.

    Parameters
    ----------
    nuclei_path, tissue_path
        GeoParquet files of nucleus and tissue-region polygons in slide pixels.
    size_px
        Edge of the crop.
    origin
        ``(x, y)`` of its top-left corner in slide pixels; default: the window with the most nuclei.
    row_bounds
        :func:`polygon_bounds` of ``nuclei_path``, when already read (several crops of one slide).

    Returns
    -------
    nuclei, tissue, window
        The nuclei lying wholly inside the crop and the tissue regions meeting it (``None`` without
        ``tissue_path``), shifted so that the crop starts at ``(0, 0)``; ``window`` is ``(x0, y0, x1, y1)`` in
        slide pixels.
    """
    if row_bounds is None:
        row_bounds = polygon_bounds(Path(nuclei_path))
    if origin is None:
        origin = densest_window(row_bounds, size_px)
    x0, y0 = origin
    window = (x0, y0, x0 + size_px, y0 + size_px)
    nuclei = read_window(nuclei_path, window, within=True, row_bounds=row_bounds)
    nuclei = nuclei.set_geometry(nuclei.geometry.translate(-x0, -y0))
    tissue = None
    if tissue_path is not None:
        tissue = read_window(tissue_path, window)
        tissue = tissue.set_geometry(tissue.geometry.translate(-x0, -y0))
    logger.info("Crop %s of %s: %d nuclei.", window, Path(nuclei_path).name, len(nuclei))
    return nuclei, tissue, window
