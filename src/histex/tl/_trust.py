"""Which genes and bins to trust, on the tables of ``super_resolve``: the genes flagged reliable, and predictive
intervals at any level (the array math is :mod:`histex.model.trust`).
"""

from __future__ import annotations

import numpy as np

from histex._tables import SPREAD_LAYER, histex_record, table_of
from histex._validation import check_genes, check_number
from histex.model import trust


def select_genes(table, genes: str | list[str] | None, table_key: str) -> list[str] | None:
    """The genes a tool should use: ``None`` (all: returned as ``None``), ``"reliable"`` (those of
    ``var["reliable"]``, :func:`histex.tl.super_resolve`), or a list, checked to be in the table.
    """
    if genes is None:
        return None
    if isinstance(genes, str) and genes == "reliable":
        if "reliable" not in table.var:
            raise ValueError(
                f"Table {table_key!r} has no var['reliable']; it is written by histex.tl.super_resolve and "
                "HistexModel.predict (run them again with this version of histex), or pass a list of genes."
            )
        chosen = list(table.var_names[table.var["reliable"].to_numpy(bool)])
        if not chosen:
            raise ValueError(
                f"No gene of table {table_key!r} is flagged reliable (var['reliability'] >= {trust.RELIABLE}); "
                "see histex.pl.reliability, or pass a list of genes."
            )
        return chosen
    if isinstance(genes, str):
        raise TypeError(
            f"genes must be None, 'reliable' or a list of gene names, got {genes!r}; for one gene pass [{genes!r}]."
        )
    chosen = check_genes(genes)
    absent = [g for g in chosen if g not in table.var_names]
    if absent:
        shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise ValueError(f"{len(absent)} gene(s) are not in the table {table_key!r}: {shown}.")
    return chosen


def predictive_interval(sdata, *, table_key: str = "histex", level: float = trust.LEVEL) -> tuple[str, str]:
    """The predictive interval of every bin's count at another ``level``, as two layers.

    :func:`histex.tl.super_resolve` writes the 90% interval (``layers["lower90"]`` and ``layers["upper90"]``);
    this computes another from what it stored: the predicted counts ``X``, ``layers["ensemble_sd"]`` and
    ``var["dispersion"]`` (see :mod:`histex.model.trust`). Each bin's count is negative binomial with mean ``X`` and
    variance ``X + dispersion * X**2 + ensemble_sd**2``; the interval of whole counts holds ``level`` of it, its last
    count kept in a share of bins drawn with the table's seed, so that the interval holds ``level`` on average.

    Parameters
    ----------
    sdata
        SpatialData with a table of :func:`histex.tl.super_resolve` (or :meth:`histex.HistexModel.predict`).
    table_key
        The table.
    level
        Share of the predictive distribution, in (0, 1).

    Returns
    -------
    tuple of str
        The names of the two new layers, e.g. ``("lower80", "upper80")`` at 0.8. On a table read from a store
        they are dask arrays, computed when read (write them with :meth:`spatialdata.SpatialData.write_element`).
    """
    level = check_number("level", level, minimum=0, maximum=1, above=True, below=True)
    table = table_of(sdata, table_key)
    if SPREAD_LAYER not in table.layers or "dispersion" not in table.var:
        raise ValueError(
            f"Table {table_key!r} has no layers[{SPREAD_LAYER!r}] and var['dispersion']: it is not a table of "
            "super_resolve written by this version of histex."
        )
    dispersion = table.var["dispersion"].to_numpy(np.float64)
    seed = int(histex_record(table, "params").get("seed", 0))
    names = trust.interval_layers(level)

    def interval(mean, sd, start=0, gene_start=0):
        mean = np.asarray(mean, dtype=np.float64)
        phi = trust.bin_dispersion(mean, sd, dispersion[gene_start : gene_start + mean.shape[1]])
        return np.stack(trust.bin_interval(start, mean, phi, level, seed, gene_start=gene_start))

    mean, sd = table.X, table.layers[SPREAD_LAYER]
    if hasattr(mean, "map_blocks"):  # a backed table: lazily, chunk by chunk
        import dask.array as da

        sd = da.asarray(sd).rechunk(mean.chunks)

        def block(m, s, block_info=None):
            (r0, _), (c0, _) = block_info[0]["array-location"]
            return interval(m, s, r0, c0)

        both = da.map_blocks(block, mean, sd, dtype=np.float32, new_axis=0, chunks=((2,), *mean.chunks))
        table.layers[names[0]], table.layers[names[1]] = both[0], both[1]
    else:
        dense = np.asarray(mean.toarray() if hasattr(mean, "toarray") else mean)
        lower, upper = interval(dense, np.asarray(sd))
        table.layers[names[0]], table.layers[names[1]] = lower, upper
    return names
