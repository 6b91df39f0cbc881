"""Cells onto bins: each cell's counts split over the bins it overlaps, in proportion to the area in each."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from histex.geometry import BinGrid


def cell_bin_weights(polygons, grid: BinGrid) -> sp.csr_matrix:
    """The share of each cell's area that lies in each bin of the grid.

    Vectorised with shapely: every cell is paired with the bins its bounding box touches, and the areas of all
    cell-square intersections are computed in one call (cells inside a single bin skip the intersection).

    Parameters
    ----------
    polygons
        ``(n_cells,)`` shapely polygons (array, list or GeoSeries) in image pixels.
    grid
        The bin grid of the image.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_cells, n_rows * n_cols)`` float64; row ``i`` holds the fractions of cell ``i`` in each bin (flat index
        ``row * n_cols + col``). A row sums to 1 for a cell inside the grid, to less where the cell reaches past it.
    """
    import shapely

    polygons = np.asarray(getattr(polygons, "values", polygons), dtype=object)
    n_cells = len(polygons)
    n_bins = grid.n_rows * grid.n_cols
    if n_cells == 0:
        return sp.csr_matrix((0, n_bins))
    area = shapely.area(polygons)
    x0, y0, x1, y1 = shapely.bounds(polygons).T
    b = grid.bin_px
    r0 = np.clip(np.floor(y0 / b), 0, grid.n_rows - 1).astype(np.int64)
    r1 = np.clip(np.floor(y1 / b), 0, grid.n_rows - 1).astype(np.int64)
    c0 = np.clip(np.floor(x0 / b), 0, grid.n_cols - 1).astype(np.int64)
    c1 = np.clip(np.floor(x1 / b), 0, grid.n_cols - 1).astype(np.int64)
    n_r, n_c = r1 - r0 + 1, c1 - c0 + 1
    n_pairs = n_r * n_c
    cell = np.repeat(np.arange(n_cells), n_pairs)
    # the k-th pair of a cell is bin (r0 + k // n_c, c0 + k % n_c)
    k = np.arange(len(cell)) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    rows = r0[cell] + k // n_c[cell]
    cols = c0[cell] + k % n_c[cell]
    inside_one = (n_pairs == 1)[cell] & (x0[cell] >= 0) & (y0[cell] >= 0)
    inside_one &= (x1[cell] <= grid.n_cols * b) & (y1[cell] <= grid.n_rows * b)
    overlap = np.empty(len(cell))
    overlap[inside_one] = area[cell[inside_one]]
    split = ~inside_one
    boxes = shapely.box(cols[split] * b, rows[split] * b, (cols[split] + 1) * b, (rows[split] + 1) * b)
    overlap[split] = shapely.area(shapely.intersection(polygons[cell[split]], boxes))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(area[cell] > 0, overlap / area[cell], 0.0)
    keep = share > 0
    return sp.csr_matrix((share[keep], (cell[keep], rows[keep] * grid.n_cols + cols[keep])), shape=(n_cells, n_bins))


def points_to_bins(xy: np.ndarray, grid: BinGrid) -> np.ndarray:
    """Flat bin index of each point ``(x, y)`` in image pixels; -1 for points off the grid."""
    xy = np.asarray(xy, dtype=float)
    r = np.floor(xy[:, 1] / grid.bin_px).astype(np.int64)
    c = np.floor(xy[:, 0] / grid.bin_px).astype(np.int64)
    on = (r >= 0) & (r < grid.n_rows) & (c >= 0) & (c < grid.n_cols)
    return np.where(on, r * grid.n_cols + c, -1)
