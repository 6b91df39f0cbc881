"""Gene maps: measured spots beside super-resolved bins (and ground truth when there is one), and their spread."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from histex._docs import shared_docs
from histex._tables import SPREAD_LAYER, histex_record, layout, table_of
from histex._validation import check_bool, check_genes
from histex.pl._cells import cell_layer, draw_cells
from histex.pl._figure import finish, grid_axes
from histex.pl._underlay import check_alpha, draw_underlay, underlay

logger = logging.getLogger(__name__)


def raster(table, values: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Place per-bin values on the bin grid by ``obs["array_row"]``/``obs["array_col"]``; NaN where no bin is."""
    rows = table.obs["array_row"].to_numpy()
    cols = table.obs["array_col"].to_numpy()
    if shape is None:
        shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    out = np.full(shape, np.nan, dtype=np.float32)
    keep = (rows < shape[0]) & (cols < shape[1])
    out[rows[keep], cols[keep]] = np.asarray(values, dtype=np.float32)[keep]
    return out


def _genes_in(table, genes: str | list[str], table_key: str) -> list[str]:
    """The genes as a list (one name, or a list of distinct names), checked to be in the table."""
    genes = check_genes([genes] if isinstance(genes, str) else genes, none_ok=False)
    missing = [g for g in genes if g not in table.var_names]
    if missing:
        raise ValueError(f"Gene(s) {missing} are not in table {table_key!r}.")
    return genes


def _column(table, gene: str, layer: str | None = None) -> np.ndarray:
    x = table[:, gene].layers[layer] if layer else table[:, gene].X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x).ravel()


