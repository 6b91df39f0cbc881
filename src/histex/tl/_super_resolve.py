"""``super_resolve``: fit HISTEX on a section's spots and predict its 8 µm bins, in one call."""

from __future__ import annotations

from histex import geometry
from histex._docs import shared_docs
from histex.model.settings import PRESETS

#: What each variant sets (presets of :class:`histex.model.settings.HistexSettings`); kept under this name for
#: existing code.
VARIANTS = PRESETS


@shared_docs
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
    match_spots: bool | None = None,
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

    This is a :class:`histex.HistexModel` fitted on the section and predicting it, then discarded; to keep the
    model, apply it to other sections or H&E-only slides, or resume a long fit, use that class.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` in the layout of :func:`spatialdata_io.visium`, with features from
        :func:`histex.pp.extract_features`.
    {section_keys}
    {layer}
    {genes}
    {bin_size_um}
    {mpp}
    {spot_diameter_um}
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
        otherwise (many more over-fit a section of a few hundred spots).
    holdout
        ``0`` (default): every state trains on every spot for ``epochs`` epochs. Above 0, the stopping rule: each
        ensemble state holds out this share of the spots (a different share for each state, so that the ensemble
        learns from all of them), keeps the parameters of the epoch with the lowest loss on them, and training
        stops once no state has improved for ``patience`` epochs. It costs accuracy at 8 µm (the benchmark page
        gives the figures): the loss on held-out spots stops falling before the 8 µm maps stop improving, and each
        state learns from fewer spots.
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
    {device}
    {precision}
    feature_components
        Project the standardised image features onto this many principal axes, fitted on the tissue bins, before
        training (a UNI map of 1,024 channels is four times smaller at 256). ``None`` keeps every channel.
    match_spots
        Rescale the predictions, gene by gene, so that the bins of each spot's disk sum to what the spot measured,
        with the ratios interpolated between the spots (see the method page). ``None``: the variant's setting,
        on for ``"histex"``, off for ``"image_only"`` and ``"paper"``. ``var["spot_consistency"]`` then gives,
        per gene, how well the network alone explained the spots (Pearson over spots).
    seed
        Seed of the first ensemble state (state ``i`` uses ``seed + i``). Same seed, same result on the same
        device and precision.
    {key_added}
    to_store
        Write the output into ``sdata``'s zarr store as it is computed, the predictions chunk by chunk, so that a
        whole slide's bins x genes never sit in memory: ``X``, ``layers["ensemble_sd"]`` and ``obsm["X_histex"]`` are then
        dask arrays read from the store. ``None`` (default): when ``sdata`` is backed (written with
        :meth:`~spatialdata.SpatialData.write` or read with :func:`spatialdata.read_zarr`). ``False`` keeps
        everything in memory.
    {show_progress}

    Returns
    -------
    str
        The key of the new table, ``key_added``. ``sdata`` gains two elements:

        * ``shapes[f"{key_added}_bins"]``: one square polygon per in-tissue bin, in the image's coordinate systems;
        * ``tables[key_added]``: bins x genes; ``X`` predicted counts per bin (float32), ``layers["ensemble_sd"]`` the
          ensemble spread, ``obs["array_row"]`` and ``obs["array_col"]`` (for :func:`spatialdata.rasterize_bins`),
          ``obsm["spatial"]`` bin centres in image pixels, ``obsm["X_histex"]`` the fused embedding, and
          ``uns["histex"]`` the parameters, versions, training history and timings.

    Input elements are not modified; if the call fails, nothing is written (in memory or in the store).
    """
    from histex.tl._model import HistexModel

    model = HistexModel(
        variant,
        epochs=epochs,
        stride=stride,
        context_dropout=context_dropout,
        targets=targets,
        holdout=holdout,
        patience=patience,
        n_states=n_states,
        batch_size=batch_size,
        lr=lr,
        k_context=k_context,
        precision=precision,
        feature_components=feature_components,
        match_spots=match_spots,
        seed=seed,
        he_only="none",  # it predicts the section it learned from, with its spots
    )
    return model.fit_predict(
        sdata,
        key_added=key_added,
        to_store=to_store,
        device=device,
        show_progress=show_progress,
        image_key=image_key,
        spots_key=spots_key,
        table_key=table_key,
        features_key=features_key,
        coordinate_system=coordinate_system,
        mpp=mpp,
        layer=layer,
        genes=genes,
        n_top_genes=n_top_genes,
        bin_size_um=bin_size_um,
        spot_diameter_um=spot_diameter_um,
    )
