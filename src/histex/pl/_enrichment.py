"""Gene set enrichment of the domains: the top terms of each domain, as dots or as a heat map."""

from __future__ import annotations

import numpy as np
import pandas as pd

from histex._docs import shared_docs
from histex._tables import table_of
from histex._validation import check_bool, check_choice, check_int
from histex.pl._figure import finish, single_axes

KINDS = ("dot", "heatmap")
COLUMNS = ("group", "term", "score", "padj", "rank")
MIN_PADJ = 1e-300  # -log10 of an adjusted p-value of 0 stays finite


def _group_order(groups: pd.Series) -> list[str]:
    """Groups as they come, or by number when every name is one (domains "0", "1", ..., "10")."""
    if isinstance(groups.dtype, pd.CategoricalDtype):
        present = set(groups.astype(str))
        names = [str(c) for c in groups.cat.categories if str(c) in present]
    else:
        names = list(dict.fromkeys(groups.astype(str)))
    numbers = pd.to_numeric(pd.Series(names, dtype=object), errors="coerce")
    if len(names) and numbers.notna().all():
        names = [names[i] for i in np.argsort(numbers.to_numpy(float), kind="stable")]
    return names


def enrichment_matrix(frame: pd.DataFrame, n_terms: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score and adjusted p-value, terms x groups, of the union of the top ``n_terms`` terms of every group.

    Terms come group by group, each group's in rank order; a term that a group's result lacks is NaN there.
    """
    groups = _group_order(frame["group"])
    frame = frame.assign(group=frame["group"].astype(str), term=frame["term"].astype(str))
    terms: list[str] = []
    for group in groups:
        top = frame[frame["group"] == group].sort_values("rank", kind="stable").head(n_terms)
        terms.extend(t for t in top["term"] if t not in terms)
    frame = frame.drop_duplicates(["term", "group"])
    score = frame.pivot(index="term", columns="group", values="score").reindex(index=terms, columns=groups)
    padj = frame.pivot(index="term", columns="group", values="padj").reindex(index=terms, columns=groups)
    return score.astype(float), padj.astype(float)


@shared_docs
def enrichment(
    sdata,
    *,
    table_key: str = "histex",
    key: str = "enrichment",
    kind: str = "dot",
    n_terms: int = 5,
    cmap: str = "RdBu_r",
    figsize: tuple[float, float] | None = None,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Plot the gene set enrichment of the domains (:func:`histex.tl.enrich`): the top terms of every domain.

    Rows are the union of the ``n_terms`` best terms (by ``rank``) of each group, group by group; columns are the
    groups (domains in their numeric order). The colour is the enrichment score (log odds ratio or t-value), on a
    diverging scale centred at 0; in the dot plot the dot area grows with -log10 of the adjusted p-value.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.enrich`.
    table_key
        The bin table.
    key
        The ``key_added`` of :func:`histex.tl.enrich`: a tidy DataFrame in ``uns[key]`` with columns ``group``,
        ``term``, ``score``, ``padj`` and ``rank`` (1: best term of its group).
    kind
        ``"dot"`` (colour: score, size: -log10 padj) or ``"heatmap"`` (colour: score).
    n_terms
        Best terms of each group to show.
    cmap
        A diverging matplotlib colour map.
    figsize
        Figure size in inches (without ``ax``); by default from the number of terms and groups.
    {ax}
    {show_save}

    Returns
    -------
    The :class:`matplotlib.axes.Axes` of the plot (with ``show=False`` or ``ax``); its colour bar is the figure's
    last axes.
    """
    check_bool("show", show, none_ok=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    table = table_of(sdata, table_key)
    if key not in table.uns:
        raise ValueError(f"Table {table_key!r} has no uns[{key!r}]; run histex.tl.enrich(sdata, {table_key!r}) first.")
    check_choice("kind", kind, KINDS)
    n_terms = check_int("n_terms", n_terms)
    frame = pd.DataFrame(table.uns[key])
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"uns[{key!r}] of table {table_key!r} lacks the column(s) {missing} of histex.tl.enrich.")
    if frame.empty:
        raise ValueError(f"uns[{key!r}] of table {table_key!r} is empty: no term was tested.")
    score, padj = enrichment_matrix(frame, int(n_terms))
    n_rows, n_cols = score.shape
    if figsize is None:
        label = max(len(t) for t in score.index)
        figsize = (min(16.0, 2.6 + 0.07 * label + 0.55 * n_cols), min(20.0, 1.4 + 0.32 * n_rows))
    finite = np.abs(score.to_numpy()[np.isfinite(score.to_numpy())])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    norm = Normalize(-vmax, vmax)

    fig, ax, given = single_axes(ax, figsize)
    if kind == "dot":
        ys, xs = np.nonzero(np.isfinite(score.to_numpy()))
        values = score.to_numpy()[ys, xs]
        strength = -np.log10(np.clip(padj.to_numpy()[ys, xs], MIN_PADJ, 1.0))
        strength = np.nan_to_num(strength, nan=0.0)
        top = _nice_top(strength)
        coll = ax.scatter(
            xs, ys, s=_area(strength, top), c=values, cmap=cmap, norm=norm, edgecolors="0.3", linewidths=0.4
        )
        ax.set_xlim(-0.6, n_cols - 0.4)
        ax.set_ylim(n_rows - 0.5, -0.5)
        ax.grid(True, color="0.92", lw=0.6, zorder=0)
        ax.set_axisbelow(True)
        steps = sorted({v for v in (top / 4, top / 2, top) if v > 0})
        handles = [
            Line2D([], [], ls="", marker="o", color="0.5", markersize=float(np.sqrt(_area(np.array([v]), top))[0]))
            for v in steps
        ]
        ax.legend(
            handles,
            [f"{v:g}" for v in steps],
            title="-log10 padj",
            loc="lower left",
            bbox_to_anchor=(1.02, 0.0),
            fontsize=8,
            title_fontsize=8,
            frameon=False,
            labelspacing=1.2,
        )
        mappable = coll
    else:
        colours = plt.get_cmap(cmap).with_extremes(bad="0.9")  # pairs a group's result lacks
        mappable = ax.imshow(np.ma.masked_invalid(score.to_numpy()), cmap=colours, norm=norm, aspect="auto")
    # Top-aligned, so that the size legend fits beneath it.
    fig.colorbar(mappable, ax=ax, shrink=0.45 if kind == "dot" else 0.6, anchor=(0.0, 1.0), label="score")
    ax.set_xticks(np.arange(n_cols), labels=list(score.columns), rotation=90 if n_cols > 8 else 0)
    ax.set_yticks(np.arange(n_rows), labels=list(score.index), fontsize=8)
    ax.set_xlabel("group")
    ax.set_title(f"{table_key}: {key}", fontsize=10)
    return finish(fig, ax, given=given, show=show, save=save)


def _nice_top(strength: np.ndarray) -> float:
    """A round -log10 padj for the largest dot: 1, 2 or 5 times a power of ten, at least the largest shown."""
    biggest = float(strength.max()) if strength.size else 0.0
    if biggest <= 1:
        return 1.0
    power = 10.0 ** np.floor(np.log10(biggest))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= biggest))


def _area(strength: np.ndarray, top: float) -> np.ndarray:
    """Dot area in points² for -log10 padj: a small dot at padj = 1, the largest at ``top``."""
    return 6.0 + 220.0 * np.clip(strength / top, 0.0, 1.0)
