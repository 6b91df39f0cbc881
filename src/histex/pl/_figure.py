"""How every histex plot takes its axes and ends, the scanpy way: ``ax=`` to draw into, ``show=``, ``save=``."""

from __future__ import annotations

import numpy as np

from histex._validation import check_bool, check_number


def single_axes(ax, figsize):
    """``(fig, ax, given)``: the axes passed, or a new figure of ``figsize`` with one axes."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is None:
        fig, ax = plt.subplots(figsize=_figsize(figsize))
        return fig, ax, False
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (or None for a new figure), got {type(ax).__name__}.")
    return ax.figure, ax, True


def grid_axes(ax, n_rows: int, n_cols: int, panel_size: float, *, what: str):
    """``(fig, axes, given)``: ``axes`` a ``(n_rows, n_cols)`` array, of the axes passed (any array or list of
    ``n_rows * n_cols`` axes, row by row) or of a new figure of ``panel_size`` inches per panel.
    """
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    panel_size = check_number("panel_size", panel_size, minimum=0, above=True)
    if ax is None:
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_size * n_cols, panel_size * n_rows), squeeze=False)
        return fig, axes, False
    flat = np.array([ax], dtype=object) if isinstance(ax, Axes) else np.asarray(ax, dtype=object).reshape(-1)
    if flat.size != n_rows * n_cols or not all(isinstance(a, Axes) for a in flat):
        raise ValueError(
            f"ax must hold {n_rows * n_cols} matplotlib Axes ({what}: {n_rows} x {n_cols}), row by row; got "
            f"{flat.size} object(s). Pass ax=None for a new figure."
        )
    return flat[0].figure, flat.reshape(n_rows, n_cols), True


def finish(fig, axes, *, given: bool, show: bool | None, save):
    """Save the figure, then show it (``show=None``: when the plot made its own figure) and return ``None``, or
    return ``axes`` to draw on. A figure the plot made and showed is closed, so that plots in a loop of a script
    (where showing does nothing) do not pile up.
    """
    import warnings

    import matplotlib.pyplot as plt

    show = not given if show is None else check_bool("show", show)
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if not show:
        return axes
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*", category=UserWarning)
        plt.show()
    if not given:
        plt.close(fig)
    return None


def _figsize(figsize) -> tuple[float, float]:
    try:
        width, height = (float(v) for v in figsize)
    except (TypeError, ValueError):
        raise TypeError(f"figsize must be (width, height) in inches, got {figsize!r}.") from None
    if not (width > 0 and height > 0):
        raise ValueError(f"figsize must be positive, got {figsize!r}.")
    return width, height
