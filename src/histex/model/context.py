"""Expression context: measured spots densified with edge midpoints, looked up by location."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import Delaunay, cKDTree


@dataclass
class ContextPoints:
    """Points that carry an expression vector: the spots and the midpoints of neighbouring spots.

    ``parents[i]`` are the two spots a point was made from (``(s, s)`` for spot ``s`` itself).
    """

    positions: np.ndarray  # (n, 2), same units as the spot positions given
    values: np.ndarray  # (n, n_genes)
    parents: np.ndarray  # (n, 2) int

    def __len__(self) -> int:
        return len(self.positions)


def neighbour_edges(positions: np.ndarray, max_length: float) -> np.ndarray:
    """Unique Delaunay edges ``(i, j)``, ``i < j``, no longer than ``max_length``."""
    if len(positions) < 3:
        pairs = np.array([(0, 1)]) if len(positions) == 2 else np.empty((0, 2), dtype=int)
    else:
        simplices = Delaunay(positions).simplices
        pairs = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [0, 2]]])
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    length = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1) if len(pairs) else np.empty(0)
    return pairs[length <= max_length]


def context_points(positions: np.ndarray, values: np.ndarray, *, pitch: float, max_edge: float = 1.5) -> ContextPoints:
    """The spots plus the midpoint of every pair of neighbouring spots, valued as the mean of the two.

    This is the linear interpolation that up-sampling the spot lattice by two computes, for any spot layout and
    without a dense lattice matrix. Neighbours are Delaunay edges no longer than ``max_edge * pitch``.
    """
    positions = np.asarray(positions, dtype=float)
    values = np.asarray(values, dtype=np.float32)
    edges = neighbour_edges(positions, max_edge * pitch)
    n = len(positions)
    self_parents = np.repeat(np.arange(n)[:, None], 2, axis=1)
    return ContextPoints(
        positions=np.concatenate([positions, positions[edges].mean(axis=1)]),
        values=np.concatenate([values, values[edges].mean(axis=1)]).astype(np.float32),
        parents=np.concatenate([self_parents, edges]).astype(np.int64),
    )


def nearest_context(
    context: ContextPoints, queries: np.ndarray, k: int, *, exclude_spots: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the ``k`` context points nearest to each query location, ``(n_queries, k)``, nearest first.

    With ``exclude_spots`` (one spot index per query, -1 for none), points made from that spot (the spot itself and
    its midpoints) are skipped: at training, a spot must not see its own measurement in its context.
    """
    queries = np.asarray(queries, dtype=float)
    if k > len(context):
        raise ValueError(f"k_context={k} is larger than the {len(context)} context points.")
    tree = cKDTree(context.positions)
    if exclude_spots is None:
        _, idx = tree.query(queries, k=k)
        return np.asarray(idx, dtype=np.int64).reshape(len(queries), k)
    exclude_spots = np.asarray(exclude_spots)
    # A spot is a parent of itself and of at most a handful of midpoints; ask for enough extra neighbours.
    extra = int(np.bincount(context.parents.ravel()).max()) + 1
    m = min(len(context), k + extra)
    _, idx = tree.query(queries, k=m)
    idx = np.asarray(idx).reshape(len(queries), m)
    banned = (context.parents[idx] == exclude_spots[:, None, None]).any(-1)
    order = np.argsort(banned, axis=1, kind="stable")  # keeps distance order among the allowed
    picked = np.take_along_axis(idx, order, axis=1)[:, :k]
    if np.take_along_axis(banned, order, axis=1)[:, :k].any():
        raise ValueError("Too few context points remain once each spot's own measurement is left out.")
    return picked.astype(np.int64)
