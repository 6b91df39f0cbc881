"""Where ``super_resolve`` puts its bins: arrays in memory, or chunked zarr arrays in the SpatialData's own store.

The predictions are written block by block as :func:`histex.model.predict` yields them, so that a whole slide
(500,000 bins x 1,000 genes is 2 GB in float32, four times with the spread and the interval) is never held twice, and on a backed
SpatialData not even once. Until :meth:`BinsOutput.finish`, ``sdata`` shows nothing new: on a backed store the
elements are staged (:class:`histex._backing.Staging`); :meth:`BinsOutput.abort` removes whatever was staged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from histex import _sdata
from histex._backing import Staging, drop_element, quiet_zarr_notices
from histex._tables import SPREAD_LAYER, stamped
from histex._validation import check_key
from histex.model.predict import Prediction

logger = logging.getLogger(__name__)

#: Bytes of float32 per zarr chunk of the bins x genes arrays (about 8 MB: rows x up to 256 genes).
_CHUNK_BYTES = 8 * 2**20
_CHUNK_GENES = 256


class RowWriter:
    """A zarr array filled from the top in contiguous row blocks of any size, written a whole chunk of rows at a
    time: a chunk is compressed once, not re-read and rewritten for every block that touches it.
    """

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self._chunk_rows = array.chunks[0]
        self._pending: list[np.ndarray] = []
        self._start = 0  # first row not yet written to the array
        self._stop = 0  # first row not yet received

    def __setitem__(self, rows: slice, values: np.ndarray) -> None:
        if rows.start != self._stop:
            raise ValueError(f"rows must arrive in order: expected a block from row {self._stop}, got {rows.start}.")
        self._pending.append(np.asarray(values, dtype=self.dtype))
        self._stop = rows.stop
        aligned = self._start + (self._stop - self._start) // self._chunk_rows * self._chunk_rows
        if self._stop == self.shape[0]:
            aligned = self._stop
        if aligned > self._start:
            buffered = np.concatenate(self._pending)
            n = aligned - self._start
            self.array[self._start : aligned] = buffered[:n]
            self._pending = [buffered[n:]] if n < len(buffered) else []
            self._start = aligned


class BinsOutput:
    """The shapes element of bin squares and the table that annotates them, modelled on Visium HD 8 µm bins.

    Parameters
    ----------
    sdata
        Receives ``shapes[f"{key_added}_bins"]`` and ``tables[key_added]``.
    key_added
        Name of the table.
    grid, rows, cols
        The bin grid and the in-tissue bins, row-major.
    transformations
        Transformations of the bins (the image's).
    gene_names
        Genes, the table's ``var_names``.
    embedding_dim
        Width of ``obsm["X_histex"]``.
    interval
        Names of the layers of the predictive interval's ends (:func:`histex.model.trust.interval_layers`), or
        ``None`` for none.
    to_store
        Write the arrays into ``sdata``'s zarr store as they are computed (needs a backed ``sdata``).
    """

    def __init__(
        self,
        sdata,
        key_added: str,
        grid,
        rows,
        cols,
        transformations,
        gene_names,
        embedding_dim: int,
        to_store: bool,
        interval: tuple[str, str] | None = None,
    ):
        self.sdata, self.key, self.bins_key = sdata, key_added, f"{key_added}_bins"
        self.shapes, self.obs = _sdata.bin_elements(
            grid, rows, cols, region=self.bins_key, transformations=transformations
        )
        self.var = pd.DataFrame(index=pd.Index(list(gene_names), name=None))
        self.spatial = grid.centres_px(rows, cols)
        self.rows, self.cols = rows, cols
        self.shape = (len(rows), len(gene_names))
        self.embedding_dim = embedding_dim
        self.to_store = to_store
        self.interval = interval
        self.staging = Staging(sdata) if to_store else None
        self.prediction: Prediction | None = None

    def _arrays(self) -> dict[str, int]:
        """The table's arrays, by their path in the store, with their widths."""
        n_genes = self.shape[1]
        names = ["X", f"layers/{SPREAD_LAYER}", *(f"layers/{name}" for name in self.interval or ())]
        return {**dict.fromkeys(names, n_genes), "obsm/X_histex": self.embedding_dim}

    def open(self) -> Prediction:
        """The arrays that :func:`histex.model.predict` fills: in memory, or written to a staged table in the store."""
        n_bins, n_genes = self.shape
        if not self.to_store:
            arrays = {name: np.empty((n_bins, width), dtype=np.float32) for name, width in self._arrays().items()}
            self.prediction = self._prediction(arrays)
            return self.prediction
        import anndata as ad
        import dask.array as da
        from anndata.io import write_elem

        self.staging.stage("tables", self.key, self._table(ad.AnnData(obs=self.obs, var=self.var), uns={}))
        group = self._zarr_group("tables", self.key)
        chunk_rows = max(1, min(n_bins, _CHUNK_BYTES // 4 // min(n_genes, _CHUNK_GENES)))
        arrays = {}
        for name, width in self._arrays().items():
            parent, _, leaf = name.rpartition("/")
            chunks = (chunk_rows, min(width, _CHUNK_GENES))
            # zero chunks are not stored: this writes the arrays' metadata (as AnnData encodes them), no data
            zeros = da.zeros((n_bins, width), dtype=np.float32, chunks=chunks)
            with quiet_zarr_notices():
                write_elem(group[parent] if parent else group, leaf, zeros, dataset_kwargs={"chunks": chunks})
            arrays[name] = RowWriter(group[name])
        logger.info("Writing the predictions into the SpatialData's store %s.", self.sdata.path)
        self.prediction = self._prediction(arrays)
        return self.prediction

    def _prediction(self, arrays: dict) -> Prediction:
        lower, upper = (arrays[f"layers/{name}"] for name in self.interval) if self.interval else (None, None)
        return Prediction(
            rows=self.rows,
            cols=self.cols,
            mean=arrays["X"],
            spread=arrays[f"layers/{SPREAD_LAYER}"],
            embedding=arrays["obsm/X_histex"],
            lower=lower,
            upper=upper,
        )

    def _layers(self) -> dict:
        pred = self.prediction
        layers = {SPREAD_LAYER: pred.spread}
        if self.interval:
            layers.update(zip(self.interval, (pred.lower, pred.upper), strict=True))
        return layers

    def write_bins(self) -> None:
        """Write the bin squares to the store (staged); in memory they are placed by :meth:`finish`."""
        if self.to_store:
            self.staging.stage("shapes", self.bins_key, self.shapes)

    def finish(self, uns: dict) -> None:
        """Put the bins and the table, with ``uns["histex"] = uns``, in ``sdata``, replacing earlier ones."""
        import anndata as ad

        for kind, key in (("shapes", self.bins_key), ("tables", self.key)):
            replaces = self.staging.replaces(kind, key) if self.to_store else key in getattr(self.sdata, kind)
            if replaces:
                logger.info("Overwriting %r.", key)
        pred = self.prediction
        if not self.to_store:
            self._drop("shapes", self.bins_key)
            self._drop("tables", self.key)
            self.sdata.shapes[self.bins_key] = self.shapes
            obsm = {"X_histex": pred.embedding}
            table = ad.AnnData(X=pred.mean, obs=self.obs, var=self.var, layers=self._layers(), obsm=obsm)
            self.sdata.tables[self.key] = self._table(table, uns)
            return
        import dask.array as da
        from anndata.io import write_elem

        table = self._table(ad.AnnData(obs=self.obs, var=self.var), uns)
        with quiet_zarr_notices():
            staged = self._zarr_group("tables", self.key)
            write_elem(staged, "uns", dict(table.uns))
            write_elem(staged, "var", table.var)  # with what the prediction added (spot consistency)
        self.staging.commit()  # the old elements go only now that the new ones are complete
        group = self._zarr_group("tables", self.key, mode="r")
        table.X = da.from_zarr(group["X"])
        for name in self._layers():
            table.layers[name] = da.from_zarr(group[f"layers/{name}"])
        table.obsm["X_histex"] = da.from_zarr(group["obsm/X_histex"])
        self.sdata.shapes[self.bins_key] = self.shapes
        self.sdata.tables[self.key] = table

    def abort(self) -> None:
        """Remove what this run staged in the store; ``sdata`` is as it was."""
        if self.staging is not None:
            self.staging.abort()

    def _table(self, table, uns: dict):
        from spatialdata.models import TableModel

        table.obsm["spatial"] = self.spatial
        table.uns["histex"] = stamped(uns)
        return TableModel.parse(table, region=self.bins_key, region_key="region", instance_key="instance_id")

    def _zarr_group(self, kind: str, key: str, mode: str = "r+"):
        """The zarr group of ``key``'s element where it is now (staged, or in place after the commit)."""
        import zarr

        path = self.staging.path(kind, key) if self.staging else Path(self.sdata.path) / kind / key
        return zarr.open_group(str(path), mode=mode, use_consolidated=False)

    def _drop(self, kind: str, name: str) -> None:
        drop_element(self.sdata, kind, name, from_store=self.to_store)


def check_output_keys(sdata, key_added: str) -> None:
    """The output names must be valid and free, or hold an earlier histex result (which is then replaced)."""
    check_key("key_added", key_added)
    bins_key = f"{key_added}_bins"
    ours = key_added in sdata.tables and "histex" in sdata.tables[key_added].uns
    for name, store in ((bins_key, sdata.shapes), (key_added, sdata.tables)):
        taken = name in sdata.images or name in sdata.labels or name in sdata.points or name in sdata.shapes
        taken = taken or name in sdata.tables
        if taken and not (ours and name in store):
            raise ValueError(
                f"key_added={key_added!r} would write {name!r}, which names an element of the input; "
                "choose another key_added."
            )


def versions() -> dict[str, str]:
    """Versions of histex and the packages its results depend on, for ``uns``."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("histex", "torch", "numpy", "spatialdata", "anndata", "scanpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def plain(value):
    """Something AnnData can write: nested dicts of strings, numbers and arrays; None becomes 'None'."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=object) if value else np.array([], dtype=str)
        if value and all(isinstance(v, dict) for v in value):
            return {str(i): plain(v) for i, v in enumerate(value)}
        return np.asarray(value)
    if value is None:
        return "None"
    if isinstance(value, np.generic):
        return value.item()
    return value
