"""Cells on the bin grid, on plain arrays: how much of each bin lies in each cell, nuclei grown into cells, and
expression per cell from expression per bin.

A cell is given as a polygon or as the pixels of a label image, placed on the H&E by an affine map to its pixels.
Its overlap with each bin (in H&E pixels squared) decides everything after: the cell's expression is the sum over
bins of the bin's expression times the share of the bin's area inside the cell, so that a bin shared by two cells
is split between them by area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from histex.geometry import BinGrid, apply_affine, cell_bin_weights, points_to_bins


@dataclass
class CellOverlap:
    """Cells against the bins of a grid.

    ``overlap`` ``(n_cells, n_rows * n_cols)``: area of each cell in each bin, in H&E pixels squared (flat bin index
    ``row * n_cols + col``); ``area``: each cell's area in H&E pixels squared; ``centroid``: ``(n_cells, 2)`` ``(x,
    y)`` in the cells' own coordinates.
    """

    overlap: sp.csr_matrix
    area: np.ndarray
    centroid: np.ndarray


def cell_polygons(gdf, name: str) -> np.ndarray:
    """The geometries of a shapes element as cells: its polygons, or its circles (points with a ``radius``
    column, as spatialdata stores them) as 64-gons.
    """
    import shapely

    geoms = np.asarray(gdf.geometry.values, dtype=object)
    if len(geoms) and (gdf.geometry.geom_type == "Point").all():
        if "radius" not in gdf.columns:
            raise ValueError(f"The point shapes {name!r} have no 'radius' column to make cells of.")
        geoms = shapely.buffer(geoms, gdf["radius"].to_numpy(float), quad_segs=16)
    return geoms


def polygon_overlap(polygons, affine: np.ndarray, grid: BinGrid, *, chunk: int = 100_000) -> CellOverlap:
    """:class:`CellOverlap` of shapely polygons in their own coordinates, placed on the H&E by ``affine`` (3 x 3,
    ``(x, y)`` to H&E pixels). ``chunk`` cells at a time, so that the intersections with the bins (a few per cell)
    never all exist at once.
    """
    import shapely

    polygons = np.asarray(getattr(polygons, "values", polygons), dtype=object)
    parts, areas = [], []
    for start in range(0, len(polygons), chunk):
        on_image = shapely.transform(polygons[start : start + chunk], lambda xy: apply_affine(affine, xy))
        area = shapely.area(on_image)
        parts.append((sp.diags(area) @ cell_bin_weights(on_image, grid)).tocsr())
        areas.append(area)
    if not parts:
        return CellOverlap(sp.csr_matrix((0, grid.n_rows * grid.n_cols)), np.zeros(0), np.zeros((0, 2)))
    centroid = shapely.get_coordinates(shapely.centroid(polygons)).reshape(len(polygons), 2)
    return CellOverlap(sp.vstack(parts, format="csr"), np.concatenate(areas), centroid)


def expand_polygons(polygons, distance: float) -> np.ndarray:
    """Grow nuclei into cells by ``distance`` without overlaps: each grows into the part of its surroundings that is
    nearer its centroid than any other's (its Voronoi cell), keeps itself whole, and gives up where it would cover
    another nucleus. ``distance`` in the polygons' own units; polygons that do not overlap stay apart.
    """
    import shapely

    polygons = np.asarray(getattr(polygons, "values", polygons), dtype=object)
    if distance == 0 or len(polygons) == 0:
        return polygons.copy()
    grown = shapely.buffer(polygons, distance)
    if len(polygons) > 1:
        centroids = shapely.centroid(polygons)
        extent = shapely.box(*shapely.total_bounds(grown))
        regions = shapely.get_parts(
            shapely.voronoi_polygons(shapely.multipoints(centroids), extend_to=extent, ordered=True)
        )
        if len(regions) == len(polygons):  # coincident centroids give fewer regions: then no Voronoi split
            grown = shapely.intersection(grown, regions)
    cells = shapely.union(grown, polygons)
    # Where a Voronoi cell reaches into a neighbouring nucleus, the nucleus keeps it.
    tree = shapely.STRtree(polygons)
    cell_idx, nucleus_idx = tree.query(cells, predicate="intersects")
    other = cell_idx != nucleus_idx
    for i in np.unique(cell_idx[other]):
        cells[i] = shapely.difference(cells[i], shapely.union_all(polygons[nucleus_idx[other & (cell_idx == i)]]))
    return cells


def label_overlap(
    labels, affine: np.ndarray, grid: BinGrid, *, block_rows: int = 2048
) -> tuple[np.ndarray, CellOverlap]:
    """The cells of a label image (0 is background) against the bins: every labelled pixel counts in the bin that
    holds its centre, with its area on the H&E (``|det affine|`` pixels squared). Streamed over blocks of rows, so
    a dask array is read a block at a time.

    Returns the label values, sorted, and their :class:`CellOverlap` in that order.
    """
    n_rows = labels.shape[0]
    scale = abs(float(np.linalg.det(affine[:2, :2])))
    n_bins = grid.n_rows * grid.n_cols
    pairs, sums = [], []
    for top in range(0, n_rows, block_rows):
        block = np.asarray(labels[top : top + block_rows])
        ys, xs = np.nonzero(block)
        if not len(ys):
            continue
        ids = block[ys, xs].astype(np.int64)
        xy = np.stack([xs + 0.5, ys + top + 0.5], axis=1)
        flat = points_to_bins(apply_affine(affine, xy), grid)
        flat[flat < 0] = n_bins  # off the grid
        key, count = np.unique(ids * (n_bins + 1) + flat, return_counts=True)  # n_bins: off the grid
        pairs.append(np.stack([key // (n_bins + 1), key % (n_bins + 1), count], axis=1))
        order = np.unique(ids, return_inverse=True)
        sums.append((order[0], np.bincount(order[1]), np.bincount(order[1], xy[:, 0]), np.bincount(order[1], xy[:, 1])))
    if not pairs:
        return np.zeros(0, np.int64), CellOverlap(sp.csr_matrix((0, n_bins)), np.zeros(0), np.zeros((0, 2)))
    label, idx = np.unique(np.concatenate([p[:, 0] for p in pairs]), return_inverse=True)
    pairs = np.concatenate(pairs)
    on_grid = pairs[:, 1] < n_bins
    overlap = sp.csr_matrix(
        (pairs[on_grid, 2] * scale, (idx[on_grid], pairs[on_grid, 1])), shape=(len(label), n_bins), dtype=np.float64
    )
    count, sum_x, sum_y = np.zeros(len(label)), np.zeros(len(label)), np.zeros(len(label))
    for ids, n, sx, sy in sums:
        where = np.searchsorted(label, ids)
        count[where] += n
        sum_x[where] += sx
        sum_y[where] += sy
    return label, CellOverlap(overlap, count * scale, np.stack([sum_x / count, sum_y / count], axis=1))


def bin_fractions(overlap: sp.csr_matrix, bins_flat: np.ndarray, bin_area: float) -> sp.csr_matrix:
    """``(n_cells, n_bins_in_table)``: the share of each listed bin's area that lies in each cell, for the bins at
    flat grid indices ``bins_flat`` (a table's rows, in order).
    """
    return (overlap[:, np.asarray(bins_flat, dtype=np.int64)] / bin_area).tocsr()


def cell_expression(fractions: sp.csr_matrix, values, *, quadrature: bool = False, block: int = 65536) -> np.ndarray:
    """``fractions @ values`` in float32, ``values`` ``(n_bins, n_genes)`` read a block of rows at a time (a NumPy
    array, or a dask or zarr array of a backed table). With ``quadrature``, ``sqrt(fractions**2 @ values**2)``: the
    standard deviation of the sum for bins that vary independently.
    """
    fractions = (fractions.power(2) if quadrature else fractions).astype(np.float32).tocsc()
    out = np.zeros((fractions.shape[0], values.shape[1]), dtype=np.float32)
    for start in range(0, values.shape[0], block):
        part = fractions[:, start : start + block]
        if part.nnz:
            rows = _dense_rows(values, start, block)
            out += part @ (rows**2 if quadrature else rows)
    return np.sqrt(out, out=out) if quadrature else out


def cell_variance(
    fractions: sp.csr_matrix, mean, ensemble_sd, dispersion: np.ndarray, *, block: int = 65536
) -> np.ndarray:
    """The variance of each cell's count, for bins whose counts are negative binomial (mean ``mean``, variance
    ``mean + dispersion * mean**2 + ensemble_sd**2``, :mod:`histex.model.trust`) and independent, a cell taking
    each bin's transcripts with the probability ``fractions`` gives: ``fractions @ mean + fractions**2 @
    (dispersion * mean**2 + ensemble_sd**2)``. Arrays as :func:`cell_expression` reads them.
    """
    dispersion = np.asarray(dispersion, dtype=np.float32)
    share = fractions.astype(np.float32).tocsc()
    share2 = fractions.power(2).astype(np.float32).tocsc()
    out = np.zeros((fractions.shape[0], mean.shape[1]), dtype=np.float32)
    for start in range(0, mean.shape[0], block):
        if share[:, start : start + block].nnz == 0:
            continue
        mu, sd = (_dense_rows(a, start, block) for a in (mean, ensemble_sd))
        out += share[:, start : start + block] @ mu
        out += share2[:, start : start + block] @ (dispersion * mu**2 + sd**2)
    return out


def _dense_rows(values, start: int, block: int) -> np.ndarray:
    rows = values[start : start + block]
    return np.asarray(rows.compute() if hasattr(rows, "compute") else rows, dtype=np.float32)
