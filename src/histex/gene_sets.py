"""Gene sets: read from a GMT file, a dict or a decoupler network, and matched to the genes of a table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from histex._validation import warn_user

logger = logging.getLogger(__name__)

GeneSets = Mapping[str, Sequence[str]] | str | Path | pd.DataFrame


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets from a GMT file: one set per line, tab-separated name, description and genes.

    Names may contain spaces (the fields are split on tabs only); a gene listed twice in a set is kept once.
    """
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3:
            raise ValueError(f"{path}, line {number}: a GMT line is name<TAB>description<TAB>gene<TAB>gene...")
        genes = [g.strip() for g in fields[2:] if g.strip()]
        sets[fields[0].strip()] = list(dict.fromkeys(sets.get(fields[0].strip(), []) + genes))
    if not sets:
        raise ValueError(f"{path} holds no gene set.")
    return sets


def as_dict(gene_sets: GeneSets) -> dict[str, list[str]]:
    """Gene sets as ``{name: [genes]}`` from a dict, a GMT file, or a network with ``source`` and ``target``.

    Nothing is downloaded: a string that is not a file is refused with a message that says so.
    """
    if isinstance(gene_sets, pd.DataFrame):
        missing = {"source", "target"} - set(gene_sets.columns)
        if missing:
            raise ValueError(f"A gene set network needs columns 'source' and 'target'; it has no {sorted(missing)}.")
        grouped = gene_sets.groupby("source", sort=False)["target"]
        return {str(name): list(dict.fromkeys(map(str, genes))) for name, genes in grouped}
    if isinstance(gene_sets, str | Path):
        path = Path(gene_sets)
        if not path.is_file():
            raise ValueError(
                f"gene_sets={str(gene_sets)!r} is not a file. histex downloads nothing, and the built-in libraries of "
                "other packages (gseapy's Enrichr names such as 'KEGG_2021_Human', decoupler's dc.op.hallmark or "
                "msigdb) are fetched from the internet, which fails offline. Pass a GMT file (e.g. from MSigDB, "
                "downloaded beforehand) or a dict of set name -> genes."
            )
        return read_gmt(path)
    if isinstance(gene_sets, Mapping):
        out = {}
        for name, genes in gene_sets.items():
            genes = [genes] if isinstance(genes, str) else list(genes)
            out[str(name)] = list(dict.fromkeys(map(str, genes)))
        if not out:
            raise ValueError("gene_sets is empty.")
        return out
    raise TypeError(f"gene_sets must be a dict, a GMT file or a DataFrame (source, target), not {type(gene_sets)}.")


def restrict(sets: dict[str, list[str]], genes: Sequence[str], *, min_size: int) -> dict[str, list[str]]:
    """Keep of each set the genes in ``genes``, and the sets with at least ``min_size`` of them.

    Raises a ValueError that shows the genes and the sets when no set is left, and says so when the names would
    match ignoring case (gene sets of another species, or symbols in another case).
    """
    present = pd.Index(genes)
    kept = {name: [g for g in members if g in present] for name, members in sets.items()}
    kept = {name: members for name, members in kept.items() if len(members) >= min_size}
    if not kept:
        lower = set(present.str.lower())
        case_only = sum(len([g for g in m if g.lower() in lower]) >= min_size for m in sets.values())
        hint = f" {case_only} set(s) would match ignoring case: are the sets of another species?" if case_only else ""
        example = next(iter(sets.items()))
        raise ValueError(
            f"No gene set has {min_size} or more genes in the table ({len(present)} genes, e.g. "
            f"{', '.join(map(str, present[:5]))}; set {example[0]!r} has e.g. {', '.join(example[1][:5])}).{hint}"
        )
    dropped = len(sets) - len(kept)
    if dropped:
        warn_user(
            f"{dropped} of {len(sets)} gene sets have fewer than {min_size} genes in the table and are left out "
            "(lower min_size= to keep them)."
        )
    return kept


def as_network(sets: dict[str, list[str]]) -> pd.DataFrame:
    """The sets as the ``source``/``target`` network decoupler takes."""
    return pd.DataFrame(
        [(name, gene) for name, members in sets.items() for gene in members], columns=["source", "target"]
    )


def ulm_scores(x, genes: Sequence[str], sets: dict[str, list[str]]) -> np.ndarray:
    """t-value of decoupler's univariate linear model of every row of ``x`` (bins x genes) on every set.

    For one bin and one set it is the t-value of the slope of the bin's expression across genes on membership in the
    set, as :func:`decoupler.mt.ulm` computes it (genes without any count are left out, as decoupler does). It is
    computed from ``x @ membership``, row sums and row sums of squares, so sparse ``x`` is neither copied nor made
    dense and the cost follows its non-zeros, not bins x genes x sets. Rows without expression score NaN.
    """
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        expressed = np.bincount(x.indices[x.data != 0], minlength=x.shape[1]) > 0
        square_sum = np.asarray(x.power(2).sum(axis=1, dtype=np.float64)).ravel()
    else:
        x = np.asarray(x)
        expressed = (x != 0).any(axis=0)
        square_sum = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    row_sum = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    position = pd.Index(genes).get_indexer
    membership = np.zeros((x.shape[1], len(sets)))
    for j, members in enumerate(sets.values()):
        index = position(list(members))
        membership[index[index >= 0], j] = 1.0
    # Genes without counts are zero in x, so they drop out of x @ membership; only the set statistics and the number
    # of genes must leave them out.
    membership[~expressed] = 0.0
    n_genes = int(expressed.sum())
    set_mean = membership[expressed].mean(axis=0)
    set_sd = membership[expressed].std(axis=0, ddof=1)
    # Covariance across genes: sum_g x_g (a_g - mean a) / (G - 1); the centring of x drops out.
    cov = (np.asarray(x @ membership, dtype=np.float64) - np.outer(row_sum, set_mean)) / (n_genes - 1)
    row_var = (square_sum - row_sum**2 / n_genes) / (n_genes - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / (np.sqrt(np.clip(row_var, 0, None))[:, None] * set_sd[None, :])
        t = r * np.sqrt((n_genes - 2) / ((1.0 - r + 2.2e-16) * (1.0 + r + 2.2e-16)))
    t[row_var <= 1e-12 * np.maximum(square_sum, 1e-300)] = np.nan  # constant rows: no slope to speak of
    return t
