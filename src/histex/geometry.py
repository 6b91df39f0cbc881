"""Plane geometry of spots, bins and cells, on plain arrays.

Conventions used throughout histex:

* Image pixel ``i`` covers ``[i, i + 1)`` in the image's intrinsic coordinates, its centre is ``i + 0.5``.
* The bin grid is aligned to the image origin: bin ``(row, col)`` covers
  ``[row * bin_px, (row + 1) * bin_px) x [col * bin_px, (col + 1) * bin_px)`` in image pixels, where
  ``bin_px = bin_size_um / mpp`` need not be an integer. A pixel belongs to the bin that contains its centre.
* "Bin coordinates" are image pixel coordinates divided by ``bin_px``: bin ``(r, c)`` spans ``[r, r + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

VISIUM_PITCH_UM = 100.0
VISIUM_SPOT_DIAMETER_UM = 55.0


@dataclass(frozen=True)
class BinGrid:
    """A square grid of bins laid over a full-resolution image, aligned to its origin.

    Parameters
    ----------
    bin_px
        Edge of one bin in image pixels (``bin_size_um / mpp``).
    n_rows, n_cols
        Number of complete bins that fit in the image.
    """

    bin_px: float
    n_rows: int
    n_cols: int

    @classmethod
    def for_image(cls, shape_yx: tuple[int, int], *, mpp: float, bin_size_um: float) -> BinGrid:
        """The grid of complete ``bin_size_um`` bins over an image of ``shape_yx`` pixels at ``mpp`` µm/px."""
        if mpp <= 0 or bin_size_um <= 0:
            raise ValueError(f"mpp and bin_size_um must be positive, got mpp={mpp}, bin_size_um={bin_size_um}.")
        bin_px = bin_size_um / mpp
        # A tiny tolerance so that an image of exactly n bins is not cut to n - 1 by rounding.
        n_rows = int(np.floor(shape_yx[0] / bin_px + 1e-6))
        n_cols = int(np.floor(shape_yx[1] / bin_px + 1e-6))
        return cls(bin_px=float(bin_px), n_rows=n_rows, n_cols=n_cols)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)`` of the grid."""
        return (self.n_rows, self.n_cols)

    def bin_of_pixel(self, index: np.ndarray, axis_len: int) -> np.ndarray:
        """Bin index along one axis for pixel indices along that axis; -1 for pixels beyond the last bin."""
        b = np.floor((np.asarray(index) + 0.5) / self.bin_px).astype(np.int64)
        b[b >= axis_len] = -1
        return b

    def centres_px(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Bin centres in image pixels, as ``(n, 2)`` ``(x, y)`` like ``obsm["spatial"]``."""
        return np.stack([(np.asarray(cols) + 0.5) * self.bin_px, (np.asarray(rows) + 0.5) * self.bin_px], axis=1)

    def boxes_px(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Bin squares in image pixels as ``(n, 4)`` ``(xmin, ymin, xmax, ymax)``."""
        rows, cols = np.asarray(rows, dtype=float), np.asarray(cols, dtype=float)
        b = self.bin_px
        return np.stack([cols * b, rows * b, (cols + 1) * b, (rows + 1) * b], axis=1)


def region_bin_means(
    window: np.ndarray,
    origin_yx: tuple[int, int],
    bin_px: float,
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> np.ndarray:
    """Mean of each channel over the pixels that each bin of ``rows x cols`` claims (the pixels whose centres lie in
    its square), from a ``(y, x, c)`` ``window`` of an image whose first pixel is ``origin_yx``.

    The window must hold every pixel of those bins. Returns ``(c, rows[1] - rows[0], cols[1] - cols[0])`` float32.
    """
    (r0, r1), (c0, c1) = rows, cols
    ys = np.floor((np.arange(window.shape[0]) + origin_yx[0] + 0.5) / bin_px).astype(np.int64) - r0
    xs = np.floor((np.arange(window.shape[1]) + origin_yx[1] + 0.5) / bin_px).astype(np.int64) - c0
    ys[(ys < 0) | (ys >= r1 - r0)] = -1
    xs[(xs < 0) | (xs >= c1 - c0)] = -1
    iy, ix = np.flatnonzero(ys >= 0), np.flatnonzero(xs >= 0)
    labels = (ys[iy][:, None] * (c1 - c0) + xs[ix][None, :]).ravel()
    n_bins = (r1 - r0) * (c1 - c0)
    counts = np.bincount(labels, minlength=n_bins).astype(np.float64)
    part = window[iy[:, None], ix[None, :]] if len(iy) and len(ix) else window[:0, :0]
    out = np.empty((window.shape[2], n_bins), dtype=np.float32)
    for ch in range(window.shape[2]):
        sums = np.bincount(labels, weights=part[..., ch].ravel().astype(np.float64), minlength=n_bins)
        out[ch] = sums / np.maximum(counts, 1)
    return out.reshape(window.shape[2], r1 - r0, c1 - c0)


def hex_lattice(width: float, height: float, *, pitch: float, offset: tuple[float, float] | None = None) -> np.ndarray:
    """Centres of a hexagonal lattice with centre-to-centre ``pitch`` filling a ``width x height`` rectangle.

    Rows are ``pitch * sqrt(3) / 2`` apart and every other row is shifted by half a pitch, as on a Visium slide.
    Returns ``(n, 2)`` ``(x, y)`` in the units of the arguments.
    """
    ox, oy = offset if offset is not None else (pitch / 2, pitch / 2)
    dy = pitch * np.sqrt(3) / 2
    pts = []
    for i, y in enumerate(np.arange(oy, height, dy)):
        xs = np.arange(ox + (pitch / 2 if i % 2 else 0.0), width, pitch)
        pts.append(np.stack([xs, np.full_like(xs, y)], axis=1))
    return np.concatenate(pts) if pts else np.empty((0, 2))


def lattice_pitch(xy: np.ndarray) -> tuple[float, float]:
    """Median nearest-neighbour distance of points, and the fraction of points whose distance lies within 10 % of it.

    On a spot lattice the fraction is near 1; on scattered points it is low, and the pitch means nothing.
    """
    xy = np.asarray(xy, dtype=float)
    if len(xy) < 2:
        return float("nan"), 0.0
    dist, _ = cKDTree(xy).query(xy, k=2)
    nn = dist[:, 1]
    pitch = float(np.median(nn))
    regular = float(np.mean(np.abs(nn - pitch) <= 0.1 * pitch)) if pitch > 0 else 0.0
    return pitch, regular


def window_size(radius_bins: float, minimum: int = 7) -> int:
    """Smallest odd window of bins, at least ``minimum``, that holds a disk of ``radius_bins`` wherever its centre lies
    in the central bin.
    """
    half = int(np.ceil(radius_bins + 0.5)) - 1
    return max(minimum, 2 * half + 1)


def window_offsets(size: int) -> np.ndarray:
    """``(size * size, 2)`` ``(drow, dcol)`` offsets of a window centred on bin ``(0, 0)``, in row-major order."""
    half = size // 2
    d = np.arange(-half, half + 1)
    return np.stack(np.meshgrid(d, d, indexing="ij"), axis=-1).reshape(-1, 2)


def disk_masks(centres_rc: np.ndarray, radius_bins: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which bins of a window lie inside each spot's disk.

    Parameters
    ----------
    centres_rc
        ``(n, 2)`` spot centres in bin coordinates ``(row, col)``.
    radius_bins
        Spot radius in bins.
    size
        Window edge in bins (odd).

    Returns
    -------
    window_centres
        ``(n, 2)`` integer ``(row, col)`` of the bin that contains each spot centre.
    masks
        ``(n, size * size)`` boolean, True for window bins whose centre lies within the disk.
    """
    centres_rc = np.asarray(centres_rc, dtype=float)
    anchor = np.floor(centres_rc).astype(np.int64)
    offsets = window_offsets(size)
    bin_centres = anchor[:, None, :] + offsets[None, :, :] + 0.5
    d2 = ((bin_centres - centres_rc[:, None, :]) ** 2).sum(-1)
    return anchor, d2 <= radius_bins**2


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


def apply_affine(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points ``(n, 2)`` ``(x, y)`` through a 3 x 3 affine matrix."""
    return np.asarray(xy) @ affine[:2, :2].T + affine[:2, 2]


def points_to_bins(xy: np.ndarray, grid: BinGrid) -> np.ndarray:
    """Flat bin index of each point ``(x, y)`` in image pixels; -1 for points off the grid."""
    xy = np.asarray(xy, dtype=float)
    r = np.floor(xy[:, 1] / grid.bin_px).astype(np.int64)
    c = np.floor(xy[:, 0] / grid.bin_px).astype(np.int64)
    on = (r >= 0) & (r < grid.n_rows) & (c >= 0) & (c < grid.n_cols)
    return np.where(on, r * grid.n_cols + c, -1)
