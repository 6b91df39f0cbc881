"""``to_cells``: expression per segmented cell from super-resolved bins, as a table that annotates the cells."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from histex import cells as _cells
from histex._backing import drop_element, quiet_zarr_notices, wants_store
from histex._sdata import choices_text, element_transformations, full_resolution, to_image_pixels
from histex._tables import SPREAD_LAYER, histex_record, stamped
from histex._validation import check_key, check_number, warn_user
from histex.geometry import BinGrid
from histex.pp._features import tissue_key

logger = logging.getLogger(__name__)

#: Rows of a label image read at a time (and the chunk rows of a grown label image).
_LABEL_BLOCK = 2048


def to_cells(
    sdata,
    *,
    cells_key: str | None = None,
    table_key: str = "histex",
    expand_um: float = 0.0,
    key_added: str | None = None,
    to_store: bool | None = None,
) -> str:
    """Expression per cell: the super-resolved bins summed over each segmented cell.

    Each cell takes the bins it covers, each weighted by the share of the bin's area inside the cell, so a bin
    shared by two cells is split between them by area, and the cells' counts add up to the bins'. The cells are a
    shapes element of polygons (as sopa, Xenium or StarDist write them; circles with a ``radius`` too) or a labels
    element (CellPose or StarDist masks), placed on the H&E through their transformations. Segmented nuclei grow
    into cells with ``expand_um``, without overlaps, as bin2cell and sopa do.

    Parameters
    ----------
    sdata
        A SpatialData with the bins of :func:`histex.tl.super_resolve` (or :meth:`histex.HistexModel.predict`) and
        the cells.
    cells_key
        The shapes or labels element of the cells. ``None``: the only polygon shapes or labels element that is
        neither bins nor the tissue mask.
    table_key
        The table of bins.
    expand_um
        Grow every cell by this many µm (nuclei into cells). Polygons grow into the part of their surroundings
        nearer their centroid than any other's and never cover another nucleus; label images grow each pixel to the
        nearest label within the distance (:func:`skimage.segmentation.expand_labels`), streamed in overlapping
        blocks.
    key_added
        Name of the new table (default ``f"{table_key}_cells"``). With ``expand_um``, the grown cells are written as
        ``shapes[f"{key_added}_boundaries"]`` or ``labels[f"{key_added}_labels"]``, and the table annotates them.
    to_store
        Also write the new elements into the SpatialData's zarr store. ``None``: where it is backed by one.

    Returns
    -------
    str
        ``key_added``. ``tables[key_added]`` has one row per cell, annotating the cells (``obs["region"]``,
        ``obs["cell_id"]``: the cell's index or label): ``X`` the counts (float32), ``layers["ensemble_sd"]`` the
        spread of the bins summed as independent (square root of the share-weighted sum of their variances), the
        cells' predictive interval where the bins have one (``layers["lower90"]``, ``layers["upper90"]``: the
        cell's count as negative binomial with the mean and variance of its bins' counts summed,
        :func:`histex.cells.cell_variance`),
        ``obs["area_um2"]``, ``obs["bin_coverage"]`` the share of the cell's area on the table's bins,
        ``obs["has_bins"]``, ``obsm["spatial"]`` the cell centroids in the cells' own coordinates, and
        ``uns["histex"]``. Cells with no bin under them are kept with zero counts, flagged in ``has_bins`` and
        counted in a warning.
    """
    import anndata as ad
    from spatialdata.models import TableModel

    bins, grid, data = _bins_table(sdata, table_key)
    expand_um = check_number("expand_um", expand_um, minimum=0)
    to_store = wants_store(sdata, to_store)
    cells_key, kind = _find_cells(sdata, cells_key)
    key_added = check_key("key_added", f"{table_key}_cells" if key_added is None else key_added)
    grown_key = _grown_key(key_added, kind)
    outputs = [("tables", key_added)] + ([(kind, grown_key)] if expand_um > 0 else [])
    _check_outputs(sdata, outputs, inputs={cells_key, table_key, data["image_key"], data.get("features_key")})
    stale = [out for out in _grown_by(sdata, key_added) if out not in outputs]  # cells an earlier call grew
    element = getattr(sdata, kind)[cells_key]
    image_key, cs, mpp = data["image_key"], data["coordinate_system"], float(data["mpp"])
    placed = element_transformations(element)
    if cs not in placed:
        raise ValueError(
            f"The cells {cells_key!r} are placed in coordinate systems {choices_text(list(placed))}, the bins' H&E "
            f"{image_key!r} in {cs!r}: histex cannot tell where the cells lie on it. Give the cells a transformation "
            f"to {cs!r} (spatialdata.transformations.set_transformation(sdata[{cells_key!r}], ..., {cs!r}))."
        )
    affine = to_image_pixels(sdata, element, image_key, cs)
    um_per_unit = mpp * math.sqrt(abs(np.linalg.det(affine[:2, :2])))  # µm per unit of the cells' coordinates

    if kind == "shapes":
        polygons = _polygons(element, cells_key)
        grown = _cells.expand_polygons(polygons, expand_um / um_per_unit)
        overlap = _cells.polygon_overlap(grown, affine, grid)
        ids = element.index.to_numpy()
        grown_element = _grown_shapes(element, grown) if expand_um > 0 else None
    else:
        labels = _label_image(element, cells_key)
        if expand_um > 0:
            labels = _expand_labels(labels, expand_um / um_per_unit)
        ids, overlap = _cells.label_overlap(labels, affine, grid, block_rows=_LABEL_BLOCK)
        grown_element = _grown_labels(element, labels) if expand_um > 0 else None

    flat = bins.obs["array_row"].to_numpy(np.int64) * grid.n_cols + bins.obs["array_col"].to_numpy(np.int64)
    fractions = _cells.bin_fractions(overlap.overlap, flat, grid.bin_px**2)
    counts = _cells.cell_expression(fractions, bins.X)
    spread = interval = None
    if SPREAD_LAYER in bins.layers:
        spread = _cells.cell_expression(fractions, bins.layers[SPREAD_LAYER], quadrature=True)
        interval = _cell_interval(bins, fractions, counts)
    covered = np.asarray(fractions.sum(axis=1)).ravel() * grid.bin_px**2
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.where(overlap.area > 0, np.minimum(covered / overlap.area, 1.0), 0.0)
    has_bins = covered > 0
    if not has_bins.all():
        warn_user(
            f"{int((~has_bins).sum())} of {len(has_bins)} cells have no bin of {table_key!r} under them (outside "
            "the tissue or the image); they are kept with zero counts, has_bins=False."
        )

    region = grown_key if expand_um > 0 else cells_key
    obs = pd.DataFrame(
        {
            "region": pd.Categorical([region] * len(ids)),
            "cell_id": ids,
            "area_um2": overlap.area * mpp**2,
            "bin_coverage": coverage,
            "has_bins": has_bins,
        },
        index=pd.Index([str(i) for i in ids]),
    )
    table = ad.AnnData(X=counts, obs=obs, var=bins.var[[]].copy(), obsm={"spatial": overlap.centroid})
    if spread is not None:
        table.layers[SPREAD_LAYER] = spread
    if interval is not None:
        table.layers.update(interval)
    table.uns["histex"] = stamped(
        {
            "params": {"cells_key": cells_key, "table_key": table_key, "expand_um": float(expand_um)},
            "data": {
                "region": region,
                "kind": kind,
                "n_cells": len(ids),
                "n_without_bins": int((~has_bins).sum()),
                "image_key": image_key,
                "coordinate_system": cs,
                "mpp": mpp,
                "bin_px": grid.bin_px,
            },
        }
    )
    table = TableModel.parse(table, region=region, region_key="region", instance_key="cell_id")

    for out_kind, name in outputs + stale:
        if name in getattr(sdata, out_kind):
            logger.info("Overwriting %r.", name)
        drop_element(sdata, out_kind, name, from_store=to_store)
    if grown_element is not None:
        getattr(sdata, kind)[grown_key] = grown_element
    sdata.tables[key_added] = table
    if to_store:
        with quiet_zarr_notices():
            for _, name in reversed(outputs):
                sdata.write_element(name)
    logger.info("Wrote table %r (%d cells x %d genes) annotating %r.", key_added, *table.shape, region)
    return key_added


def _bins_table(sdata, table_key: str):
    if table_key not in sdata.tables:
        raise KeyError(
            f"No table {table_key!r} of bins (tables: {choices_text(list(sdata.tables))}): run histex.tl.super_resolve "
            "first, or name the bins' table with table_key=."
        )
    bins = sdata.tables[table_key]
    data = histex_record(bins, "data")
    missing = [k for k in ("bin_px", "grid_shape", "image_key", "coordinate_system", "mpp") if k not in data]
    if missing:
        raise ValueError(
            f"Table {table_key!r} is not a table of histex bins: its uns['histex']['data'] lacks {missing}. Give "
            "table_key= the table that histex.tl.super_resolve or HistexModel.predict wrote."
        )
    lacking = [c for c in ("array_row", "array_col") if c not in bins.obs]
    if lacking:
        raise ValueError(
            f"Table {table_key!r} has no grid columns {lacking} in obs, which place each bin on the grid; they are "
            "part of every histex table (obs['array_row'], obs['array_col']). Restore them or predict again."
        )
    if data["image_key"] not in sdata.images:
        raise KeyError(f"The bins' H&E {data['image_key']!r} is not in the SpatialData; the cells are placed on it.")
    n_rows, n_cols = (int(v) for v in data["grid_shape"])
    return bins, BinGrid(bin_px=float(data["bin_px"]), n_rows=n_rows, n_cols=n_cols), data


def _bin_regions(sdata) -> set[str]:
    """Elements annotated by bin tables (with grid columns), and histex's tissue masks: never cells."""
    from spatialdata.models import get_table_keys

    out = set()
    for table in sdata.tables.values():
        if "array_row" in table.obs and "array_col" in table.obs:
            try:
                region = get_table_keys(table)[0]
            except (KeyError, ValueError, TypeError):
                continue
            out.update([region] if isinstance(region, str) else list(region))
        data = histex_record(table, "data")
        if data.get("features_key"):
            out.add(tissue_key(str(data["features_key"])))
    return out


