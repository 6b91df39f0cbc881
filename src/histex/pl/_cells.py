"""Cells drawn as their outlines over the H&E: where a cell table's cells lie on the image, and how to colour them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from histex._tables import histex_record

logger = logging.getLogger(__name__)

#: A label image is drawn at most this many pixels across (a stride through it), as the H&E is.
MAX_LABEL_PX = 2000
#: The H&E under cells is read at about this many pixels across the drawn area.
DRAWN_PX = 1500


@dataclass
class CellLayer:
    """The cells of a table in the pixels of an H&E (or in their own coordinates when no image is drawn).

    ``image_key``: the H&E the cells are placed on (None: their own coordinates). ``polygons``: one ``(n, 2)`` array
    of outline vertices per part, ``part_row`` the table row of each part; or, for a label image, ``raster`` (table
    rows, -1 where no cell) with ``raster_affine`` from its pixels to the frame. ``box`` ``(x0, x1, y0, y1)`` spans the cells; ``underlay`` the H&E crop and the box it covers, or None.
    """

    image_key: str | None
    polygons: list | None
    part_row: np.ndarray | None
    raster: np.ndarray | None
    raster_affine: np.ndarray | None
    box: tuple[float, float, float, float]
    underlay: tuple[np.ndarray, tuple[float, float, float, float]] | None


def cell_layer(sdata, table, table_key: str, image_key: str | None, *, image: bool = True) -> CellLayer:
    """Place the cells a table annotates (shapes or labels) on its H&E, and read the H&E beneath them."""
    from spatialdata.models import get_table_keys

    from histex import _sdata

    try:
        region, region_key, instance_key = get_table_keys(table)
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(
            f"Table {table_key!r} annotates no shapes or labels (uns['spatialdata_attrs']), so its cells cannot be "
            "drawn; use the table of histex.tl.to_cells."
        ) from err
    regions = [region] if isinstance(region, str) else list(region)
    present = [r for r in regions if r in sdata.shapes or r in sdata.labels]
    if len(present) != 1:
        raise ValueError(
            f"Table {table_key!r} annotates {regions}; histex draws the cells of one shapes or labels element that "
            f"is in the SpatialData (shapes: {_sdata.choices_text(list(sdata.shapes))}; labels: "
            f"{_sdata.choices_text(list(sdata.labels))})."
        )
    name = present[0]
    element = sdata.shapes[name] if name in sdata.shapes else sdata.labels[name]
    rows = np.flatnonzero(table.obs[region_key].astype(str).to_numpy() == name)
    ids = table.obs[instance_key].to_numpy()[rows]
    key, affine = _frame(sdata, table, element, name, image_key, image=image)
    if name in sdata.shapes:
        polygons, part_row, box = _outlines(element, ids, rows, affine)
        raster = raster_affine = None
    else:
        raster, raster_affine, box = _label_raster(element, ids, rows, affine)
        polygons = part_row = None
    beneath = None
    if key is not None:
        from histex.pl._underlay import read_crop

        span = max(box[1] - box[0], box[3] - box[2])
        beneath = read_crop(sdata, key, box, max(1.0, span / DRAWN_PX))
        if beneath is None:
            logger.warning("The cells of %r lie outside image %r; they are drawn without it.", table_key, key)
    return CellLayer(key, polygons, part_row, raster, raster_affine, box, beneath)


def _frame(sdata, table, element, name: str, image_key: str | None, *, image: bool):
    """The image to draw under the cells and the affine from the cells' coordinates to its pixels; without one,
    ``(None, identity)``: the cells in their own coordinates.
    """
    from histex import _sdata
    from histex.pl._underlay import image_to_draw

    identity = np.eye(3)
    if not image:
        return None, identity
    data = histex_record(table, "data")
    key = image_to_draw(sdata, data.get("image_key"), image_key, f"Cells of {name!r}")
    if key is None:
        return None, identity
    image_cs = _sdata.element_transformations(sdata.images[key])
    common = [cs for cs in _sdata.element_transformations(element) if cs in image_cs]
    if not common:
        if image_key is not None:
            raise ValueError(
                f"Cannot place the cells {name!r} on image {key!r}: they share no coordinate system (the image is in "
                f"{_sdata.choices_text(list(image_cs))})."
            )
        logger.warning("Cells of %r drawn without the H&E %r: they share no coordinate system.", name, key)
        return None, identity
    cs = data.get("coordinate_system") if data.get("coordinate_system") in common else common[0]
    return key, _sdata.to_image_pixels(sdata, element, key, cs)


def _outlines(gdf, ids: np.ndarray, rows: np.ndarray, affine: np.ndarray):
    import shapely

    from histex.cells import cell_polygons
    from histex.geometry import apply_affine

    position = gdf.index.get_indexer(ids)
    if (position < 0).any():
        raise ValueError(f"{int((position < 0).sum())} cells of the table are not in the shapes it annotates.")
    geoms = cell_polygons(gdf.iloc[position], "cells")
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    coords, ring_of = shapely.get_coordinates(shapely.get_exterior_ring(parts), return_index=True)
    coords = apply_affine(affine, coords)
    polygons = np.split(coords, np.flatnonzero(np.diff(ring_of)) + 1) if len(coords) else []
    box = (
        (coords[:, 0].min(), coords[:, 0].max(), coords[:, 1].min(), coords[:, 1].max())
        if len(coords)
        else (0, 1, 0, 1)
    )
    return polygons, rows[part_of], tuple(float(v) for v in box)


def _label_raster(element, ids: np.ndarray, rows: np.ndarray, affine: np.ndarray):
    from histex._sdata import full_resolution
    from histex.geometry import apply_affine

    array = full_resolution(element)
    height, width = int(array.sizes["y"]), int(array.sizes["x"])
    step = max(1, int(np.ceil(max(height, width) / MAX_LABEL_PX)))
    sample = np.asarray(array.data[step // 2 :: step, step // 2 :: step])
    order = np.argsort(ids)
    where = np.clip(np.searchsorted(ids[order], sample), 0, len(ids) - 1)
    found = (sample != 0) & (ids[order][where] == sample) if len(ids) else np.zeros(sample.shape, bool)
    raster = np.where(found, rows[order][where], -1)
    # A sampled pixel (i, j) covers label pixels [j * step, (j + 1) * step) across.
    to_frame = affine @ np.diag([step, step, 1.0])
    ys, xs = np.nonzero(found)
    if len(ys):
        xy = apply_affine(to_frame, np.stack([np.r_[xs, xs + 1], np.r_[ys, ys + 1]], axis=1).astype(float))
        box = (xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max())
    else:
        box = (0.0, float(width), 0.0, float(height))
    return raster, to_frame, tuple(float(v) for v in box)


def draw_cells(ax, layer: CellLayer, values: np.ndarray, *, cmap, vmin: float, vmax: float, alpha: float = 1.0):
    """Colour every cell by ``values`` (one per table row, NaN: not drawn) over the H&E; returns the mappable."""
    from matplotlib.collections import PolyCollection
    from matplotlib.transforms import Affine2D

    values = np.asarray(values, dtype=np.float32)
    ax.set_facecolor("0.92")
    if layer.underlay is not None:
        rgb, (x0, x1, y0, y1) = layer.underlay
        ax.imshow(rgb, extent=(x0, x1, y1, y0), interpolation="antialiased", zorder=0)
    if layer.polygons is not None:
        shown = np.isfinite(values[layer.part_row])
        mappable = PolyCollection(
            [p for p, keep in zip(layer.polygons, shown, strict=True) if keep],
            array=values[layer.part_row][shown],
            cmap=cmap,
            linewidths=0,
            alpha=alpha,
            zorder=1,
        )
        mappable.set_clim(vmin, vmax)
        ax.add_collection(mappable)
    else:
        grid = np.where(layer.raster >= 0, values[np.maximum(layer.raster, 0)], np.nan)
        h, w = grid.shape
        mappable = ax.imshow(
            grid,
            extent=(0, w, h, 0),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            alpha=alpha,
            interpolation="nearest",
            transform=Affine2D(layer.raster_affine) + ax.transData,
            zorder=1,
        )
    x0, x1, y0, y1 = layer.box
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    return mappable


def outline_cells(ax, layer: CellLayer, selected: np.ndarray) -> None:
    """Outline the cells of the selected table rows in black (boundary cells)."""
    from matplotlib.collections import PolyCollection

    selected = np.asarray(selected, dtype=bool)
    if layer.polygons is not None:
        keep = selected[layer.part_row]
        ax.add_collection(
            PolyCollection(
                [p for p, k in zip(layer.polygons, keep, strict=True) if k],
                facecolors="none",
                edgecolors="black",
                linewidths=0.6,
                zorder=2,
            )
        )
    else:
        from matplotlib.colors import ListedColormap
        from matplotlib.transforms import Affine2D

        grid = np.where((layer.raster >= 0) & selected[np.maximum(layer.raster, 0)], 1.0, np.nan)
        h, w = grid.shape
        ax.imshow(
            grid,
            extent=(0, w, h, 0),
            cmap=ListedColormap(["black"]),
            interpolation="nearest",
            transform=Affine2D(layer.raster_affine) + ax.transData,
            zorder=2,
        )