@shared_docs
def genes(
    sdata,
    genes: str | list[str],
    *,
    table_key: str = "histex",
    truth_key: str | None = None,
    spots: bool = True,
    image: bool = True,
    image_key: str | None = None,
    alpha: float = 0.8,
    cmap: str = "viridis",
    panel_size: float = 3.2,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Plot genes as measured by the spots, as super-resolved on bins (or cells), and as ground truth when given, over
    the H&E.

    One row per gene, one colour scale per row (counts per 8 µm bin; spots are shown as counts per bin too, their
    counts divided by the number of bins in a spot), so that the panels compare directly. The H&E is read once, at
    about one pixel per bin (see :func:`histex.pl.domains`), and drawn beneath every panel. For a cell table
    (:func:`histex.tl.to_cells`) the cells are drawn as their outlines, in counts per cell (spots: their counts per
    area times the median cell's area).

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve` (and :func:`histex.tl.to_cells`).
    genes
        Gene name(s).
    table_key
        The table written by :func:`histex.tl.super_resolve`, or the cell table of :func:`histex.tl.to_cells`.
    truth_key
        A table of ground-truth bins on the same grid (``obs["array_row"]``, ``obs["array_col"]``), e.g.
        ``"truth"`` of :func:`histex.datasets.toy`; for cells, a table of the same cells (same region and
        instance ids; cells grown by ``to_cells`` as the nuclei they grew from), e.g. ``"truth_cells"`` of
        :func:`histex.sim.from_nuclei`.
    spots
        Show the measured spots (not for a table predicted without spots, from an H&E-only slide).
    image
        Draw the H&E beneath the maps (when one is found; else the maps are drawn alone and the reason logged).
    image_key
        The H&E image; by default the one :func:`histex.tl.super_resolve` read.
    alpha
        Opacity of the maps over the H&E.
    cmap
        Matplotlib colour map.
    panel_size
        Inches per panel (without ``ax``).
    {ax_grid}
    {show_save}

    Returns
    -------
    The axes, a ``(genes, panels)`` array (with ``show=False`` or ``ax``).
    """
    check_bool("show", show, none_ok=True)
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    from histex import _sdata

    table = table_of(sdata, table_key)
    genes = _genes_in(table, genes, table_key)
    check_alpha(alpha)
    if layout(table) == "cells":
        style = {"alpha": alpha, "cmap": cmap, "panel_size": panel_size, "ax": ax}
        fig, axes, given = _genes_on_cells(sdata, table, genes, table_key, truth_key, spots=spots,
                                           image_key=image_key, image=image, **style)  # fmt: skip
        return finish(fig, axes, given=given, show=show, save=save)
    beneath = underlay(sdata, table, table_key, image_key) if image else None
    opacity = alpha if beneath is not None else 1.0
    meta = table.uns["histex"]["data"]
    if spots and str(meta.get("spots_key", "None")) == "None":
        logger.info("Table %r was predicted without spots (an H&E-only slide): no spot panels.", table_key)
        spots = False
    shape = tuple(int(v) for v in meta["grid_shape"])
    truth = table_of(sdata, truth_key) if truth_key is not None else None
    titles = (["ground truth"] if truth is not None else []) + (["spots"] if spots else []) + ["super-resolution"]
    if spots:
        sp = _sdata.read_spots(
            sdata, meta["spots_key"], meta["table_key"], meta["image_key"], meta["coordinate_system"]
        )
        bin_px = float(meta["bin_px"])
        centres = sp.xy_px / bin_px - 0.5  # imshow puts bin c at [c - 0.5, c + 0.5)
        radius = sp.radius_px / bin_px
        per_spot = float(meta["bins_per_spot"])
        spot_layer = _sdata.fitted_layer(table)  # the values the network was trained on, which need not be X

    fig, axes, given = grid_axes(ax, len(genes), len(titles), panel_size, what="genes x panels")
    for i, gene in enumerate(genes):
        pred = raster(table, _column(table, gene), shape)
        panels = {"super-resolution": pred}
        if truth is not None:
            panels["ground truth"] = raster(truth, _column(truth, gene), shape)
        vmax = float(np.nanpercentile(np.concatenate([p[np.isfinite(p)] for p in panels.values()]), 99.5)) or 1.0
        for j, title in enumerate(titles):
            ax = axes[i, j]
            ax.set_facecolor("0.92")
            if title == "spots":
                values = _column(sp.table, gene, spot_layer) / per_spot
                patches = [Circle((x, y), radius) for x, y in centres]
                coll = PatchCollection(patches, cmap=cmap, linewidths=0, alpha=opacity)
                coll.set_array(values)
                coll.set_clim(0, vmax)
                ax.add_collection(coll)
                ax.set_xlim(-0.5, shape[1] - 0.5)
                ax.set_ylim(shape[0] - 0.5, -0.5)
                ax.set_aspect("equal")
            else:
                im = ax.imshow(panels[title], cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest", alpha=opacity)
            if beneath is not None:
                draw_underlay(ax, *beneath)
            ax.set_title(f"{gene}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=list(axes[i]), shrink=0.8, label="counts per bin")
    return finish(fig, axes, given=given, show=show, save=save)


def _genes_on_cells(sdata, table, genes, table_key, truth_key, *, spots, image_key, image, alpha, cmap, panel_size, ax):
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    cells = cell_layer(sdata, table, table_key, image_key, image=image)
    opacity = alpha if cells.underlay is not None else 1.0
    truth = _same_cells(sdata, table, truth_key) if truth_key is not None else None
    measured = _spots_under_cells(sdata, table, table_key, cells.image_key) if spots else None
    titles = (["ground truth"] if truth is not None else []) + (["spots"] if measured is not None else []) + ["cells"]
    fig, axes, given = grid_axes(ax, len(genes), len(titles), panel_size, what="genes x panels")
    for i, gene in enumerate(genes):
        panels = {"cells": _column(table, gene)}
        if truth is not None:
            panels["ground truth"] = _column(truth, gene)
        if measured is not None:
            spot_table, layer, xy, radius, per_cell = measured
            panels["spots"] = _column(spot_table, gene, layer) * per_cell
        vmax = float(np.nanpercentile(np.concatenate([v[np.isfinite(v)] for v in panels.values()]), 99.5)) or 1.0
        for ax, title in zip(axes[i], titles, strict=True):
            if title == "spots":
                mappable = draw_cells(ax, cells, np.full(table.n_obs, np.nan), cmap=cmap, vmin=0, vmax=vmax)
                circles = PatchCollection([Circle(c, radius) for c in xy], cmap=cmap, linewidths=0, alpha=opacity)
                circles.set_array(panels["spots"])
                circles.set_clim(0, vmax)
                circles.set_zorder(1)
                ax.add_collection(circles)
            else:
                mappable = draw_cells(ax, cells, panels[title], cmap=cmap, vmin=0, vmax=vmax, alpha=opacity)
            ax.set_title(f"{gene}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(mappable, ax=list(axes[i]), shrink=0.8, label="counts per cell")
    return fig, axes, given


def _same_cells(sdata, table, truth_key: str):
    """The rows of ``tables[truth_key]`` for the cells of ``table``, in its order: same region and instance id, where
    cells that :func:`histex.tl.to_cells` grew count as the cells they grew from.
    """
    from spatialdata.models import get_table_keys

    truth = table_of(sdata, truth_key)
    _, region_key, instance_key = get_table_keys(table)
    _, truth_region_key, truth_instance_key = get_table_keys(truth)
    params = histex_record(table, "params")
    regions = table.obs[region_key].astype(str)
    if params.get("expand_um", 0) > 0:
        regions = pd.Series(str(params["cells_key"]), index=table.obs_names)
    ours = regions + "/" + table.obs[instance_key].astype(str)
    theirs = truth.obs[truth_region_key].astype(str) + "/" + truth.obs[truth_instance_key].astype(str)
    position = pd.Index(theirs.to_numpy()).get_indexer(ours.to_numpy())
    if (position < 0).any():
        raise ValueError(
            f"Table {truth_key!r} does not hold {int((position < 0).sum())} of the cells of the table drawn; the truth "
            "must annotate the same cells (e.g. to_cells on the cells that the truth annotates)."
        )
    return truth[position]


def _spots_under_cells(sdata, table, table_key: str, drawn_on: str | None):
    """The spots the cells' bins were fitted on, the layer fitted, their centres and radius in the pixels of the H&E
    the cells are drawn on, and the factor that turns their counts into counts per median cell; None (and the
    reason logged) where there are none or they cannot be placed.
    """
    from histex import _sdata

    bins_key = histex_record(table, "params").get("table_key")
    bins = sdata.tables.get(bins_key) if bins_key is not None else None
    data = histex_record(bins, "data") if bins is not None else {}
    if str(data.get("spots_key", "None")) == "None" or "area_um2" not in table.obs or drawn_on != data["image_key"]:
        logger.info(
            "No spots beside the cells of %r: none were measured, the table is not of to_cells, or the cells are not "
            "drawn on the H&E the spots were placed on.",
            table_key,
        )
        return None
    spots = _sdata.read_spots(sdata, data["spots_key"], data["table_key"], data["image_key"], data["coordinate_system"])
    spot_um2 = np.pi * (spots.radius_px * float(data["mpp"])) ** 2
    per_cell = float(np.median(table.obs["area_um2"].to_numpy(float))) / spot_um2
    return spots.table, _sdata.fitted_layer(bins), spots.xy_px, spots.radius_px, per_cell


@shared_docs
def uncertainty(
    sdata,
    genes: str | list[str],
    *,
    table_key: str = "histex",
    cmap: str = "magma",
    panel_size: float = 3.2,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Predicted expression beside the width of its predictive interval (``layers["lower90"]`` and
    ``layers["upper90"]`` of :func:`histex.tl.super_resolve`), and the ensemble's spread.

    One row per gene: the prediction (counts per bin), the width of the 90% interval of the bin's count (upper minus
    lower: where a measured count could lie), and the standard deviation across ensemble states (where the states
    disagree), on one colour scale. The interval is the one a Visium HD bin's count would fall in; the ensemble's
    spread is one part of it. For a cell table of :func:`histex.tl.to_cells`, the cells' outlines. A table without
    intervals (written by an earlier histex) shows the spread alone.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve`.
    genes
        Gene name(s).
    table_key
        Its table, of bins or of cells.
    cmap
        Matplotlib colour map.
    panel_size
        Inches per panel (without ``ax``).
    {ax_grid}
    {show_save}

    Returns
    -------
    The axes, a ``(genes, panels)`` array (with ``show=False`` or ``ax``).
    """
    check_bool("show", show, none_ok=True)
    from histex.model.trust import interval_layers

    table = table_of(sdata, table_key)
    if SPREAD_LAYER not in table.layers:
        raise ValueError(
            f"Table {table_key!r} has no layers[{SPREAD_LAYER!r}] (the ensemble spread of super_resolve); predict it "
            "with this version of histex."
        )
    level = float(histex_record(table, "trust").get("level", 0.9))
    lower, upper = interval_layers(level)
    has_interval = lower in table.layers and upper in table.layers
    genes = _genes_in(table, genes, table_key)
    cells = cell_layer(sdata, table, table_key, None, image=False) if layout(table) == "cells" else None
    n_panels = 3 if has_interval else 2
    fig, axes, given = grid_axes(ax, len(genes), n_panels, panel_size, what="genes x panels")
    for i, gene in enumerate(genes):
        panels = {"prediction": _column(table, gene)}
        if has_interval:
            panels[f"{100 * level:g}% interval width"] = _column(table, gene, upper) - _column(table, gene, lower)
        panels["ensemble sd"] = _column(table, gene, SPREAD_LAYER)
        vmax = max(float(np.percentile(v, 99.5)) for v in panels.values()) or 1.0
        for ax, (title, values) in zip(axes[i], panels.items(), strict=True):
            if cells is not None:  # the cells' outlines, in their own coordinates
                im = draw_cells(ax, cells, values, cmap=cmap, vmin=0, vmax=vmax)
            else:
                im = ax.imshow(raster(table, values), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{gene}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=list(axes[i]), shrink=0.8, label=f"counts per {'cell' if cells is not None else 'bin'}")
    return finish(fig, axes, given=given, show=show, save=save)
