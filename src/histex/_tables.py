"""Which kind of table a tool is given: bins on a grid, or cells at their centroids; what histex's tables hold."""

from __future__ import annotations

import numpy as np

from histex._validation import warn_user

#: The layer of the ensemble's spread (standard deviation over its states) in histex's bin and cell tables.
SPREAD_LAYER = "ensemble_sd"
#: Version of the layout of ``uns["histex"]`` (``params``, ``data``, ...) in the tables histex writes; raised when a
#: key that readers rely on moves or changes meaning, so that a reader can tell a table written by a newer histex.
SCHEMA_VERSION = 1


def stamped(record: dict) -> dict:
    """``uns["histex"]`` as written: ``record`` with the :data:`SCHEMA_VERSION` first."""
    return {"schema_version": SCHEMA_VERSION, **record}


def layout(table) -> str | None:
    """``"bins"`` for a table with grid columns (``obs["array_row"]``, ``obs["array_col"]``; one of them is enough to
    be meant as bins), ``"cells"`` for one with centroids (``obsm["spatial"]``) and no grid, as
    :func:`histex.tl.to_cells`, sopa or a Xenium reader write them; ``None`` for anything else.
    """
    if "array_row" in table.obs or "array_col" in table.obs:
        return "bins"
    if "spatial" in table.obsm:
        return "cells"
    return None


def bin_table(sdata, table_key: str):
    """The table ``table_key`` of ``sdata``, checked to be a table of bins on a grid (``array_row``, ``array_col``)."""
    table = table_of(sdata, table_key)
    missing = [c for c in ("array_row", "array_col") if c not in table.obs]
    if missing:
        raise ValueError(
            f"Table {table_key!r} is not a table of bins: obs has no {', '.join(missing)}. Use the table that "
            "histex.tl.super_resolve writes, or a Visium HD bin table (spatialdata_io.visium_hd)."
        )
    _check_not_spots(table, table_key)
    return table


def observation_table(sdata, table_key: str):
    """The table ``table_key`` and its :func:`layout`: bins on a grid or cells with centroids; anything else (e.g.
    the Visium spots) is refused with what to pass instead.
    """
    table = table_of(sdata, table_key)
    kind = layout(table)
    if kind is None:
        raise ValueError(
            f"Table {table_key!r} is neither bins (obs['array_row'], obs['array_col']) nor cells (obsm['spatial']). "
            "Use the table of histex.tl.super_resolve, of histex.tl.to_cells, or a Visium HD bin table."
        )
    if kind == "bins":
        bin_table(sdata, table_key)
    return table, kind


def check_layer(table, layer: str | None, what: str = "the table") -> str | None:
    """``layer`` if ``table`` has it (``None``: ``X``), else a KeyError that lists the layers there are."""
    if layer is not None and layer not in table.layers:
        raise KeyError(f"No layer {layer!r} in {what}; layers: {list(table.layers)}. Pass layer=None to use X.")
    return layer


def histex_record(table, part: str) -> dict:
    """``uns["histex"][part]`` of a table that histex wrote (``"params"``, ``"data"``, ...), or an empty dict for
    any other table.
    """
    record = table.uns.get("histex")
    if isinstance(record, dict) and int(record.get("schema_version", SCHEMA_VERSION)) > SCHEMA_VERSION:
        warn_user(
            f"This table was written by a newer histex (uns['histex'] schema {record['schema_version']}, this one "
            f"reads {SCHEMA_VERSION}); upgrade histex to read it as it was meant."
        )
    value = record.get(part) if isinstance(record, dict) else None
    return value if isinstance(value, dict) else {}


def cell_centroids(table) -> np.ndarray:
    """``(n_cells, 2)`` float64 centroids of a cell table."""
    return np.asarray(table.obsm["spatial"], dtype=np.float64)[:, :2]


def table_of(sdata, table_key: str):
    """``sdata.tables[table_key]``, or a KeyError that lists the tables there are."""
    if table_key not in sdata.tables:
        raise KeyError(f"No table {table_key!r}; tables: {', '.join(map(repr, sdata.tables)) or 'none'}.")
    return sdata.tables[table_key]


def _check_not_spots(table, table_key: str) -> None:
    rows, cols = table.obs["array_row"].to_numpy(), table.obs["array_col"].to_numpy()
    if table.n_obs > 1 and ((rows + cols) % 2 == 0).all():
        raise ValueError(
            f"Table {table_key!r} is not a table of bins: its array_row/array_col lie on a hexagonal lattice "
            "(array_col steps by 2), as Visium spots do. Use the table of bins that histex.tl.super_resolve writes."
        )
