"""Pseudo-Visium: 55 µm spots on a 100 µm hexagonal lattice over the tissue, each the sum of the bins in its disk."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from histex.geometry import (
    VISIUM_PITCH_UM,
    VISIUM_SPOT_DIAMETER_UM,
    BinGrid,
    disk_masks,
    hex_lattice,
    window_offsets,
    window_size,
)


def hex_spots(
    tissue,
    grid: BinGrid,
    mpp: float,
    *,
    offset_um: tuple[float, float] | None = None,
    pitch_um: float = VISIUM_PITCH_UM,
    diameter_um: float = VISIUM_SPOT_DIAMETER_UM,
) -> tuple[np.ndarray, np.ndarray]:
    """Lattice sites whose centre is in tissue and whose disk lies on the bin grid.

    Parameters
    ----------
    tissue
        ``(n_rows, n_cols)`` boolean tissue mask on the grid (a site is kept when its centre's bin is tissue), or a
        function of the sites' centres ``(n, 2)`` ``(x, y)`` in µm that returns which lie in tissue (a finer
        map than the bins).
    grid
        The bin grid of the image.
    mpp
        Microns per image pixel.
    offset_um
        Position of the lattice's first site ``(x, y)`` in µm; half a pitch by default.
    pitch_um, diameter_um
        Centre-to-centre distance and spot diameter (Visium: 100 and 55 µm).

    Returns
    -------
    xy_px
        ``(n_spots, 2)`` centres ``(x, y)`` in image pixels.
    array_rc
        ``(n_spots, 2)`` Visium ``(array_row, array_col)``: rows step by one, columns by two, odd rows offset by one.
    """
    if not callable(tissue):
        tissue = np.asarray(tissue, bool)
        if tissue.shape != grid.shape:
            raise ValueError(f"tissue has shape {tissue.shape}, the bin grid {grid.shape}.")
    h_um, w_um = grid.n_rows * grid.bin_px * mpp, grid.n_cols * grid.bin_px * mpp
    offset = offset_um if offset_um is not None else (pitch_um / 2, pitch_um / 2)
    xy_um = hex_lattice(w_um, h_um, pitch=pitch_um, offset=offset)
    if len(xy_um) == 0:
        return np.empty((0, 2)), np.empty((0, 2), np.int64)
    dy = pitch_um * np.sqrt(3) / 2
    row = np.rint((xy_um[:, 1] - offset[1]) / dy).astype(np.int64)
    col = np.rint((xy_um[:, 0] - offset[0] - (row % 2) * pitch_um / 2) / pitch_um).astype(np.int64)
    array_rc = np.stack([row, 2 * col + row % 2], axis=1)
    r_um = diameter_um / 2
    on_grid = (xy_um[:, 0] >= r_um) & (xy_um[:, 1] >= r_um) & (xy_um[:, 0] <= w_um - r_um)
    on_grid &= xy_um[:, 1] <= h_um - r_um
    xy_px = xy_um / mpp
    if callable(tissue):
        in_tissue = np.asarray(tissue(xy_um), bool)
    else:
        r_bin = np.clip((xy_px[:, 1] / grid.bin_px).astype(np.int64), 0, grid.n_rows - 1)
        c_bin = np.clip((xy_px[:, 0] / grid.bin_px).astype(np.int64), 0, grid.n_cols - 1)
        in_tissue = tissue[r_bin, c_bin]
    keep = on_grid & in_tissue
    return xy_px[keep], array_rc[keep]


def sum_into_spots(
    spot_xy_px: np.ndarray,
    grid: BinGrid,
    rows: np.ndarray,
    cols: np.ndarray,
    counts,
    *,
    radius_px: float,
) -> sp.csr_matrix:
    """Sum the counts of the bins whose centres lie in each spot's disk.

    Parameters
    ----------
    spot_xy_px
        ``(n_spots, 2)`` centres ``(x, y)`` in image pixels.
    grid
        The bin grid.
    rows, cols
        ``(n_bins,)`` grid positions of the bins that hold counts (bins not listed hold none).
    counts
        ``(n_bins, n_genes)`` counts of those bins (dense or sparse).
    radius_px
        Spot radius in image pixels.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_spots, n_genes)`` float32.
    """
    radius_bins = radius_px / grid.bin_px
    size = window_size(radius_bins)
    anchor, masks = disk_masks(np.asarray(spot_xy_px)[:, ::-1] / grid.bin_px, radius_bins, size)
    rc = anchor[:, None, :] + window_offsets(size)[None, :, :]
    on_grid = (rc[..., 0] >= 0) & (rc[..., 0] < grid.n_rows) & (rc[..., 1] >= 0) & (rc[..., 1] < grid.n_cols)
    spot, slot = np.nonzero(masks & on_grid)
    flat = rc[spot, slot, 0] * grid.n_cols + rc[spot, slot, 1]
    incidence = sp.csr_matrix((np.ones(len(spot)), (spot, flat)), shape=(len(spot_xy_px), grid.n_rows * grid.n_cols))
    stored = np.asarray(rows, np.int64) * grid.n_cols + np.asarray(cols, np.int64)
    counts = sp.csr_matrix(counts, dtype=np.float64)
    return sp.csr_matrix((incidence[:, stored] @ counts).astype(np.float32))


def pseudo_visium(
    tissue: np.ndarray, grid: BinGrid, mpp: float, rows, cols, truth_counts, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """Spots of a randomly placed Visium lattice over the tissue and their counts, summed from the truth bins.

    Returns the spot centres ``(x, y)`` in image pixels, their array coordinates and ``(n_spots, n_genes)`` counts.

    Raises
    ------
    ValueError
        When no spot fits on the tissue.
    """
    offset = (rng.uniform(0, VISIUM_PITCH_UM), rng.uniform(0, VISIUM_PITCH_UM * np.sqrt(3) / 2))
    spot_xy, array_rc = hex_spots(tissue, grid, mpp, offset_um=offset)
    if len(spot_xy) == 0:
        raise ValueError(
            f"No 55 µm spot of a 100 µm lattice fits on the tissue ({int(np.sum(tissue))} bins of "
            f"{grid.bin_px * mpp:g} µm at {mpp:.4f} µm/px): the section is too small or the pixel size wrong."
        )
    counts = sum_into_spots(spot_xy, grid, rows, cols, truth_counts, radius_px=VISIUM_SPOT_DIAMETER_UM / 2 / mpp)
    return spot_xy, array_rc, counts
