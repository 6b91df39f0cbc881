"""Domain maps and training curves."""

from __future__ import annotations

import numpy as np

from histex.pl._genes import raster


def domains(
    sdata,
    *,
    table_key: str = "histex",
    key: str = "domain",
    labels: bool = True,
    boundary: bool = True,
    cmap: str = "tab20",
    figsize: tuple[float, float] = (6.0, 5.0),
    save: str | None = None,
):
    """Map the domains of :func:`histex.tl.annotate` on the bin grid, one colour per domain (or label).

    The bins are rasterised on their grid (``obs["array_row"]``, ``obs["array_col"]``), so a million bins draw in
    about a second.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.annotate`.
    table_key
        The bin table.
    key
        The ``key_added`` of :func:`histex.tl.annotate`.
    labels
        Colour by the marker label (``obs[f"{key}_label"]``) when there is one, else by domain.
    boundary
        Draw the boundary bins (``obs[f"{key}_boundary"]``) in black, when present.
    cmap
        A qualitative matplotlib colour map.
    figsize
        Figure size in inches.
    save
        Path to save the figure to.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    table = sdata.tables[table_key]
    column = f"{key}_label" if labels and f"{key}_label" in table.obs else key
    if column not in table.obs:
        raise ValueError(f"Table {table_key!r} has no obs[{column!r}]; run histex.tl.annotate(key_added={key!r}).")
    values = table.obs[column].astype("category")
    names = list(values.cat.categories)
    palette = plt.get_cmap(cmap)
    colours = palette(np.arange(len(names)) % palette.N)
    if "unknown" in names:
        colours[names.index("unknown")] = (0.75, 0.75, 0.75, 1.0)
    image = raster(table, values.cat.codes.to_numpy().astype(np.float32))
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_facecolor("white")
    ax.imshow(image, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
    edge_column = f"{key}_boundary"
    if boundary and edge_column in table.obs:
        edge = raster(table, table.obs[edge_column].to_numpy().astype(np.float32), image.shape)
        ax.imshow(np.where(edge > 0, 1.0, np.nan), cmap=ListedColormap(["black"]), interpolation="nearest")
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(names)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(f"{table_key}: {column}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    return fig


def history(sdata, *, table_key: str = "histex", figsize: tuple[float, float] = (5.0, 3.5), save: str | None = None):
    """Training loss per epoch of every ensemble state of :func:`histex.tl.super_resolve`, on a log scale.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve`.
    table_key
        Its table.
    figsize
        Figure size in inches.
    save
        Path to save the figure to.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`.
    """
    import matplotlib.pyplot as plt

    table = sdata.tables[table_key]
    try:
        loss = np.asarray(table.uns["histex"]["history"]["loss"], dtype=float)
    except KeyError as err:
        raise ValueError(f"Table {table_key!r} has no training history (uns['histex']['history']['loss']).") from err
    fig, ax = plt.subplots(figsize=figsize)
    epochs = np.arange(1, loss.shape[1] + 1)
    for state, curve in enumerate(np.atleast_2d(loss)):
        ax.plot(epochs, curve, lw=1.2, label=f"state {state + 1}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("spot MSE (training)")
    ax.set_title(f"{table_key}: training loss", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    return fig
