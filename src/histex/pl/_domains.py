"""Domain maps, over the H&E or on the bin grid alone, and training curves."""

from __future__ import annotations

import logging

import numpy as np

from histex._docs import shared_docs
from histex._tables import histex_record, layout, table_of
from histex._validation import check_bool
from histex.pl._cells import cell_layer, draw_cells, outline_cells
from histex.pl._figure import finish, single_axes
from histex.pl._genes import raster
from histex.pl._underlay import check_alpha, draw_underlay, underlay

logger = logging.getLogger(__name__)


@shared_docs
def domains(
    sdata,
    *,
    table_key: str = "histex",
    key: str = "domain",
    labels: bool = True,
    boundary: bool = True,
    image: bool = True,
    image_key: str | None = None,
    alpha: float = 0.6,
    cmap: str = "tab20",
    figsize: tuple[float, float] = (6.0, 5.0),
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Map the domains of :func:`histex.tl.annotate` over the H&E image, one colour per domain (or label); on a
    cell table (:func:`histex.tl.to_cells`), its cells as their outlines (polygons, or the label image), coloured.

    The bins are rasterised on their grid (``obs["array_row"]``, ``obs["array_col"]``) and drawn semi-transparent
    over the part of the H&E they cover, so a million bins over a whole-slide image draw in seconds: the image is
    read at the coarsest level of its multiscale pyramid (or with a stride) that keeps about one pixel per bin, and
    only where the bins are.

    Where the bins lie on the image comes from ``uns["histex"]["data"]`` for a table of
    :func:`histex.tl.super_resolve` (bin ``(row, col)`` covers image pixels ``[col, col + 1) x [row, row + 1)``
    times ``bin_px``). For any other bin table (e.g. Visium HD bins) it is fitted by least squares: the affine map
    from ``(array_col, array_row)`` to the centres, in the image's pixels, of the shapes the table annotates.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.annotate`.
    table_key
        The table of bins, or of cells (drawn in the H&E's pixels, over the part of the H&E they span).
    key
        The ``key_added`` of :func:`histex.tl.annotate`.
    labels
        Colour by the marker label (``obs[f"{key}_label"]``) when there is one, else by domain.
    boundary
        Draw the boundary bins (``obs[f"{key}_boundary"]``) in black, when present.
    image
        Draw the H&E under the domains. When no image is found (none, or several and no ``image_key``), or the bins
        cannot be placed on it, the grid is drawn alone and the reason logged.
    image_key
        The H&E image; by default the one of :func:`histex.tl.super_resolve`, else the only full-resolution image.
        Naming one that is missing, or on which the bins cannot be placed, is an error.
    alpha
        Opacity of the domain colours over the H&E (the grid alone is drawn opaque).
    cmap
        A qualitative matplotlib colour map.
    figsize
        Figure size in inches (without ``ax``).
    {ax}
    {show_save}

    Returns
    -------
    The :class:`matplotlib.axes.Axes` (with ``show=False`` or ``ax``). For bins, it holds the domains (then the
    boundary bins) as images in bin coordinates (bin ``(row, col)`` centred on ``(col, row)``); the H&E lies in
    ``ax.child_axes[0]``, which shares its limits and is drawn beneath it. For cells, the axes is in the H&E's
    full-resolution pixels: the H&E its first image, the cells a collection (a second image for a label image), the
    boundary cells outlined in black.
    """
    check_bool("show", show, none_ok=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    table = table_of(sdata, table_key)
    column = f"{key}_label" if labels and f"{key}_label" in table.obs else key
    if column not in table.obs:
        raise ValueError(f"Table {table_key!r} has no obs[{column!r}]; run histex.tl.annotate(key_added={key!r}).")
    check_alpha(alpha)
    on_cells = layout(table) == "cells"
    # Read the image before drawing anything, so that a wrong image_key fails fast.
    if on_cells:
        cells = cell_layer(sdata, table, table_key, image_key, image=image)
        opacity = alpha if cells.underlay is not None else 1.0
    else:
        beneath = underlay(sdata, table, table_key, image_key) if image else None
        opacity = alpha if beneath is not None else 1.0
    values = table.obs[column].astype("category")
    names = list(values.cat.categories)
    palette = plt.get_cmap(cmap)
    colours = palette(np.arange(len(names)) % palette.N)
    if "unknown" in names:
        colours[names.index("unknown")] = (0.75, 0.75, 0.75, 1.0)
    codes = values.cat.codes.to_numpy().astype(np.float32)
    codes[codes < 0] = np.nan
    edge_column = f"{key}_boundary"
    edge = table.obs[edge_column].to_numpy().astype(bool) if boundary and edge_column in table.obs else None
    fig, ax, given = single_axes(ax, figsize)
    ax.set_facecolor("white")
    style = {"cmap": ListedColormap(colours), "vmin": -0.5, "vmax": len(names) - 0.5}
    if on_cells:
        draw_cells(ax, cells, codes, alpha=opacity, **style)
        if edge is not None:
            outline_cells(ax, cells, edge)
    else:
        grid = raster(table, codes)
        ax.imshow(grid, interpolation="nearest", alpha=opacity, **style)
        if edge is not None:
            edge = raster(table, edge.astype(np.float32), grid.shape)
            ax.imshow(np.where(edge > 0, 1.0, np.nan), cmap=ListedColormap(["black"]), interpolation="nearest")
        if beneath is not None:
            draw_underlay(ax, *beneath)
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(names)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(f"{table_key}: {column}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return finish(fig, ax, given=given, show=show, save=save)


@shared_docs
def history(
    sdata,
    *,
    table_key: str = "histex",
    figsize: tuple[float, float] = (5.0, 3.5),
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Loss per epoch of every ensemble state of :func:`histex.tl.super_resolve`, on a log scale.

    Solid lines are the loss on the spots a state trained on, dashed lines the loss on the spots it held out, and
    a dot marks the epoch whose parameters the state kept (the lowest held-out loss).

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve`.
    table_key
        Its table.
    figsize
        Figure size in inches (without ``ax``).
    {ax}
    {show_save}

    Returns
    -------
    The :class:`matplotlib.axes.Axes` (with ``show=False`` or ``ax``).
    """
    check_bool("show", show, none_ok=True)
    table = table_of(sdata, table_key)
    try:
        record = histex_record(table, "history")
        loss = np.atleast_2d(np.asarray(record["loss"], dtype=float))
    except KeyError as err:
        raise ValueError(f"Table {table_key!r} has no training history (uns['histex']['history']['loss']).") from err
    validation = np.asarray(record.get("validation", np.empty((0, 0))), dtype=float)
    best = np.asarray(record.get("best_epoch", []), dtype=int)
    fig, ax, given = single_axes(ax, figsize)
    epochs = np.arange(1, loss.shape[1] + 1)
    for state, curve in enumerate(loss):
        (line,) = ax.plot(epochs, curve, lw=1.2, label=f"state {state + 1}")
        if validation.size:
            ax.plot(epochs, validation[state], lw=1.2, ls="--", color=line.get_color())
            if len(best) > state:
                ax.plot(best[state], validation[state, best[state] - 1], "o", ms=4, color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("spot MSE")
    title = "training (solid) and held-out (dashed) loss" if validation.size else "training loss"
    ax.set_title(f"{table_key}: {title}", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return finish(fig, ax, given=given, show=show, save=save)
