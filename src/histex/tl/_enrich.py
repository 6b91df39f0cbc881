"""``enrich``: which gene sets (pathways, programmes) run in which domain, and how strongly in every bin."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from histex import gene_sets as gs
from histex._tables import check_layer, observation_table
from histex._validation import check_bool, check_choice, check_int, check_key
from histex.expression import log_normalised
from histex.tl._trust import select_genes

logger = logging.getLogger(__name__)

METHODS = ("ora", "ulm", "mlm", "zscore")
RANK_METHODS = ("t-test", "t-test_overestim_var", "wilcoxon", "logreg")


def enrich(
    sdata,
    table_key: str = "histex",
    *,
    gene_sets: gs.GeneSets,
    groupby: str = "domain",
    method: str = "ora",
    n_markers: int | None = None,
    min_size: int = 3,
    rank_method: str = "t-test",
    layer: str | None = None,
    bin_scores: bool = True,
    genes: str | list[str] | None = None,
    key_added: str = "enrichment",
) -> pd.DataFrame:
    """Gene set enrichment per domain (or cell type) from marker genes, and a score per bin (or cell) and gene set.

    The bins (or cells) are log-normalised (counts scaled to the median total, ``log1p``) and each group of
    ``groupby`` is compared with the rest by :func:`scanpy.tl.rank_genes_groups`. Then, through decoupler, either its
    ``n_markers`` best significant up-regulated genes are tested for over-representation in each gene set
    (``method="ora"``, Fisher's exact test against the genes of the table), or its marker statistics are scored
    against each set (``"ulm"``, ``"mlm"``, ``"zscore"``). Every bin gets a univariate linear model score (ULM
    t-value, :func:`histex.gene_sets.ulm_scores`, the statistic of :func:`decoupler.mt.ulm` computed on the
    non-zeros) per set from its own expression, fast enough for millions of bins; sparse counts stay sparse.

    Parameters
    ----------
    sdata
        A SpatialData with a table of bins (``obs["array_row"]``, ``obs["array_col"]``) or of cells
        (``obsm["spatial"]``, e.g. :func:`histex.tl.to_cells`), after :func:`histex.tl.annotate`.
    table_key
        The table of bins or cells.
    gene_sets
        A dict of set name -> genes, the path of a GMT file, or a decoupler network (a DataFrame with ``source``
        and ``target``). Nothing is downloaded; the built-in libraries of gseapy and decoupler need the internet
        and are refused with a message that says so.
    groupby
        Categorical column of ``obs`` that defines the groups, e.g. ``"domain"``, ``"domain_label"`` or, on cells,
        ``"cell_type_label"``.
    method
        ``"ora"``, ``"ulm"``, ``"mlm"`` or ``"zscore"`` (decoupler's methods).
    n_markers
        For ``"ora"``: at most this many marker genes per group (adjusted p below 0.05, positive statistic,
        best first). Default: 5% of the genes, at least 5.
    min_size
        Gene sets with fewer genes in the table are left out.
    rank_method
        Test of :func:`scanpy.tl.rank_genes_groups`.
    layer
        Layer with the counts; default ``X``.
    bin_scores
        Write the scores of every bin (or cell).
    genes
        Genes to test and score: a list, or ``"reliable"`` for those :func:`histex.tl.super_resolve` flags in
        ``var["reliable"]``; the gene sets are restricted to them (the universe of ``"ora"``). ``None``: every gene.
    key_added
        Key of what is written.

    Returns
    -------
    The results, one row per group and gene set: ``group``, ``term``, ``score`` (log odds ratio for ``"ora"``,
    else the method's statistic), ``padj`` (Benjamini-Hochberg within the group), ``n_genes`` (genes of the set in
    the table), ``rank`` (1: the group's best set), ``genes`` (leading genes of the set in the group). Also written
    to the table: ``uns[key_added]`` these results, ``uns[f"{key_added}_markers"]`` the marker genes of every group
    (``group``, ``gene``, ``score``, ``logfoldchange``, ``padj``), ``uns[f"{key_added}_params"]`` the settings and,
    with ``bin_scores``, ``obsm[f"{key_added}_scores"]`` observations x sets. If the call fails, nothing is written.
    """
    table, _ = observation_table(sdata, table_key)
    check_choice("method", method, METHODS)
    check_choice("rank_method", rank_method, RANK_METHODS)
    check_layer(table, layer)
    min_size = check_int("min_size", min_size)
    n_markers = check_int("n_markers", n_markers, none_ok=True)
    check_bool("bin_scores", bin_scores)
    check_key("key_added", key_added)
    groups = _groups(table, groupby)
    chosen = select_genes(table, genes, table_key)
    names = table.var_names if chosen is None else pd.Index(chosen)
    sets = gs.restrict(gs.as_dict(gene_sets), list(names), min_size=min_size)
    net = gs.as_network(sets)
    if n_markers is None:
        n_markers = max(5, int(np.ceil(0.05 * len(names))))

    log_expression = log_normalised(table, layer, keep_sparse=True)  # a sparse HD table of every gene stays sparse
    if chosen is not None:  # normalised by the totals over every gene, then only the chosen ones
        log_expression = log_expression[:, table.var_names.get_indexer(chosen)]
    markers = rank_markers(log_expression, groups, names, rank_method=rank_method)
    if method == "ora":
        results = _ora(markers, net, n_markers=n_markers, min_size=min_size)
    else:
        results = _stat_method(markers, net, method=method, min_size=min_size)
    results = _tidy(results, markers, sets, order=list(groups.cat.categories))
    scores = None
    if bin_scores:
        scores = _bin_scores(log_expression, table.obs_names, names, sets)
    del log_expression

    # Everything is computed; now write.
    table.uns[key_added] = results
    table.uns[f"{key_added}_markers"] = markers
    table.uns[f"{key_added}_params"] = {
        "groupby": groupby,
        "method": method,
        "n_markers": int(n_markers) if method == "ora" else None,
        "min_size": int(min_size),
        "rank_method": rank_method,
        "layer": layer or "X",
        "n_sets": len(sets),
        "genes": genes if isinstance(genes, str) or genes is None else list(chosen),
    }
    if scores is not None:
        table.obsm[f"{key_added}_scores"] = scores
    best = results[results["rank"] == 1].set_index("group")["term"].to_dict()
    logger.info(
        "Table %r: %d gene sets in %d groups of %r (%s); best per group %s.",
        table_key,
        len(sets),
        len(best),
        groupby,
        method,
        best,
    )
    return results


def _groups(table, groupby: str) -> pd.Series:
    """The groups of ``groupby`` as a categorical, empty categories dropped; at least two with two bins each."""
    if groupby not in table.obs:
        candidates = [c for c in table.obs if isinstance(table.obs[c].dtype, pd.CategoricalDtype)]
        raise ValueError(
            f"obs has no column {groupby!r} to group the bins by; run histex.tl.annotate (its key_added) or pass "
            f"one of the categorical columns: {', '.join(map(repr, candidates)) or 'none'}."
        )
    groups = table.obs[groupby]
    if not isinstance(groups.dtype, pd.CategoricalDtype):
        groups = groups.astype(str).astype("category")
    groups = groups.cat.remove_unused_categories()
    sizes = groups.value_counts()
    small = sizes.index[sizes < 2].tolist()
    if small:
        raise ValueError(f"Groups {small} of {groupby!r} have fewer than 2 bins; no marker genes can be found.")
    if len(sizes) < 2:
        raise ValueError(f"{groupby!r} has a single group; enrichment compares groups with each other.")
    return groups.cat.rename_categories(lambda c: str(c))


def rank_markers(log_expression, groups: pd.Series, genes, *, rank_method: str = "t-test") -> pd.DataFrame:
    """Every gene of every group against the rest (:func:`scanpy.tl.rank_genes_groups`), as a tidy DataFrame.

    Columns ``group``, ``gene``, ``score``, ``logfoldchange``, ``padj``, best genes of each group first.
    """
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(
        X=log_expression,
        obs=pd.DataFrame({"group": pd.Categorical(groups)}, index=np.arange(len(groups)).astype(str)),
        var=pd.DataFrame(index=pd.Index(genes).astype(str)),
    )
    holder.uns["log1p"] = {"base": None}  # the values are log1p already; scanpy's fold changes depend on it
    sc.tl.rank_genes_groups(holder, "group", method=rank_method, use_raw=False)
    frame = sc.get.rank_genes_groups_df(holder, group=None)
    if "group" not in frame:  # scanpy leaves the column out when there is one group to report
        frame.insert(0, "group", holder.obs["group"].cat.categories[0])
    frame = frame.rename(
        columns={"names": "gene", "scores": "score", "logfoldchanges": "logfoldchange", "pvals_adj": "padj"}
    )
    frame["group"] = frame["group"].astype(str)
    return frame[["group", "gene", "score", "logfoldchange", "padj"]].reset_index(drop=True)


def _decoupler_n_up(n_selected: int, n_genes: int) -> int:
    """The ``n_up`` that makes decoupler's ORA select the top ``n_selected`` genes.

    decoupler 2.0 to 2.2.0 keep the genes ranked above ``n_up`` (all but the bottom ``n_up``) instead of the top
    ``n_up`` (scverse/decoupler#346, fixed after 2.2.0).
    """
    from importlib.metadata import version

    from packaging.version import Version

    return n_genes - n_selected if Version(version("decoupler")) <= Version("2.2.0") else n_selected


def _ora(markers: pd.DataFrame, net: pd.DataFrame, *, n_markers: int, min_size: int) -> pd.DataFrame:
    """Decoupler's ORA of each group's significant up-regulated markers; ``group, term, score, padj`` rows."""
    import decoupler as dc

    genes = markers["gene"].unique()
    rows = []
    for group, frame in markers.groupby("group", sort=False):
        chosen = frame[(frame["padj"] < 0.05) & (frame["score"] > 0)].nlargest(n_markers, "score")["gene"]
        if chosen.empty:
            logger.warning("Group %r has no significant up-regulated marker gene; it gets no ORA result.", group)
            continue
        # A 0/1 row: the markers rank on top whatever the ties, so ORA's selection is exactly them.
        selected = np.isin(genes, chosen.to_numpy()).astype(np.float64)[None, :]
        score, padj = dc.mt.ora(
            [selected, np.array([group]), genes],
            net,
            tmin=min_size,
            n_up=_decoupler_n_up(len(chosen), len(genes)),
            n_bg=None,  # the background is the genes of the table, not a genome
            empty=False,  # the zeros of the 0/1 row are genes, not missing ones
        )
        rows.append(_long(score, padj, group))
    if not rows:
        raise ValueError("No group has a significant up-regulated marker gene; try method='ulm'.")
    return pd.concat(rows, ignore_index=True)


def _stat_method(markers: pd.DataFrame, net: pd.DataFrame, *, method: str, min_size: int) -> pd.DataFrame:
    """A decoupler method (``ulm``, ``mlm``, ``zscore``) on the groups x genes matrix of marker statistics."""
    import decoupler as dc

    stats = markers.pivot(index="group", columns="gene", values="score")
    stats = stats.loc[markers["group"].unique()]
    score, padj = getattr(dc.mt, method)(stats.astype(np.float64), net, tmin=min_size)
    return pd.concat([_long(score.loc[[g]], padj.loc[[g]], g) for g in stats.index], ignore_index=True)


def _long(score: pd.DataFrame, padj: pd.DataFrame, group: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "group": group,
            "term": score.columns.astype(str),
            "score": score.iloc[0].to_numpy(),
            "padj": padj.iloc[0].to_numpy(),
        }
    )


def _tidy(
    results: pd.DataFrame, markers: pd.DataFrame, sets: dict[str, list[str]], *, order: list[str]
) -> pd.DataFrame:
    """Rank the sets within each group (score, then adjusted p), add set sizes and leading genes."""
    results = results.copy()
    results["n_genes"] = results["term"].map({k: len(v) for k, v in sets.items()}).astype(int)
    results["group"] = pd.Categorical(results["group"], categories=[g for g in order if g in set(results["group"])])
    results = results.sort_values(["group", "score", "padj"], ascending=[True, False, True], kind="stable")
    results["rank"] = results.groupby("group", observed=True).cumcount() + 1
    up = markers[markers["score"] > 0].set_index("group")
    leading = {}
    for group in results["group"].cat.categories:
        ordered = up.loc[[group], "gene"].tolist() if group in up.index else []
        position = {g: i for i, g in enumerate(ordered)}
        for term, members in sets.items():
            leading[(group, term)] = ", ".join(sorted((g for g in members if g in position), key=position.get)[:10])
    results["genes"] = [leading[(g, t)] for g, t in zip(results["group"], results["term"], strict=True)]
    results["group"] = results["group"].astype(str)
    return results[["group", "term", "score", "padj", "n_genes", "rank", "genes"]].reset_index(drop=True)


def _bin_scores(log_expression, obs_names, genes, sets: dict[str, list[str]]) -> pd.DataFrame:
    """ULM t-value of every bin and gene set; NaN for bins without expression."""
    scores = gs.ulm_scores(log_expression, list(genes), sets).astype(np.float32)
    return pd.DataFrame(scores, index=obs_names, columns=list(sets))
