"""Gene sets: read from a GMT file, a dict or a decoupler network, and matched to the genes of a table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

logger = logging.getLogger("histex")

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
        logger.warning(
            "%d of %d gene sets have fewer than %d genes in the table and are left out.", dropped, len(sets), min_size
        )
    return kept


def as_network(sets: dict[str, list[str]]) -> pd.DataFrame:
    """The sets as the ``source``/``target`` network decoupler takes."""
    return pd.DataFrame(
        [(name, gene) for name, members in sets.items() for gene in members], columns=["source", "target"]
    )
