"""``super_resolve``: read spots and features from a SpatialData, fit HISTEX, write 8 µm bins back."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from histex import _sdata, geometry
from histex.model import FitConfig, Problem, TargetScaler, context_points, predict, train
from histex.model.ensemble import compute_dtype
from histex.model.features import standardised_with_position
from histex.model.fit import bins_per_spot, default_batch_size, embedding_dim, resolve_device
from histex.pp._features import read_features
from histex.tl._bins_output import BinsOutput, wants_store

logger = logging.getLogger("histex")

#: What each variant sets; explicit arguments of ``super_resolve`` override stride,
#: context_dropout, targets and epochs. The choices for "histex" were measured with ``histex bench`` on the toy
#: section and the HGSC nest (mean per-gene Pearson at 8 µm against ground truth; see the benchmark page).
_PAPER_MLP = (1024, 512, 512, 512)
_SMALL_MLP = (256, 256, 256, 256)  # as accurate as the paper's widths on texture features, three times faster
VARIANTS: dict[str, dict] = {
    # Our default: nonlinear MLP; the fusion blocks carry the measured expression through and the MLP also sees it
    # directly; a spot never sees its own measurement at training, and half of the windows are trained without
    # the fused tokens (so that the MLP learns each bin from its image); overlapping prediction windows.
    "histex": {
        "use_context": True,
        "nonlinear": True,
        "stride": 3,
        "context_dropout": "self",
        "targets": "minmax",
        "carry_context": True,
        "context_skip": True,
        "fusion_dropout": 0.5,
        "hidden": _SMALL_MLP,
        "epochs": 60,
    },
    # The iStar design: a per-bin MLP on image features, same disk loss, no expression context.
    "image_only": {
        "use_context": False,
        "nonlinear": True,
        "stride": 7,
        "context_dropout": "none",
        "targets": "minmax",
        "carry_context": False,
        "context_skip": False,
        "fusion_dropout": 0.0,
        "hidden": _SMALL_MLP,
        "epochs": 60,
    },
    # The published setting (linear MLP, non-overlapping 7 x 7 blocks, min-max targets), with the corrections kept.
    "paper": {
        "use_context": True,
        "nonlinear": False,
        "stride": 7,
        "context_dropout": "none",
        "targets": "minmax",
        "carry_context": False,
        "context_skip": False,
        "fusion_dropout": 0.0,
        "hidden": _PAPER_MLP,
        "epochs": 500,
    },
}


def super_resolve(
    sdata,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    features_key: str | None = None,
    layer: str | None = None,
    genes: list[str] | None = None,
    n_top_genes: int = 1000,
    bin_size_um: float = 8.0,
    mpp: float | None = None,
    spot_diameter_um: float = geometry.VISIUM_SPOT_DIAMETER_UM,
    variant: str = "histex",
    epochs: int | None = None,
    holdout: float = 0.0,
    patience: int = 10,
    n_states: int = 5,
    batch_size: int | None = None,
    lr: float = 1e-4,
    k_context: int = 5,
    stride: int | None = None,
    context_dropout: str | None = None,
    targets: str | None = None,
    coordinate_system: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    feature_components: int | None = None,
    seed: int = 0,
    key_added: str = "histex",
    to_store: bool | None = None,
    show_progress: bool = True,
) -> str:
    """Predict gene expression on 8 µm bins from Visium spots and image features (HISTEX).

    For every in-tissue bin, the image features of the 7 x 7 bins around it are fused with the measured expression
    of the nearest spots (and midpoints between neighbouring spots) by bidirectional cross-attention. The network
    learns only from the spots: the mean of its predictions over the bins of a spot's disk must match that spot.
    An ensemble of ``n_states`` networks is trained; the prediction is their median and the spread their standard
    deviation.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` in the layout of :func:`spatialdata_io.visium`, with features from
        :func:`histex.pp.extract_features`.
    image_key, spots_key, table_key, features_key
        Elements to use; each is found automatically when unambiguous.
    layer
        Layer of the table that holds the counts; default ``X``.
    genes
        Genes to predict; default the ``n_top_genes`` most variable (``seurat_v3`` on the spot counts).
    n_top_genes
        Number of highly variable genes when ``genes`` is not given.
    bin_size_um
        Bin edge in µm; must match the features.
    mpp
        Microns per pixel of the full-resolution image; by default from the reader's metadata or the spot lattice.
    spot_diameter_um
        Diameter of the capture area of a spot, whose bins the disk loss averages (55 µm on Visium). The spot
        circles' radius is not used for this: Space Ranger draws them at 65 µm.
    variant
        ``"histex"`` (default): nonlinear MLP, fusion blocks that carry the measured expression through, the mean
        context expression given to the MLP as well, each spot's own measurement left out of its context at
        training, the fused tokens withheld from the MLP for half of the training windows (so that it learns each
        bin from its image, not each spot by heart), and overlapping prediction windows (stride 3). ``"image_only"``: no expression context (the iStar
        design). ``"paper"``: the published settings (linear MLP of widths 1024-512-512-512, non-overlapping 7 x 7
        blocks, min-max targets), with the reference code's defects corrected (neighbours by location, attention
        scaled by the head dimension, shuffled batches, hexagonal lattice).
    epochs
        Most passes over the spots per ensemble state. Variant default: 500 for ``"paper"`` (published), 60
        otherwise (on the toy section more than about 100 over-fits its 200 spots).
    holdout
        ``0`` (default): every state trains on every spot for ``epochs`` epochs. Above 0, the stopping rule: each
        ensemble state holds out this share of the spots (a different share for each state, so that the ensemble
        learns from all of them), keeps the parameters of the epoch with the lowest loss on them, and training
        stops once no state has improved for ``patience`` epochs. On the benchmark ``holdout=0.1`` cost 0.014
        (toy section) and 0.063 (HGSC nest, 48 spots) in mean Pearson at 8 µm: the loss on held-out spots stops
        falling before the 8 µm maps stop improving, and each state learns from fewer spots.
    patience
        Epochs without improvement on the held-out spots before training stops.
    n_states
        Independently seeded networks in the ensemble (paper: 5).
    batch_size
        Spots per step; default ``min(32, n_spots // 16)``.
    lr
        Adam learning rate.
    k_context
        Context points (gene tokens) per query.
    stride
        Step in bins between prediction windows; 7 tiles the grid, smaller overlaps and averages. Variant default.
    context_dropout
        ``"self"``: at training, a spot's own measurement (and the midpoints made from it) is left out of its
        context, so that the network must learn from the image; ``"none"``. Variant default.
    targets
        ``"minmax"`` (paper) or ``"log1p"`` scaling of the counts. Variant default.
    coordinate_system
        Coordinate system shared by image and spots; found automatically.
    device
        ``"cpu"``, ``"cuda"``, ``"mps"``; ``None`` picks cuda, then mps, then cpu.
    precision
        ``"auto"``: bfloat16 mixed precision where the hardware computes it natively (CUDA GPUs that support it,
        CPUs with AMX or AVX-512 BF16 units), float32 elsewhere; ``"float32"``; ``"bfloat16"``.
    feature_components
        Project the standardised image features onto this many principal axes, fitted on the tissue bins, before
        training (a UNI map of 1,024 channels is four times smaller at 256). ``None`` keeps every channel.
    seed
        Seed of the first ensemble state (state ``i`` uses ``seed + i``). Same seed, same result on the same
        device and precision.
    key_added
        Name of the output table; the bins are ``shapes[f"{key_added}_bins"]``.
    to_store
        Write the output into ``sdata``'s zarr store as it is computed, the predictions chunk by chunk, so that a
        whole slide's bins x genes never sit in memory: ``X``, ``layers["std"]`` and ``obsm["X_histex"]`` are then
        dask arrays read from the store. ``None`` (default): when ``sdata`` is backed (written with
        :meth:`~spatialdata.SpatialData.write` or read with :func:`spatialdata.read_zarr`). ``False`` keeps
        everything in memory.
    show_progress
        Show progress bars.

    Returns
    -------
    str
        The key of the new table, ``key_added``. ``sdata`` gains two elements:

        * ``shapes[f"{key_added}_bins"]``: one square polygon per in-tissue bin, in the image's coordinate systems;
        * ``tables[key_added]``: bins x genes; ``X`` predicted counts per bin (float32), ``layers["std"]`` the
          ensemble spread, ``obs["array_row"]`` and ``obs["array_col"]`` (for :func:`spatialdata.rasterize_bins`),
          ``obsm["spatial"]`` bin centres in image pixels, ``obsm["X_histex"]`` the fused embedding, and
          ``uns["histex"]`` the parameters, versions, training history and timings.

    Input elements are not modified; if the call fails, nothing is written (in memory or in the store).
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(timings.get(stage, 0.0) + now - clock, 3)
        clock = now

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}.")
    settings = dict(VARIANTS[variant])
    overrides = {"stride": stride, "context_dropout": context_dropout, "targets": targets, "epochs": epochs}
    for name, value in overrides.items():
        if value is not None:
            settings[name] = value
    if settings["context_dropout"] not in ("self", "none"):
        raise ValueError(f"context_dropout must be 'self' or 'none', got {settings['context_dropout']!r}.")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}.")
    if int(patience) != patience or patience < 1:
        raise ValueError(f"patience must be a positive number of epochs, got {patience}.")
    torch_device = resolve_device(device)
    compute_dtype(precision, torch_device)  # refuses an unknown precision before any work
    _check_output_keys(sdata, key_added)
    to_store = wants_store(sdata, to_store)

    # --- inputs -------------------------------------------------------------------------------------------------
    section = _sdata.read_section(
        sdata,
        image_key=image_key,
        spots_key=spots_key,
        table_key=table_key,
        coordinate_system=coordinate_system,
        mpp=mpp,
    )
    image_key, spots, mpp = section.image_key, section.spots, section.mpp
    circle_diameter_um = _sdata.check_spot_radius(spots, mpp, spot_diameter_um)
    grid = geometry.BinGrid.for_image(section.shape_yx, mpp=mpp, bin_size_um=bin_size_um)
    features_key, feats = read_features(sdata, image_key, section.coordinate_system, features_key)
    if abs(feats.bin_px / grid.bin_px - 1) > 1e-3 or feats.data.shape[1:] != grid.shape:
        raise ValueError(
            f"Features {features_key!r} lie on bins of {feats.bin_px:.3f} px, but {bin_size_um} µm at {mpp:.4f} µm/px "
            f"is {grid.bin_px:.3f} px. Run histex.pp.extract_features with the same bin_size_um and mpp."
        )
    counts, gene_names = _spot_counts(spots.table, layer=layer, genes=genes, n_top_genes=n_top_genes)
    logger.info(
        "Image %r, spots %r (%d), table %r, %d genes; %.4f µm/px from the %s; %d x %d bins of %g µm, %d in tissue.",
        image_key,
        section.spots_key,
        len(counts),
        section.table_key,
        len(gene_names),
        mpp,
        section.mpp_source,
        *grid.shape,
        bin_size_um,
        int(feats.tissue.sum()),
    )
    lap("inputs")

    # --- arrays for the model -----------------------------------------------------------------------------------
    scaler = TargetScaler.fit(counts, settings["targets"])
    y = scaler.transform(counts)
    spot_rc = spots.xy_px[:, ::-1] / grid.bin_px
    context = context_points(spot_rc, y, pitch=section.pitch_px / grid.bin_px) if settings["use_context"] else None
    lap("context")
    problem = Problem(
        features=standardised_with_position(feats.data, feats.tissue, n_components=feature_components),
        tissue=feats.tissue,
        spot_rc=spot_rc,
        radius_bins=spot_diameter_um / 2 / bin_size_um,
        targets=y,
        context=context,
    )
    window = geometry.window_size(problem.radius_bins)
    config = fit_config(
        settings,
        window=window,
        n_states=n_states,
        batch_size=batch_size,
        lr=lr,
        k_context=k_context,
        holdout=holdout,
        patience=patience,
        precision=precision,
        seed=seed,
        device=torch_device,
        show_progress=show_progress,
    )
    lap("prepare")

    # --- fit ----------------------------------------------------------------------------------------------------
    ensemble, history = train(problem, config)
    lap("train")
    per_spot = bins_per_spot(problem, window)

    params = {
        "variant": variant,
        **settings,
        "n_states": n_states,
        "holdout": holdout,
        "patience": patience,
        "precision": precision,
        "feature_components": feature_components,
        "epochs_run": history.epochs,
        "lr": lr,
        "k_context": k_context,
        "bin_size_um": bin_size_um,
        "window": window,
        "seed": seed,
        "device": str(torch_device),
        "batch_size": config.batch_size or default_batch_size(len(counts)),
        "genes_given": genes is not None,
        "n_top_genes": n_top_genes,
        "layer": layer or "X",
        "to_store": to_store,
    }
    meta = {
        "params": params,
        "data": {
            "image_key": image_key,
            "spots_key": section.spots_key,
            "table_key": section.table_key,
            "features_key": features_key,
            "feature_channels": list(feats.names),
            "coordinate_system": section.coordinate_system,
            "mpp": mpp,
            "mpp_source": section.mpp_source,
            "spot_diameter_um": spot_diameter_um,
            "circle_diameter_um": circle_diameter_um,
            "radius_bins": problem.radius_bins,
            "n_spots": len(counts),
            "grid_shape": list(grid.shape),
            "bin_px": grid.bin_px,
            "bins_per_spot": per_spot,
        },
        "network": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(replace(config, device=None)).items()
            if v is not None
        },
        "versions": _versions(),
        "history": {"loss": history.loss, "validation": history.validation, "best_epoch": history.best_epoch},
    }

    # --- predict and write back ---------------------------------------------------------------------------------
    tissue_rows, tissue_cols = np.nonzero(problem.tissue)
    output = BinsOutput(
        sdata,
        key_added,
        grid,
        tissue_rows,
        tissue_cols,
        transformations=_sdata.element_transformations(sdata.images[image_key]),
        gene_names=gene_names,
        embedding_dim=embedding_dim(config),
        to_store=to_store,
    )
    lap("write")
    try:
        # Into the output's arrays block by block (in memory, or the store's chunks): the slide's predictions exist
        # once. Nothing shows in sdata until finish(); a failure removes what was staged in the store.
        to_counts = scaler.block_to_counts_per_bin(per_spot)
        predict(ensemble, problem, config, transform=to_counts, out=output.open())
        lap("predict")
        output.write_bins()
        lap("write")
        meta["timings"] = dict(timings)
        output.finish(_plain(meta))
    except BaseException:
        output.abort()
        raise
    logger.info("Wrote shapes %r and table %r (%d bins x %d genes).", output.bins_key, key_added, *output.shape)
    return key_added


def _check_output_keys(sdata, key_added: str) -> None:
    """The output names must be free, or hold an earlier ``super_resolve`` result (which is then replaced)."""
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


def _spot_counts(table, *, layer, genes, n_top_genes) -> tuple[np.ndarray, list[str]]:
    """Dense counts of the genes to predict, validated: non-negative, finite, present.

    Checks and gene selection run on the stored (often sparse) matrix; only the chosen genes are made dense.
    """
    if layer is not None and layer not in table.layers:
        raise KeyError(f"No layer {layer!r} in the table; layers: {list(table.layers)}. Pass layer=None to use X.")
    matrix = table.layers[layer] if layer is not None else table.X
    matrix = sp.csr_matrix(matrix) if sp.issparse(matrix) else np.asarray(matrix)
    values = matrix.data if sp.issparse(matrix) else matrix
    if not np.isfinite(values).all():
        raise ValueError("The counts contain NaN or infinite values; histex needs raw, finite counts per spot.")
    if (values < 0).any():
        raise ValueError(
            "The counts contain negative values; histex needs raw counts (or non-negative expression), not scaled or "
            "centred data. Pass layer=... to use raw counts."
        )
    var_names = pd.Index(table.var_names.astype(str))
    if genes is not None:
        genes = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
        missing = [g for g in genes if g not in var_names]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"{len(missing)} requested gene(s) are not in the table: {shown}. Check var_names.")
        cols = var_names.get_indexer(genes)
    else:
        cols = np.flatnonzero(np.asarray(matrix.sum(axis=0)).ravel() > 0)  # genes no spot expresses teach nothing
        if n_top_genes < len(cols):
            cols = cols[_highly_variable(matrix[:, cols], n_top_genes)]
    x = matrix[:, cols]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x.astype(np.float64), [var_names[c] for c in cols]


def _highly_variable(x, n_top: int) -> np.ndarray:
    """Column indices of the ``n_top`` most variable genes: scanpy's seurat_v3 on counts, variance otherwise."""
    import anndata as ad
    import scanpy as sc

    values = x.data if sp.issparse(x) else x
    if np.array_equal(values, np.round(values)):
        adata = ad.AnnData(x.astype(np.float32))
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top)
        rank = adata.var["highly_variable_rank"].to_numpy()
        return np.sort(np.argsort(np.where(np.isnan(rank), np.inf, rank), kind="stable")[:n_top])
    logger.warning("The counts are not integers (normalised data?); choosing genes by variance instead of seurat_v3.")
    mean = np.asarray(x.mean(axis=0)).ravel()
    mean_sq = np.asarray(x.multiply(x).mean(axis=0)).ravel() if sp.issparse(x) else (x**2).mean(axis=0)
    return np.sort(np.argsort(-(mean_sq - mean**2), kind="stable")[:n_top])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("histex", "torch", "numpy", "spatialdata", "anndata", "scanpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def fit_config(settings: dict, *, window: int, **overrides) -> FitConfig:
    """The network and training settings of a variant (``VARIANTS[name]``, overrides applied) as a FitConfig."""
    return FitConfig(
        use_context=settings["use_context"],
        epochs=settings["epochs"],
        window=window,
        stride=min(settings["stride"], window),
        context_dropout=settings["context_dropout"],
        nonlinear=settings["nonlinear"],
        carry_context=settings["carry_context"],
        context_skip=settings["context_skip"],
        fusion_dropout=settings["fusion_dropout"],
        hidden=tuple(settings["hidden"]),
        **overrides,
    )


def _plain(value):
    """Something AnnData can write: nested dicts of strings, numbers and arrays; None becomes 'None'."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=object) if value else np.array([], dtype=str)
        return np.asarray(value)
    if value is None:
        return "None"
    if isinstance(value, np.generic):
        return value.item()
    return value