def _find_cells(sdata, cells_key: str | None) -> tuple[str, str]:
    if cells_key is not None:
        for kind in ("shapes", "labels"):
            if cells_key in getattr(sdata, kind):
                return cells_key, kind
        raise KeyError(
            f"No shapes or labels element {cells_key!r} (shapes: {choices_text(list(sdata.shapes))}; labels: "
            f"{choices_text(list(sdata.labels))})."
        )
    skip = _bin_regions(sdata)
    candidates = [("shapes", k) for k, gdf in sdata.shapes.items() if k not in skip and _is_polygons(gdf)]
    candidates += [("labels", k) for k in sdata.labels if k not in skip]
    if len(candidates) != 1:
        found = choices_text([k for _, k in candidates]) if candidates else "none"
        raise ValueError(
            f"Which element holds the cells? Polygon shapes and labels that are not bins: {found}. Name it with "
            "cells_key=, or segment the nuclei first (histex.pp.segment_nuclei, or StarDist, CellPose, sopa)."
        )
    kind, key = candidates[0]
    return key, kind


def _is_polygons(gdf) -> bool:
    types = set(gdf.geometry.geom_type.unique()) if len(gdf) else set()
    return bool(types) and types <= {"Polygon", "MultiPolygon"}


def _check_outputs(sdata, outputs: list[tuple[str, str]], inputs: set) -> None:
    ours = {k for k, t in sdata.tables.items() if "cells_key" in histex_record(t, "params")}
    ours_regions = {histex_record(sdata.tables[k], "data").get("region") for k in ours}
    for kind, name in outputs:
        taken = name in getattr(sdata, kind) and name not in (ours if kind == "tables" else ours_regions)
        # spatialdata keeps one namespace for all its elements
        others = ("images", "labels", "points", "shapes", "tables")
        taken = taken or any(name in getattr(sdata, other) for other in others if other != kind)
        if name in inputs or taken:
            raise ValueError(
                f"key_added would write {kind} {name!r}, which names an element of the input (or one that to_cells "
                "did not write); choose another key_added."
            )


