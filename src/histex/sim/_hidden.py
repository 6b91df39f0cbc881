"""Expression the image cannot see: tumour-like clones and smooth gradients over the tissue, beside cell programmes.

In real tissue, clones of a tumour, gradients of hypoxia or of a signal, and cell states that look alike in H&E
are patterns that only the measured spots carry. Simulated sections gain genes that follow them so that a
benchmark can tell a method that uses the spots from one that only reads the image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Gene groups of a simulated section (``tables["truth"].var["group"]``): class programmes, seen through the cells'
#: morphology; clones, a step between two regions; gradients, a smooth field.
GENE_GROUPS: tuple[str, str, str] = ("visible", "clone", "gradient")


def gradient_field(
    xy_um: np.ndarray, h_um: float, w_um: float, direction: float, cycles: float, phase: float
) -> np.ndarray:
    """A smooth positive field with mean about 1: linear along ``direction`` plus a gentle sinusoid across it.

    Parameters
    ----------
    xy_um
        ``(n, 2)`` locations ``(x, y)`` in µm.
    h_um, w_um
        Height and width of the section in µm; the field spans them.
    direction
        Angle of the linear trend in radians.
    cycles
        Periods of the sinusoid across the section.
    phase
        Phase of the sinusoid in radians.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` values of at least 0.05.
    """
    u = np.array([np.cos(direction), np.sin(direction)])
    centred = (np.asarray(xy_um, float) - np.array([w_um, h_um]) / 2) / max(h_um, w_um)
    along, across = centred @ u, centred @ np.array([-u[1], u[0]])
    return np.clip(1.0 + 1.4 * along + 0.3 * np.sin(2 * np.pi * cycles * across + phase), 0.05, None)


def clone_regions(xy_um: np.ndarray, h_um: float, w_um: float, rng: np.random.Generator) -> np.ndarray:
    """Two clones split by a wavy line through the middle third of the section: ``True`` for clone A.

    The line runs in a random direction; it bends by a sinusoid of 6% of the section's size and 0.5 to 1.5
    periods, so that each clone is one smooth region several spots across, whatever the cells are.
    """
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    size = max(h_um, w_um)
    centre = np.array([w_um, h_um]) * rng.uniform(1 / 3, 2 / 3, 2)
    offset = np.asarray(xy_um, float) - centre
    along = offset @ np.array([-normal[1], normal[0]])
    bend = 0.06 * size * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * along / size + rng.uniform(0, 2 * np.pi))
    return offset @ normal > bend


def hidden_rates(
    xy_um: np.ndarray,
    h_um: float,
    w_um: float,
    *,
    clone_genes: int,
    gradient_genes: int,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Expected counts per cell of median size of the clone and gradient genes, for cells at ``xy_um``.

    Half the clone genes (rounded up) are expressed by every cell of clone A, the others by every cell of clone B,
    each at 0.5-3 counts per cell; a gradient gene is expressed by every cell at 0.5-3 counts times the field
    (:func:`gradient_field`), whatever the cell's class.

    Returns
    -------
    rates
        Cells x genes (``CloneA_00``..., ``CloneB_00``..., ``Grad_00``...).
    in_clone_a
        ``(n,)`` bool, the cells of clone A.
    field
        ``(n,)`` the gradient at each cell.
    """
    n = len(xy_um)
    in_clone_a = clone_regions(xy_um, h_um, w_um, rng)
    field = gradient_field(
        xy_um, h_um, w_um, rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.6), rng.uniform(0, 2 * np.pi)
    )
    n_a = -(-clone_genes // 2)
    names = [f"CloneA_{i:02d}" for i in range(n_a)] + [f"CloneB_{i:02d}" for i in range(clone_genes - n_a)]
    names += [f"Grad_{i:02d}" for i in range(gradient_genes)]
    level = rng.uniform(0.5, 3.0, clone_genes + gradient_genes)
    rates = np.empty((n, len(names)))
    rates[:, :n_a] = np.where(in_clone_a, 1.0, 0.0)[:, None] * level[:n_a]
    rates[:, n_a:clone_genes] = np.where(in_clone_a, 0.0, 1.0)[:, None] * level[n_a:clone_genes]
    rates[:, clone_genes:] = field[:, None] * level[clone_genes:]
    return pd.DataFrame(rates, columns=pd.Index(names)), in_clone_a, field
