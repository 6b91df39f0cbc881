"""Which genes to trust: the genes ranked by their reliability, those flagged reliable marked."""

from __future__ import annotations

import numpy as np

from histex._docs import shared_docs
from histex._tables import histex_record, table_of
from histex._validation import check_bool, check_int, check_number
from histex.pl._figure import finish, single_axes


@shared_docs
def reliability(
    sdata,
    *,
    table_key: str = "histex",
    n_genes: int | None = 40,
    label_genes: bool | None = None,
    panel_size: float = 4.0,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Genes ranked by ``var["reliability"]`` of :func:`histex.tl.super_resolve`, the reliable ones marked.

    A gene's reliability is the Pearson correlation its 8 µm map is expected to have with the counts a Visium HD
    bin would measure (see :mod:`histex.model.trust`): the genes above the threshold (a dashed line, 0.4) are
    flagged ``var["reliable"]``. Beside it, what it is made of: the correlation expected from the map's variation
    against counting noise alone, and the network's agreement with the spots it was fitted on.

    Parameters
    ----------
    sdata
        SpatialData after :func:`histex.tl.super_resolve` (or :meth:`histex.HistexModel.predict`).
    table_key
        The table of bins.
    n_genes
        Show the best ``n_genes // 2`` and the worst ``n_genes - n_genes // 2`` genes; ``None``: every gene.
    label_genes
        Name the genes on the axis; default when at most 60 are shown.
    panel_size
        Inches of the figure's height per 20 genes (and its width), without ``ax``.
    {ax}
    {show_save}

    Returns
    -------
    The :class:`matplotlib.axes.Axes` of the ranking (with ``show=False`` or ``ax``).
    """
    check_bool("show", show, none_ok=True)
    table = table_of(sdata, table_key)
    panel_size = check_number("panel_size", panel_size, minimum=0, above=True)
    check_bool("label_genes", label_genes, none_ok=True)
    if "reliability" not in table.var:
        raise ValueError(
            f"Table {table_key!r} has no var['reliability']; it is written by histex.tl.super_resolve and "
            "HistexModel.predict (run them again with this version of histex)."
        )
    n_genes = check_int("n_genes", n_genes, minimum=2, none_ok=True)
    var = table.var
    order = np.argsort(-var["reliability"].to_numpy(float), kind="stable")
    if n_genes is not None and len(order) > n_genes:
        order = np.concatenate([order[: n_genes // 2], order[len(order) - (n_genes - n_genes // 2) :]])
    shown = var.iloc[order]
    threshold = float(histex_record(table, "trust").get("reliable_threshold", 0.4))
    label_genes = len(shown) <= 60 if label_genes is None else label_genes

    y = np.arange(len(shown))[::-1]
    height = max(2.5, panel_size * len(shown) / 20)
    fig, ax, given = single_axes(ax, (panel_size * 1.4, height))
    flagged = shown["reliable"].to_numpy(bool)
    ax.scatter(shown["reliability"][flagged], y[flagged], color="tab:green", s=22, zorder=3, label="reliable")
    ax.scatter(shown["reliability"][~flagged], y[~flagged], color="tab:grey", s=22, zorder=3, label="not reliable")
    if "expected_pearson" in shown:
        ax.scatter(shown["expected_pearson"], y, marker="|", color="black", s=40, label="expected from counting noise")
    if "spot_consistency" in shown:
        ax.scatter(shown["spot_consistency"], y, marker="x", color="tab:blue", s=14, label="agreement with spots")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=0.8)
    if n_genes is not None and len(var) > n_genes:
        ax.axhline(y[n_genes // 2 - 1] - 0.5, color="grey", linewidth=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels(shown.index if label_genes else [], fontsize=7)
    ax.set_xlim(min(0.0, float(np.nanmin(shown[["reliability"]].to_numpy()))), 1.0)
    ax.set_xlabel("reliability (expected Pearson with 8 µm counts)")
    n_reliable = int(var["reliable"].sum())
    ax.set_title(f"{n_reliable} of {len(var)} genes reliable (>= {threshold:g})", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return finish(fig, ax, given=given, show=show, save=save)
