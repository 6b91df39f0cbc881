"""Ground truth from real tissue architecture: an H&E image and its nuclei, each class with an expression programme."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

from histex.geometry import BinGrid, cell_bin_weights
from histex.sim._hidden import GENE_GROUPS, hidden_rates
from histex.sim._layout import add_truth_cells, visium_like
from histex.sim._pseudo import pseudo_visium

logger = logging.getLogger(__name__)


def draw_programmes(classes, n_genes: int = 60, *, seed: int = 0) -> pd.DataFrame:
    """Expression programmes for cell classes: expected counts per cell of median size.

    Every gene has a low baseline (0.02-0.3 counts per cell); each class has its own block of marker genes
    (``n_genes // len(classes)``, at 1-6 counts per cell), so that the classes are told apart by expression as
    they are by morphology.

    Returns
    -------
    pandas.DataFrame
        Classes x genes (``G000``, ``G001``, ...).
    """
    classes = list(classes)
    if not classes:
        raise ValueError("No cell classes to draw programmes for.")
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.02, 0.3, size=(len(classes), n_genes))
    per_class = max(1, n_genes // len(classes))
    for i in range(len(classes)):
        markers = np.arange(i * per_class, min((i + 1) * per_class, n_genes))
        rates[i, markers] = rng.uniform(1.0, 6.0, size=len(markers))
    return pd.DataFrame(rates, index=pd.Index(classes), columns=[f"G{j:03d}" for j in range(n_genes)])


def from_nuclei(
    image: np.ndarray,
    nuclei,
    *,
    mpp: float,
    programmes: pd.DataFrame | None = None,
    n_genes: int = 60,
    class_key: str = "class_name",
    clone_genes: int = 0,
    gradient_genes: int = 0,
    bin_size_um: float = 8.0,
    dataset_id: str = "sim",
    whole_counts: bool = False,
    seed: int = 0,
):
    """A pseudo-Visium section with known 8 µm truth, from an H&E image and the nuclei segmented on it.

    Each nucleus is a cell of its class: it draws Poisson counts from its class's programme, scaled by its area
    relative to the median nucleus, and its counts are split over the bins it overlaps in proportion to area
    (the truth). 55 µm spots on a 100 µm hexagonal lattice over the tissue sum the bins in their disks.

    Beside the class programmes, which the image shows through the cells' morphology, ``clone_genes`` and
    ``gradient_genes`` add genes that the image cannot see: two clones split by a wavy line across the section and
    a smooth gradient field, expressed by every cell whatever its class (:func:`histex.sim._hidden.hidden_rates`).

    Parameters
    ----------
    image
        ``(y, x, 3)`` uint8 H&E.
    nuclei
        A GeoDataFrame of nucleus polygons in the image's pixel coordinates, with a ``class_key`` column.
    mpp
        Microns per pixel of the image.
    programmes
        Classes x genes expected counts per median cell; drawn with :func:`draw_programmes` when not given.
    n_genes
        Genes of drawn programmes.
    class_key
        Column of ``nuclei`` with the cell class.
    clone_genes
        Genes of the two clones (half of them, rounded up, in clone A), ``CloneA_00``..., ``CloneB_00``....
    gradient_genes
        Genes that follow the gradient, ``Grad_00``....
    bin_size_um
        Edge of the truth bins.
    dataset_id
        Names the elements (see :func:`histex.sim.visium_like`).
    whole_counts
        ``False`` (default): a cell's counts are split over its bins in proportion to area, so that a bin holds the
        count it is expected to hold, in fractions. ``True``: each of a cell's transcripts falls in one of its bins,
        drawn by their shares of its area (:func:`place_transcripts`), so that bins hold whole counts as a Visium HD
        measures them, with their counting noise; the spots sum them.
    seed
        Seeds the programmes, the counts and the position of the spot lattice.

    Returns
    -------
    spatialdata.SpatialData
        Ready for :func:`histex.pp.extract_features` and :func:`histex.tl.super_resolve`, with ``tables["truth"]``
        (``obs["in_tissue"]``, ``obs["class"]``: the class covering most of the bin),
        ``tables["truth"].uns["programmes"]``, ``tables["truth"].var["group"]`` (``"visible"`` for the class
        programmes, ``"clone"``, ``"gradient"``), and the truth per cell: ``shapes["truth_cells_boundaries"]`` (the
        nuclei) and ``tables["truth_cells"]`` (their counts, ``obs["class"]``, ``obs["area_um2"]``).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (y, x, 3) RGB, got shape {image.shape}.")
    if class_key not in nuclei:
        raise ValueError(f"nuclei have no {class_key!r} column; columns: {list(nuclei.columns)}.")
    polygons = np.asarray(nuclei.geometry.values, dtype=object)
    classes = nuclei[class_key].astype(str).to_numpy()
    if len(polygons) == 0:
        raise ValueError("No nuclei given.")
    x0, y0, x1, y1 = np.asarray(nuclei.geometry.total_bounds)
    if x0 < 0 or y0 < 0 or x1 > image.shape[1] or y1 > image.shape[0]:
        raise ValueError(
            f"Nuclei reach outside the image ({image.shape[1]} x {image.shape[0]} px): bounds "
            f"({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}). Give them in the image's pixel coordinates."
        )
    for label, count in (("clone_genes", clone_genes), ("gradient_genes", gradient_genes)):
        if int(count) != count or count < 0:
            raise ValueError(f"{label} must be a whole number of genes, 0 or more; got {count!r}.")
    rng = np.random.default_rng(seed)
    if programmes is None:
        programmes = draw_programmes(sorted(set(classes)), n_genes, seed=seed)
    missing = sorted(set(classes) - set(programmes.index.astype(str)))
    if missing:
        raise ValueError(
            f"No expression programme for the classes {missing}; programmes cover {list(programmes.index)}."
        )

    import shapely

    grid = BinGrid.for_image(image.shape[:2], mpp=mpp, bin_size_um=bin_size_um)
    weights = cell_bin_weights(polygons, grid)  # (cells, bins)
    area = shapely.area(polygons)
    size = area / np.median(area[area > 0]) if (area > 0).any() else np.ones(len(area))
    counts = rng.poisson(programmes.loc[classes].to_numpy(float) * size[:, None]).astype(np.float32)
    genes = list(programmes.columns.astype(str))
    groups = ["visible"] * len(genes)
    cells_obs = pd.DataFrame({"class": pd.Categorical(classes)})
    if clone_genes or gradient_genes:
        # a stream of their own, so that adding hidden genes leaves the class counts and the spot lattice as they were
        hidden_rng = np.random.default_rng([seed, 1])
        centroids_um = shapely.get_coordinates(shapely.centroid(polygons)).reshape(-1, 2) * mpp
        hidden, in_clone_a, field = hidden_rates(
            centroids_um, image.shape[0] * mpp, image.shape[1] * mpp, clone_genes=int(clone_genes),
            gradient_genes=int(gradient_genes), rng=hidden_rng,
        )  # fmt: skip
        counts = np.hstack([counts, hidden_rng.poisson(hidden.to_numpy() * size[:, None]).astype(np.float32)])
        genes += list(hidden.columns)
        groups += ["clone"] * int(clone_genes) + ["gradient"] * int(gradient_genes)
        cells_obs["clone"] = pd.Categorical(np.where(in_clone_a, "A", "B"), categories=["A", "B"])
        cells_obs["gradient"] = field
    cell_counts = sp.csr_matrix(counts)
    if whole_counts:  # a stream of its own: the cells' counts and the spot lattice stay as they were
        bin_counts = place_transcripts(weights, counts, np.random.default_rng([seed, 2]))
    else:
        bin_counts = (weights.T @ cell_counts).tocsr()  # (bins, genes)

    class_names = list(programmes.index.astype(str))
    class_index = pd.Index(class_names).get_indexer(classes)
    class_area = sp.csr_matrix((np.ones(len(classes)), (class_index, np.arange(len(classes)))),
                               shape=(len(class_names), len(classes))) @ weights  # fmt: skip
    covered = np.asarray(weights.sum(axis=0)).ravel().reshape(grid.shape) > 0
    tissue = ndimage.binary_fill_holes(ndimage.binary_closing(covered, np.ones((3, 3)), iterations=2) | covered)
    rows, cols = np.nonzero(tissue)
    flat = rows * grid.n_cols + cols
    dominant = np.asarray(class_area[:, flat].argmax(axis=0)).ravel()
    has_cells = np.asarray(class_area[:, flat].sum(axis=0)).ravel() > 0
    truth_obs = pd.DataFrame(
        {
            "in_tissue": np.ones(len(rows), bool),
            "class": pd.Categorical(
                np.where(has_cells, np.asarray(class_names)[dominant], "none"), categories=[*class_names, "none"]
            ),
        }
    )
    truth_counts = bin_counts[flat]

    spot_xy, array_rc, spot_counts = pseudo_visium(tissue, grid, mpp, rows, cols, truth_counts, rng=rng)
    logger.info(
        "Simulated %d cells of %d classes, %d genes: %d tissue bins, %d spots.",
        len(classes), len(class_names), len(genes), len(rows), len(spot_xy),
    )  # fmt: skip
    var = pd.DataFrame(index=pd.Index(genes))
    sdata = visium_like(
        dataset_id=dataset_id,
        image=np.ascontiguousarray(np.moveaxis(image, -1, 0)),
        mpp=mpp,
        grid=grid,
        spot_xy_px=spot_xy,
        array_rc=array_rc,
        spot_counts=spot_counts,
        var=var,
        truth_rows=rows,
        truth_cols=cols,
        truth_counts=truth_counts,
        truth_obs=truth_obs,
    )
    sdata.tables["truth"].uns["programmes"] = programmes
    # the truth says each gene's group; the spots, as measured, do not
    group = pd.Categorical(groups, categories=list(GENE_GROUPS))
    sdata.tables["truth"].var["group"] = group
    add_truth_cells(sdata, polygons, cell_counts, mpp=mpp, var=var.assign(group=group), obs=cells_obs)
    return sdata


def place_transcripts(weights: sp.csr_matrix, counts: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Each transcript of each cell placed in one bin, drawn by the cell's area shares (``weights``, cells x bins,
    a row summing to 1 or less where the cell reaches past the grid: the transcripts of the part outside are lost, as
    the fractional split loses them). Returns bins x genes whole counts (float32).
    """
    weights = sp.csr_matrix(weights)
    counts = np.rint(np.asarray(counts)).astype(np.int64)
    cells, genes = np.nonzero(counts)
    per_pair = counts[cells, genes]
    cell, gene = np.repeat(cells, per_pair), np.repeat(genes, per_pair)
    share_in_grid = np.asarray(weights.sum(axis=1)).ravel()
    cumulative = np.cumsum(weights.data)
    before_row = np.concatenate([[0.0], cumulative])[weights.indptr[:-1]]
    u = rng.random(len(cell))
    kept = u < share_in_grid[cell]
    cell, gene, u = cell[kept], gene[kept], u[kept]
    entry = np.searchsorted(cumulative, before_row[cell] + u, side="right")
    entry = np.clip(entry, weights.indptr[cell], weights.indptr[cell + 1] - 1)  # rounding at a row's end
    bins = weights.indices[entry]
    n_bins = weights.shape[1]
    placed = sp.csr_matrix((np.ones(len(bins), np.float32), (bins, gene)), shape=(n_bins, counts.shape[1]))
    placed.sum_duplicates()
    return placed