def _grown_by(sdata, key_added: str) -> list[tuple[str, str]]:
    """The grown cells that an earlier ``to_cells`` wrote beside ``tables[key_added]``, which a new call with the
    same ``key_added`` replaces.
    """
    table = sdata.tables.get(key_added)
    if table is None or "cells_key" not in histex_record(table, "params"):
        return []
    data = histex_record(table, "data")
    kind = data.get("kind")
    grown = _grown_key(key_added, kind)
    return [(kind, grown)] if data.get("region") == grown and grown in getattr(sdata, kind) else []


def _grown_key(key_added: str, kind: str) -> str:
    """The name of the grown cells beside ``tables[key_added]``: of the cells' kind, shapes or labels."""
    return f"{key_added}_{'boundaries' if kind == 'shapes' else 'labels'}"


def _polygons(gdf, cells_key: str) -> np.ndarray:
    types = set(gdf.geometry.geom_type.unique()) if len(gdf) else set()
    if types != {"Point"} and not types <= {"Polygon", "MultiPolygon"}:
        raise ValueError(f"The shapes {cells_key!r} are {sorted(types)}; cells are polygons (or circles).")
    return _cells.cell_polygons(gdf, cells_key)


def _grown_shapes(element, grown: np.ndarray):
    import geopandas as gpd
    from spatialdata.models import ShapesModel

    return ShapesModel.parse(
        gpd.GeoDataFrame(geometry=list(grown), index=element.index.copy()),
        transformations=dict(element_transformations(element)),
    )


