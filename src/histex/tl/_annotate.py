"""``annotate``: tissue domains on super-resolved bins, or cell types on cells, named by marker genes, with their
boundaries.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from histex import domains as dm
from histex._tables import cell_centroids, check_layer, observation_table
from histex._validation import check_bool, check_choice, check_int, check_key, check_number, check_seed, warn_user
from histex.expression import expression_pcs, log_normalised
from histex.tl._trust import select_genes

logger = logging.getLogger(__name__)

USES = ("embedding", "expression")
METHODS = ("kmeans", "leiden")


def _representation(table, use: str, log_expression, n_pcs: int, n_top_genes: int | None) -> np.ndarray:
    """The embedding, or principal components of ``log_expression`` (dense: scaled in place)."""
    if use == "embedding":
        return np.asarray(table.obsm["X_histex"], dtype=np.float32)
    return expression_pcs(log_expression, n_pcs, n_top_genes=n_top_genes)


def _leiden(values: np.ndarray, resolution: float, seed: int) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(obsm={"X_rep": values}, obs=pd.DataFrame(index=np.arange(len(values)).astype(str)))
    # exact neighbours (scikit-learn): with scipy >= 1.15 the default pynndescent graph of more than 4,096 bins is a
    # sparse array that scanpy 1.11 cannot read
    sc.pp.neighbors(holder, use_rep="X_rep", transformer="sklearn", random_state=seed)
    sc.tl.leiden(holder, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed)
    return dm.by_size(holder.obs["leiden"].astype(int).to_numpy())


def annotate(
    sdata,
    table_key: str = "histex",
    *,
    n_domains: int = 8,
    use: str | None = None,
    method: str = "kmeans",
    resolution: float = 1.0,
    smooth: float | None = None,
    markers: dict[str, list[str]] | None = None,
    min_score: float = 0.25,
    boundary: bool = False,
    layer: str | None = None,
    n_pcs: int = 30,
    n_top_genes: int | None = 2000,
    genes: str | list[str] | None = None,
    seed: int = 0,
    key_added: str = "domain",
) -> None:
    """Tissue domains on 8 µm bins, or cell types on cells, optionally named by marker genes, with their boundaries.

    Every bin or cell is described by the fused embedding of :func:`histex.tl.super_resolve` or by its expression
    (principal components of log-normalised, scaled counts), averaged with its neighbours (``smooth``), and
    clustered. With ``markers``, each domain takes the label whose marker genes score highest over its bins or cells
    (the mean z-score of the genes' log-normalised expression), or ``"unknown"`` when that score is below
    ``min_score``. On the cell table of :func:`histex.tl.to_cells`, with no smoothing (the default there), the
    domains are cell clusters and the labels cell types: ``annotate(sdata, "histex_cells", markers=...,
    key_added="cell_type")``.

    Parameters
    ----------
    sdata
        A SpatialData with a table of bins (``obs["array_row"]``, ``obs["array_col"]``): the one
        :func:`histex.tl.super_resolve` writes, or any Visium HD-like bin table; or a table of cells with their
        centroids in ``obsm["spatial"]`` (:func:`histex.tl.to_cells`, sopa, a Xenium reader).
    table_key
        The table of bins or cells.
    n_domains
        Number of domains (``method="kmeans"``).
    use
        ``"embedding"`` (``obsm["X_histex"]``) or ``"expression"``. ``None``: the embedding where the table has
        one (the bins of :func:`histex.tl.super_resolve`), else the expression (cells, Visium HD bins).
    method
        ``"kmeans"`` or ``"leiden"`` (scanpy's, on a nearest-neighbour graph of the bins; ``resolution`` sets the
        number of domains).
    resolution
        Leiden resolution.
    smooth
        Standard deviation of the Gaussian average over neighbours before clustering, in bins on a bin table and in
        cell spacings (the median distance from a cell to the nearest other) on a cell table; 0: none. ``None``: 1
        on bins (domains), 0 on cells (cell types).
    markers
        Label -> marker genes, e.g. ``{"tumour": ["EPCAM", "KRT8"], "immune": ["PTPRC", "CD3E"]}``.
    min_score
        Domains whose best marker score is below this (in standard deviations of the bins) are ``"unknown"``.
    boundary
        Mark the bins that touch a bin of another label (of another domain without ``markers``), e.g. a tumour edge;
        on cells, those with a cell of another label within 1.5 cell spacings.
    layer
        Layer with the counts for ``use="expression"`` and the marker scores; default ``X``.
    n_pcs
        Principal components for ``use="expression"``.
    n_top_genes
        For ``use="expression"``, the principal components use the genes of highest variance of the log-normalised
        expression, this many; ``None``: all. Sparse counts (a Visium HD table of every gene) stay sparse.
    genes
        Genes whose expression describes the bins or cells (implies ``use="expression"``): a list, or
        ``"reliable"`` for those :func:`histex.tl.super_resolve` flags in ``var["reliable"]`` (the genes whose 8 µm
        maps can be trusted); ``None``: every gene. The counts are still normalised by the totals over all genes.
    seed
        Seed of the clustering.
    key_added
        Prefix of what is written.

    Returns
    -------
    None. The table gains ``obs[key_added]`` (domain ``"0"``, ``"1"``, ... by decreasing size) and, with
    ``markers``, ``obs[f"{key_added}_label"]``, ``obs[f"{key_added}_confidence"]`` (the domain's best marker score)
    and ``obsm[f"{key_added}_scores"]`` (observations x labels marker scores); with ``boundary``,
    ``obs[f"{key_added}_boundary"]``; ``uns[key_added]`` the settings. If the call fails, nothing is written.
    """
    table, kind = observation_table(sdata, table_key)
    check_layer(table, layer)
    chosen = select_genes(table, genes, table_key)
    n_domains = check_int("n_domains", n_domains, none_ok=method != "kmeans")
    resolution = check_number("resolution", resolution, minimum=0, above=True)
    smooth = check_number("smooth", smooth, minimum=0, none_ok=True)
    min_score = check_number("min_score", min_score)
    boundary = check_bool("boundary", boundary)
    n_pcs = check_int("n_pcs", n_pcs)
    n_top_genes = check_int("n_top_genes", n_top_genes, none_ok=True)
    seed = check_seed(seed)
    check_key("key_added", key_added)
    _check_markers(markers)
    if chosen is not None and use == "embedding":
        raise ValueError(
            "genes selects the expression that describes the bins; it cannot be used with use='embedding'."
        )
    if use is None:
        use = "embedding" if "X_histex" in table.obsm and chosen is None else "expression"
    if smooth is None:
        smooth = 1.0 if kind == "bins" else 0.0
    check_choice("use", use, USES)
    if use == "embedding" and "X_histex" not in table.obsm:
        raise ValueError("The table has no obsm['X_histex'] (the fused embedding of super_resolve); use='expression'.")
    check_choice("method", method, METHODS)
    if method == "kmeans" and not 1 <= n_domains <= table.n_obs:
        raise ValueError(f"n_domains must be between 1 and the {table.n_obs} {kind}, got {n_domains}.")
    marker_idx = _marker_columns(table, markers) if markers else None

    # Log-normalise once: the expression representation needs every gene, the marker scores only the markers.
    log_expression = log_normalised(table, layer, keep_sparse=True) if use == "expression" else None
    if marker_idx is not None:
        marker_cols = np.unique(np.concatenate(list(marker_idx.values())))
        marker_log = (
            log_expression[:, marker_cols]  # a copy, taken before the representation scales log_expression in place
            if log_expression is not None
            else log_normalised(table, layer, columns=marker_cols)
        )
        marker_log = marker_log.toarray() if sp.issparse(marker_log) else marker_log
        scores = dm.marker_scores(marker_log, {k: np.searchsorted(marker_cols, v) for k, v in marker_idx.items()})
    neighbours = _Neighbours(table, kind)
    if chosen is not None:
        log_expression = log_expression[:, pd.Index(table.var_names).get_indexer(chosen)]
    values = neighbours.smooth(_representation(table, use, log_expression, n_pcs, n_top_genes), smooth)
    if method == "kmeans":
        domains = dm.kmeans_domains(values, n_domains, seed=seed)
    else:
        domains = _leiden(values, resolution, seed)
    n_found = int(domains.max()) + 1
    obs = {key_added: pd.Categorical(domains.astype(str), categories=[str(i) for i in range(n_found)])}
    obsm = {}
    settings = {
        "n_domains": n_found,
        "use": use,
        "method": method,
        "resolution": resolution if method == "leiden" else None,
        "smooth": smooth,
        "observations": kind,
        "seed": seed,
        "layer": layer or "X",
        "n_top_genes": n_top_genes if use == "expression" else None,
        "genes": genes if isinstance(genes, str) or genes is None else list(chosen),
    }
    labels = domains.astype(str)
    if marker_idx is not None:
        names, confidence = dm.label_domains(domains, scores, list(marker_idx), min_score=min_score)
        labels = names[domains].astype(str)
        # only the labels given out, in the markers' order: scanpy and squidpy refuse empty categories
        given = set(np.asarray(labels).tolist())
        obs[f"{key_added}_label"] = pd.Categorical(labels, categories=[c for c in [*markers, "unknown"] if c in given])
        obs[f"{key_added}_confidence"] = confidence[domains].astype(np.float32)
        obsm[f"{key_added}_scores"] = pd.DataFrame(scores, index=table.obs_names, columns=list(markers))
        settings.update(
            markers={k: list(v) for k, v in markers.items()},
            min_score=min_score,
            domain_labels=dict(zip(map(str, range(n_found)), map(str, names), strict=True)),
            domain_confidence=dict(zip(map(str, range(n_found)), map(float, confidence), strict=True)),
        )
    if boundary:
        obs[f"{key_added}_boundary"] = neighbours.boundary(labels)

    # Everything is computed; now write.
    for name, column in obs.items():
        table.obs[name] = column
    for name, frame in obsm.items():
        table.obsm[name] = frame
    table.uns[key_added] = settings
    logger.info(
        "Table %r: %d domains from the %s (%s)%s.",
        table_key,
        n_found,
        use,
        method,
        f"; labels {settings['domain_labels']}" if marker_idx is not None else "",
    )


class _Neighbours:
    """Who neighbours whom: bins on their grid, or cells within a few typical cell spacings."""

    def __init__(self, table, kind: str):
        self.kind = kind
        if kind == "bins":
            self.rows = table.obs["array_row"].to_numpy().astype(np.int64)
            self.cols = table.obs["array_col"].to_numpy().astype(np.int64)
        else:
            self.xy = cell_centroids(table)
            self.spacing = dm.typical_spacing(self.xy)

    def smooth(self, values: np.ndarray, sigma: float) -> np.ndarray:
        if self.kind == "bins":
            return dm.smooth_on_grid(values, self.rows, self.cols, sigma)
        return dm.smooth_on_points(values, self.xy, sigma * self.spacing)

    def boundary(self, labels: np.ndarray) -> np.ndarray:
        if self.kind == "bins":
            return dm.boundary_bins(labels, self.rows, self.cols)
        return dm.boundary_points(labels, self.xy, 1.5 * self.spacing)


def _check_markers(markers) -> None:
    if markers is None:
        return
    if not isinstance(markers, dict) or not markers:
        raise TypeError(f"markers must be a dict of label -> list of marker genes, got {markers!r}.")
    for label, genes in markers.items():
        if isinstance(genes, str) or not all(isinstance(g, str) for g in genes):
            raise TypeError(f"markers[{label!r}] must be a list of gene names, got {genes!r}.")


def _marker_columns(table, markers: dict[str, list[str]]) -> dict[str, np.ndarray]:
    genes = pd.Index(table.var_names)
    out, absent = {}, {}
    for label, names in markers.items():
        names = [names] if isinstance(names, str) else list(names)
        present = [g for g in names if g in genes]
        if len(present) < len(names):
            absent[label] = [g for g in names if g not in genes]
        if present:
            out[label] = genes.get_indexer(present)
    empty = [label for label in markers if label not in out]
    if empty:
        raise ValueError(
            f"No marker gene of {empty} is in the table (absent: {absent}). The table has {len(genes)} genes, "
            f"e.g. {', '.join(genes[:5])}."
        )
    if absent:
        warn_user(f"Marker genes not in the table, left out: {absent}.")
    return out
