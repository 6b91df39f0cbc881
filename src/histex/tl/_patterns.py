"""``spatial_patterns``: each gene's spatial autocorrelation (Moran's I) on the bins and on the spots, side by side."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd

from histex import _sdata
from histex._tables import bin_table, check_layer, histex_record, table_of
from histex._validation import check_choice, check_key
from histex.expression import log_normalised
from histex.tl._trust import select_genes

logger = logging.getLogger(__name__)

#: Bin neighbourhoods: neighbours per bin -> radius in bins (4: edge neighbours; 8: edges and corners).
BIN_NEIGHBOURHOODS = {4: 1.2, 8: 1.5}
SPOT_NEIGHBOURS = 6  # the hexagonal Visium lattice
COLUMNS = ("moran_bins", "moran_spots", "gain", "pval_bins", "pval_spots", "fdr_bins", "fdr_spots")


def spatial_patterns(
    sdata,
    table_key: str = "histex",
    *,
    genes: list[str] | None = None,
    spots_table_key: str | None = None,
    layer: str | None = None,
    n_neighs_bins: int = 8,
    key_added: str = "spatial_patterns",
) -> pd.DataFrame:
    """Moran's I of each gene on 8 µm bins and on the Visium spots, side by side: which genes gain structure.

    A gene whose pattern is smaller than a spot (immune aggregates, glands) is nearly flat across spots but
    autocorrelated across bins, so its Moran's I rises from the spots to the bins; a pattern larger than a spot
    (a gradient) is autocorrelated on both. Both are scored with squidpy: a spatial graph
    (:func:`squidpy.gr.spatial_neighbors_radius` on the bin grid, :func:`squidpy.gr.spatial_neighbors_grid` with 6
    neighbours on the spot lattice) and :func:`squidpy.gr.spatial_autocorr` (``mode="moran"``, row-normalised
    weights, analytic p-values under normality), on log1p of counts scaled to the median total of each table.

    Parameters
    ----------
    sdata
        A SpatialData with a table of bins (``obs["array_row"]``, ``obs["array_col"]``): the one
        :func:`histex.tl.super_resolve` writes, or any Visium HD-like bin table.
    table_key
        The bin table.
    genes
        Genes to score: a list, or ``"reliable"`` for those :func:`histex.tl.super_resolve` flags in
        ``var["reliable"]``; default every gene of the bin table that the spot table also has (every gene of the
        bin table when there are no spots).
    spots_table_key
        The table of Visium spot counts; default the one :func:`histex.tl.super_resolve` learned from (recorded in
        the bin table's ``uns["histex"]``). Without either, as for a Visium HD table, only the bins are scored and
        the spot columns are NaN. Spot centres are its ``obsm["spatial"]``, else placed on the hexagonal lattice
        from its ``obs["array_row"]`` and ``obs["array_col"]``.
    layer
        Layer of the bin table with the counts; default ``X``. The spots are read from the layer
        :func:`histex.tl.super_resolve` read them from, or ``X``.
    n_neighs_bins
        Neighbours of a bin on the grid: 4 (sharing an edge) or 8 (and the corners). The graph is built on
        ``array_row``/``array_col``, so the bins need no ``obsm["spatial"]``.
    key_added
        Name of what is written.

    Returns
    -------
    :class:`pandas.DataFrame`
        One row per gene, sorted by ``gain`` (descending), columns ``moran_bins``, ``moran_spots`` (Moran's I),
        ``gain`` (bins minus spots), ``pval_bins``, ``pval_spots`` (one-sided analytic p-values of positive
        autocorrelation) and ``fdr_bins``, ``fdr_spots`` (Benjamini-Hochberg over the genes). A gene that is
        constant on a table scores NaN there. The frame is also written to the bin table's ``uns[key_added]``,
        and the settings to ``uns[f"{key_added}_params"]``; nothing else is modified, and if the call fails,
        nothing is written.
    """
    check_key("key_added", key_added)
    table = bin_table(sdata, table_key)
    check_choice("n_neighs_bins", n_neighs_bins, sorted(BIN_NEIGHBOURHOODS))
    check_layer(table, layer, f"table {table_key!r}")
    if table.n_obs < 2:
        raise ValueError(f"Table {table_key!r} has {table.n_obs} bin(s); Moran's I needs neighbouring bins.")
    spots_table_key, spots_layer = _spots_source(sdata, table, spots_table_key)
    spots = sdata.tables[spots_table_key] if spots_table_key is not None else None
    genes = _genes(table, table_key, spots, spots_table_key, genes)

    bins_index = pd.Index(table.var_names).get_indexer(genes)
    bins_x = log_normalised(table, layer, columns=bins_index)
    bins_rc = np.stack([table.obs["array_col"].to_numpy(), table.obs["array_row"].to_numpy()], axis=1)
    bins_scores = _moran(
        bins_x, bins_rc.astype(np.float64), genes, grid=False, radius=BIN_NEIGHBOURHOODS[n_neighs_bins]
    )
    if spots is not None:
        spots_x = log_normalised(spots, spots_layer, columns=pd.Index(spots.var_names).get_indexer(genes))
        spots_scores = _moran(spots_x, _spot_centres(spots, spots_table_key), genes, grid=True)
    else:
        spots_scores = pd.DataFrame(np.nan, index=pd.Index(genes), columns=["I", "pval"])

    result = pd.DataFrame(
        {
            "moran_bins": bins_scores["I"],
            "moran_spots": spots_scores["I"],
            "gain": bins_scores["I"] - spots_scores["I"],
            "pval_bins": bins_scores["pval"],
            "pval_spots": spots_scores["pval"],
            "fdr_bins": _fdr(bins_scores["pval"]),
            "fdr_spots": _fdr(spots_scores["pval"]),
        },
        index=pd.Index(genes, name="gene"),
    ).sort_values("gain", ascending=False, kind="stable")
    params = {
        "table_key": table_key,
        "spots_table_key": spots_table_key,
        "n_genes": len(genes),
        "layer": layer or "X",
        "spots_layer": (spots_layer or "X") if spots is not None else None,
        "n_neighs_bins": n_neighs_bins,
        "bins_graph": f"radius {BIN_NEIGHBOURHOODS[n_neighs_bins]} on array_col, array_row",
        "spots_graph": f"grid, {SPOT_NEIGHBOURS} neighbours on the spot centres" if spots is not None else None,
        "weights": "row-normalised",
        "pvalues": "analytic, normality, one-sided",
    }

    # Everything is computed; now write.
    table.uns[key_added] = result
    table.uns[f"{key_added}_params"] = params
    logger.info(
        "Table %r: Moran's I of %d genes on %d bins%s; most structure gained: %s.",
        table_key,
        len(genes),
        table.n_obs,
        f" and {spots.n_obs} spots ({spots_table_key!r})" if spots is not None else " (no spots)",
        ", ".join(result.index[:3]),
    )
    return result


def _spots_source(sdata, table, spots_table_key: str | None) -> tuple[str | None, str | None]:
    """The spot table to compare with, and the layer of its counts."""
    data = histex_record(table, "data")
    recorded = data.get("table_key")
    if spots_table_key is None:
        if recorded is None:
            return None, None
        if recorded not in sdata.tables:
            raise KeyError(
                f"The bins were predicted from the spot table {recorded!r}, which is not in the SpatialData any more; "
                f"pass spots_table_key=... (tables: {', '.join(map(repr, sdata.tables))})."
            )
        spots_table_key = recorded
    else:
        table_of(sdata, spots_table_key)  # a KeyError that lists the tables, when it is not there
    layer = None
    if spots_table_key == recorded:  # read the spots as super_resolve did
        layer = _sdata.fitted_layer(table)
    spots = sdata.tables[spots_table_key]
    check_layer(spots, layer, f"the spot table {spots_table_key!r}")
    if spots.n_obs <= SPOT_NEIGHBOURS:
        raise ValueError(f"The spot table {spots_table_key!r} has {spots.n_obs} spots; Moran's I needs more.")
    return spots_table_key, layer


def _genes(table, table_key, spots, spots_table_key, genes) -> list[str]:
    in_bins = pd.Index(table.var_names.astype(str))
    in_spots = pd.Index(spots.var_names.astype(str)) if spots is not None else in_bins
    if genes is None:
        chosen = [g for g in in_bins if g in in_spots]
        if not chosen:
            raise ValueError(
                f"The bin table {table_key!r} and the spot table {spots_table_key!r} have no gene in common "
                f"(e.g. {', '.join(in_bins[:3])} and {', '.join(in_spots[:3])})."
            )
        return chosen
    genes = select_genes(table, genes, table_key)  # checked against the bins; "reliable": those flagged
    for name, key, names in (("spot", spots_table_key, in_spots),):
        absent = [g for g in genes if g not in names]
        if absent:
            shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise ValueError(f"{len(absent)} gene(s) are not in the {name} table {key!r}: {shown}.")
    return genes


def _spot_centres(spots, key: str) -> np.ndarray:
    """Spot centres: ``obsm["spatial"]``, else the Visium lattice indices placed on a hexagonal lattice."""
    if "spatial" in spots.obsm:
        return np.asarray(spots.obsm["spatial"], dtype=np.float64)[:, :2]
    if {"array_row", "array_col"} <= set(spots.obs.columns):
        # array_col steps by 2 along a row and rows are offset by 1: unit pitch is (col / 2, row * sqrt(3) / 2).
        return np.stack(
            [spots.obs["array_col"].to_numpy() / 2, spots.obs["array_row"].to_numpy() * np.sqrt(3) / 2], axis=1
        ).astype(np.float64)
    raise ValueError(f"The spot table {key!r} has neither obsm['spatial'] nor obs['array_row'/'array_col'].")


def _moran(x: np.ndarray, coords: np.ndarray, genes: list[str], *, grid: bool, radius: float = 0.0) -> pd.DataFrame:
    """Moran's I and its analytic p-value per gene, from squidpy on a throwaway AnnData of ``x`` and ``coords``."""
    import anndata as ad

    with warnings.catch_warnings():  # squidpy's docstring templating (docrep) warns on import, about itself
        warnings.simplefilter("ignore", SyntaxWarning)
        import squidpy as sq

    holder = ad.AnnData(X=x, obsm={"spatial": coords}, var=pd.DataFrame(index=pd.Index(genes)))
    with _quiet(), warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # constant genes: 0/0, reported as NaN below
        # A radius on the integer grid gives exactly the 4 or 8 adjacent bins and no edge across a gap in the tissue
        # (k nearest neighbours would link bins on the tissue edge to bins beyond it); on a million bins it takes
        # seconds.
        graph = (
            sq.gr.spatial_neighbors_grid(holder, n_neighs=SPOT_NEIGHBOURS, copy=True)
            if grid
            else sq.gr.spatial_neighbors_radius(holder, radius=radius, copy=True)
        )
        holder.obsp["spatial_connectivities"] = graph[0]  # connectivities; distances are not needed
        frame = sq.gr.spatial_autocorr(
            holder, mode="moran", n_perms=None, corr_method=None, copy=True, show_progress_bar=False
        )
    frame = frame.reindex(genes)
    score = frame["I"].to_numpy(dtype=np.float64)
    pval = np.where(np.isfinite(score), frame["pval_norm"].to_numpy(dtype=np.float64), np.nan)
    return pd.DataFrame({"I": score, "pval": pval}, index=pd.Index(genes))


@contextmanager
def _quiet():
    """Hold back squidpy's per-call info lines (it logs through spatialdata's logger)."""
    chatty = logging.getLogger("spatialdata._logging")
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        chatty.setLevel(level)


def _fdr(pval: pd.Series) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over the finite ones; NaN stays NaN."""
    from scipy.stats import false_discovery_control

    values = pval.to_numpy(dtype=np.float64)
    out = np.full_like(values, np.nan)
    finite = np.isfinite(values)
    if finite.any():
        out[finite] = false_discovery_control(values[finite])
    return out