def _label_image(element, cells_key: str):
    array = full_resolution(element)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"The labels {cells_key!r} are of type {array.dtype}: a label image holds integer cell ids (0 for "
            "background). Cast it (labels.astype('int32')) if its values are whole numbers."
        )
    if array.ndim != 2:
        raise ValueError(f"The labels {cells_key!r} have dims {array.dims}; cells are a 2-D (y, x) label image.")
    return array.data


def _expand_labels(labels, distance: float):
    """Labels grown by ``distance`` pixels (skimage's nearest-label expansion), computed lazily in blocks that
    overlap by more than the distance, so that no seam shows.
    """
    import dask.array as da
    from skimage.segmentation import expand_labels

    if not isinstance(labels, da.Array):
        labels = da.from_array(np.asarray(labels), chunks=(_LABEL_BLOCK, _LABEL_BLOCK))
    else:
        labels = labels.rechunk((_LABEL_BLOCK, _LABEL_BLOCK))
    depth = math.ceil(distance) + 1
    return labels.map_overlap(expand_labels, depth=depth, boundary="none", distance=distance, dtype=labels.dtype)


def _grown_labels(element, labels):
    from spatialdata.models import Labels2DModel

    return Labels2DModel.parse(labels, dims=("y", "x"), transformations=dict(element_transformations(element)))


def _cell_interval(bins, fractions, counts: np.ndarray) -> dict[str, np.ndarray] | None:
    """The cells' predictive interval at the bins' level, or ``None`` for bins without one (no dispersion)."""
    from histex.model import trust

    record = histex_record(bins, "trust")
    if not record or "dispersion" not in bins.var:
        return None
    variance = _cells.cell_variance(fractions, bins.X, bins.layers[SPREAD_LAYER], bins.var["dispersion"].to_numpy())
    mean = counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dispersion = np.where(mean > 0, np.maximum(variance - mean, 0.0) / mean**2, 0.0)
    level = float(record["level"])
    lower, upper = trust.bin_interval(0, mean, dispersion, level, int(histex_record(bins, "params").get("seed", 0)))
    return dict(zip(trust.interval_layers(level), (lower, upper), strict=True))
