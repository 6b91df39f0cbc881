"""``HistexModel``: a HISTEX ensemble you fit on sections, keep on disk, and apply to new sections."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from histex import _sdata, geometry
from histex._backing import wants_store
from histex._docs import shared_docs
from histex._validation import check_bool, check_choice, check_genes, check_int, check_number
from histex.model import Problem, TargetScaler, context_points, readout, trust
from histex.model.checkpoint import Checkpoint
from histex.model.ensemble import Ensemble, compute_dtype
from histex.model.features import fit_scaling, tissue_moments, tokens
from histex.model.fit import FitConfig, bins_per_spot, default_batch_size, embedding_dim, resolve_device, train
from histex.model.matching import ShapeChoice, SpotMatch, disk_incidence, spot_consistency
from histex.model.predict import predict, predict_spots
from histex.model.settings import PRESETS, HistexSettings
from histex.tl import _trained as model_folder
from histex.tl._bins_output import BinsOutput, check_output_keys, plain, versions
from histex.tl._sections import (
    SectionInputs,
    dense_counts,
    has_spots,
    log_section,
    missing_genes,
    read_inputs,
    select_genes,
)
from histex.tl._trained import Trained, check_features, check_same_encoder, encoder_record

logger = logging.getLogger(__name__)


class HistexModel:
    """A HISTEX model: fit it on one or several sections, save it, load it, and predict new sections.

    The model owns the ensemble, the genes, the scaling of the counts and of the image features, and a record of the
    encoder and the sections it was trained on. :func:`histex.tl.super_resolve` is this model fitted on one section
    and predicting the same section.

    Parameters
    ----------
    variant
        ``"histex"`` (default), ``"image_only"`` (the iStar design) or ``"paper"`` (the published settings): a
        preset of :class:`~histex.model.settings.HistexSettings`.
    settings
        Settings to start from instead of the variant's preset.
    **overrides
        Fields of :class:`~histex.model.settings.HistexSettings` to change (``epochs=``, ``n_states=``, ...).

    Examples
    --------
    >>> model = hx.HistexModel(epochs=60).fit([sdata_a, sdata_b])  # doctest: +SKIP
    >>> model.save("model/")  # doctest: +SKIP
    >>> hx.HistexModel.load("model/").predict(sdata_new)  # doctest: +SKIP
    """

    def __init__(self, variant: str = "histex", *, settings: HistexSettings | None = None, **overrides):
        check_choice("variant", variant, PRESETS)
        if settings is None:
            settings = HistexSettings.preset(variant, **overrides)
        elif overrides:
            settings = settings.replace(**{k: v for k, v in overrides.items() if v is not None})
        self.variant = variant
        self.settings = settings
        self.timings: dict[str, float] = {}
        self._trained: Trained | None = None

    # --- what it is ---------------------------------------------------------------------------------------------

    @property
    def is_trained(self) -> bool:
        """Whether the model has been fitted or loaded."""
        return self._trained is not None

    @property
    def genes(self) -> list[str]:
        """The genes the model predicts, in the order of its output tables' ``var_names``."""
        return list(self._need_trained().genes)

    @property
    def encoder(self) -> dict:
        """What :func:`histex.pp.extract_features` recorded of the features the model was trained on (``model``,
        ``weights_digest``, ``bin_size_um``, ...): a section to predict needs features extracted the same way.
        """
        return dict(self._need_trained().encoder or {})

    @property
    def history(self):
        """The training loss per state and epoch (and on held-out spots), as a :class:`pandas.DataFrame`:
        columns ``state``, ``epoch``, ``loss``, ``validation``.
        """
        import pandas as pd

        h = self._need_trained().history
        n_states, epochs = h.loss.shape
        return pd.DataFrame(
            {
                "state": np.repeat(np.arange(n_states), epochs),
                "epoch": np.tile(np.arange(1, epochs + 1), n_states),
                "loss": h.loss.ravel(),
                "validation": h.validation.ravel() if h.validation.size else np.full(h.loss.size, np.nan),
            }
        )

    def __repr__(self) -> str:
        head = (
            f"HistexModel(variant={self.variant!r}, n_states={self.settings.n_states}, epochs={self.settings.epochs})"
        )
        if self._trained is None:
            return f"{head}: not trained"
        t = self._trained
        sections = t.data["sections"]
        names = ", ".join(f"{s['name']} ({s['n_spots']} spots)" for s in sections)
        encoder = (t.encoder or {}).get("model", "unknown encoder")
        return (
            f"{head}: trained on {len(sections)} section(s): {names}; {len(t.genes)} genes, "
            f"{len(t.feature_channels)} {encoder} features on {t.bin_size_um:g} µm bins, "
            f"{t.history.epochs} epochs"
        )

    # --- fitting ------------------------------------------------------------------------------------------------

    @shared_docs
    def fit(
        self,
        sdata,
        *,
        genes: Sequence[str] | None = None,
        n_top_genes: int = 1000,
        layer: str | None = None,
        image_key: str | None = None,
        spots_key: str | None = None,
        table_key: str | None = None,
        features_key: str | None = None,
        coordinate_system: str | None = None,
        mpp: float | None = None,
        bin_size_um: float = 8.0,
        spot_diameter_um: float = geometry.VISIUM_SPOT_DIAMETER_UM,
        device: str | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 5,
        show_progress: bool = True,
    ) -> HistexModel:
        """Train the ensemble on the spots of one section or several.

        Batches mix the spots of all sections; the genes are shared by all of them; the image features of all are
        standardised with the statistics of all together (``feature_scaling="global"``, the default), or each
        section's with its own (``"section"``).

        Parameters
        ----------
        sdata
            A :class:`spatialdata.SpatialData`, or a list of them, each with spots, their counts and image
            features from :func:`histex.pp.extract_features` (the same encoder and bin size for all).
        {genes}
        {layer}
        {section_keys}
        {mpp}
        {bin_size_um}
        {spot_diameter_um}
        {device}
        checkpoint_dir
            Save the training state there every ``checkpoint_every`` epochs (atomically); a fit that finds a
            checkpoint of the same data and settings there resumes from it, and ends with the weights an
            uninterrupted fit would have had.
        checkpoint_every
            Epochs between checkpoints.
        {show_progress}

        Returns
        -------
        The model, trained.
        """
        self._fit(
            _as_list(sdata),
            genes=genes,
            n_top_genes=n_top_genes,
            layer=layer,
            image_key=image_key,
            spots_key=spots_key,
            table_key=table_key,
            features_key=features_key,
            coordinate_system=coordinate_system,
            mpp=mpp,
            bin_size_um=bin_size_um,
            spot_diameter_um=spot_diameter_um,
            device=device,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            show_progress=show_progress,
        )
        return self

    def fine_tune(
        self,
        sdata,
        *,
        epochs: int = 5,
        lr: float | None = None,
        layer: str | None = None,
        image_key: str | None = None,
        spots_key: str | None = None,
        table_key: str | None = None,
        features_key: str | None = None,
        coordinate_system: str | None = None,
        mpp: float | None = None,
        device: str | None = None,
        show_progress: bool = True,
    ) -> HistexModel:
        """Train the fused ensemble a few more epochs on the spots of a new section (in place), before predicting it.

        The genes, the count scaling and the feature scaling stay the model's: the section is read as
        :meth:`predict` reads it. The image-only states (``he_only="image_states"``) are left as they are.

        Parameters
        ----------
        sdata
            A section with spots (counts of the model's genes) and features of the model's encoder.
        epochs
            Passes over the section's spots.
        lr
            Learning rate; default the model's.
        layer, image_key, spots_key, table_key, features_key, coordinate_system, mpp
            As for :meth:`predict`.
        device
            Where to train; default where the model is.
        show_progress
            Show a progress bar.

        Returns
        -------
        The model, fine-tuned; ``data["fine_tuned"]`` of the manifest lists the sections and epochs.
        """
        trained = self._need_trained()
        epochs = check_int("epochs", epochs)
        lr = check_number("lr", lr, minimum=0, above=True, none_ok=True)
        torch_device = resolve_device(device) if device is not None else trained.ensemble.device
        inputs = self._read_section(
            sdata, use_spots=True, image_key=image_key, spots_key=spots_key, table_key=table_key,
            features_key=features_key, coordinate_system=coordinate_system, mpp=mpp,
        )  # fmt: skip
        problem = self._problem(inputs, self._spot_counts(inputs, self._layer(layer)))
        config = self._config(trained.window, torch_device, show_progress)
        config = replace(config, epochs=int(epochs), lr=lr or config.lr, holdout=0.0)
        _, history = train([problem], config, init=trained.ensemble)
        trained.ensemble.eval()
        tuned = trained.data.setdefault("fine_tuned", [])
        tuned.append({"name": inputs.name, "epochs": int(epochs), "loss": history.loss[:, -1].tolist()})
        return self

    def fit_predict(
        self,
        sdata,
        *,
        key_added: str = "histex",
        to_store: bool | None = None,
        device: str | None = None,
        show_progress: bool = True,
        **fit_args,
    ) -> str:
        """Fit on one section and predict its bins, reading and preparing the section once
        (:func:`histex.tl.super_resolve`). ``fit_args`` are those of :meth:`fit`; returns ``key_added``.
        """
        check_output_keys(sdata, key_added)
        to_store = wants_store(sdata, to_store)
        timer, (inputs,), (problem,) = self._fit([sdata], device=device, show_progress=show_progress, **fit_args)
        network = self._network_for(True, resolve_device(device), show_progress)
        counts = self._spot_counts(inputs, self._layer(None))
        return self._write(
            sdata, inputs, problem, network, key_added=key_added, to_store=to_store, timer=timer, counts=counts,
            match=self.settings.match_spots,
        )  # fmt: skip

    def _fit(
        self,
        sections: list,
        *,
        genes=None,
        n_top_genes: int = 1000,
        layer: str | None = None,
        bin_size_um: float = 8.0,
        spot_diameter_um: float = geometry.VISIUM_SPOT_DIAMETER_UM,
        device=None,
        checkpoint_dir=None,
        checkpoint_every: int = 5,
        show_progress: bool = True,
        **keys,
    ) -> tuple[_Timer, list[SectionInputs], list[Problem]]:
        """Read the sections, train, and keep what prediction needs; the sections as read and their problems
        are returned for a prediction of the same section (:meth:`fit_predict`).
        """
        genes = check_genes(genes)
        n_top_genes = check_int("n_top_genes", n_top_genes)
        bin_size_um = check_number("bin_size_um", bin_size_um, minimum=0, above=True)
        spot_diameter_um = check_number("spot_diameter_um", spot_diameter_um, minimum=0, above=True)
        checkpoint_every = check_int("checkpoint_every", checkpoint_every)
        check_bool("show_progress", show_progress)
        check_number("mpp", keys.get("mpp"), minimum=0, above=True, none_ok=True)
        torch_device = resolve_device(device)
        compute_dtype(self.settings.precision, torch_device)  # refuses a precision the device cannot train in
        checkpoint = Checkpoint(checkpoint_dir, checkpoint_every) if checkpoint_dir is not None else None
        timer = _Timer()
        inputs = [read_inputs(s, use_spots=True, bin_size_um=bin_size_um, **keys) for s in sections]
        for i in inputs:
            _sdata.check_spot_radius(i.spots, i.mpp, spot_diameter_um)
        counts, gene_names = select_genes(
            [i.spots.table for i in inputs], layer=layer, genes=genes, n_top_genes=n_top_genes
        )
        for i in inputs:
            log_section(i, len(gene_names))
        timer.lap("inputs")

        check_same_encoder(inputs)
        s = self.settings
        scaler = TargetScaler.fit(np.concatenate(counts), s.targets)
        targets = [scaler.transform(c) for c in counts]
        contexts = [
            context_points(i.spot_rc, y, pitch=i.pitch_px / i.grid.bin_px) if s.use_context else None
            for i, y in zip(inputs, targets, strict=True)
        ]
        timer.lap("context")
        pairs = [(i.features.data, i.features.tissue) for i in inputs]
        moments = [tissue_moments(f, t) for f, t in pairs]
        scaling = fit_scaling(
            pairs,
            per_section=s.feature_scaling == "section",
            n_components=s.feature_components,
            positions=s.positions,
            moments=moments,
        )
        radius_bins = spot_diameter_um / 2 / bin_size_um
        problems = [
            Problem(tokens(f, t, scaling, moments=m), t, i.spot_rc, radius_bins, y, ctx)
            for (f, t), m, i, y, ctx in zip(pairs, moments, inputs, targets, contexts, strict=True)
        ]
        timer.lap("prepare")

        window = geometry.window_size(radius_bins)
        config = self._config(window, torch_device, show_progress)
        ensemble, history = train(problems, config, checkpoint=checkpoint)
        image_ensemble = None
        if s.use_context and s.he_only == "image_states":
            image_config = s.image_only().fit_config(window=window, device=torch_device, show_progress=show_progress)
            if checkpoint is not None:
                checkpoint = Checkpoint(checkpoint.folder / "image_states", checkpoint.every)
            image_ensemble, _ = train(problems, image_config, checkpoint=checkpoint)
        n_spots = [len(p.targets) for p in problems]
        # the genes' dispersion on the training spots: the intervals of sections predicted without spots
        dispersion = np.average(
            [trust.spot_dispersion(c, i.spot_rc) for c, i in zip(counts, inputs, strict=True)], axis=0, weights=n_spots
        )
        self._trained = Trained(
            ensemble=ensemble,
            history=history,
            image_ensemble=image_ensemble,
            scaler=scaler,
            scaling=scaling,
            genes=list(gene_names),
            feature_channels=list(inputs[0].features.names),
            encoder=encoder_record(inputs[0]),
            bin_size_um=float(bin_size_um),
            spot_diameter_um=float(spot_diameter_um),
            window=window,
            bins_per_spot=float(np.average([bins_per_spot(p, window) for p in problems], weights=n_spots)),
            dispersion=dispersion,
            data={
                "layer": layer or "X",
                "genes_given": genes is not None,
                "n_top_genes": n_top_genes,
                "sections": [i.describe() for i in inputs],
            },
            batch_size=config.batch_size or default_batch_size(sum(n_spots)),
            device=str(torch_device),
        )
        timer.lap("train")
        self.timings = dict(timer.timings)
        return timer, inputs, problems

    def _config(self, window: int, device, show_progress: bool) -> FitConfig:
        return self.settings.fit_config(window=window, device=device, show_progress=show_progress)

    # --- predicting ---------------------------------------------------------------------------------------------

    @shared_docs
    def predict(
        self,
        sdata,
        *,
        key_added: str = "histex",
        use_spots: bool | str = "auto",
        refit_readout: bool | None = None,
        match_spots: bool | None = None,
        match_shapes: bool | None = None,
        to_store: bool | None = None,
        layer: str | None = None,
        image_key: str | None = None,
        spots_key: str | None = None,
        table_key: str | None = None,
        features_key: str | None = None,
        coordinate_system: str | None = None,
        mpp: float | None = None,
        device: str | None = None,
        show_progress: bool = True,
    ) -> str:
        """Predict the 8 µm bins of a section, with its own spots as context or from its image alone.

        No retraining: the section's features are standardised as the model's settings say (with the training
        sections' statistics by default), and its spots, if used, are scaled as the training counts were. With its
        spots, the network's output layer is by default refitted to them in closed form (``refit_readout``).

        Parameters
        ----------
        sdata
            A :class:`spatialdata.SpatialData` with the H&E image and its features from
            :func:`histex.pp.extract_features` (same encoder, weights and bin size as the model's), and optionally
            spots with counts of the model's genes.
        {key_added}
        use_spots
            ``"auto"``: the section's spots when it has them and their table has the model's genes; ``True``: they
            must be there; ``False``: predict from the image alone (an H&E-only slide).
        refit_readout
            Refit each network's linear output layer to the section's spots before predicting it: ridge regression
            of the spots' residuals on the network's last hidden layer, shrunk towards the trained layer, its
            penalty chosen by generalised cross-validation (``histex.model.refit_readout``); under a second, every
            other weight kept, the model itself unchanged. It maps the genes of a cell type that the training
            sections barely had where the hidden layers tell that cell type apart. ``None``: when the spots are used
            and the section is not one the model was fitted on. The table's ``uns["histex"]["model"]["readout"]``
            says how the layer was refitted (or ``"trained"``).
        match_spots
            Match the predicted bins to the section's spots, gene by gene (see
            :func:`histex.tl.super_resolve`); ``None``: the model's setting (``settings.match_spots``). Only
            with the spots.
        match_shapes
            Before matching, give each gene the shape within a spot that best predicts the spots it did not see
            (:class:`histex.model.matching.ShapeChoice`); ``None``: the model's setting
            (``settings.match_shapes``). The table's ``var["shape_own"]`` and ``var["shape_shared"]`` give each
            gene's weights of its own predicted pattern and of the pattern all genes share (the rest: none).
        to_store
            Write into ``sdata``'s zarr store chunk by chunk (``None``: when ``sdata`` is backed).
        layer
            Layer of the spot table; default the one the model was fitted on.
        {section_keys}
        mpp
            Microns per pixel; by default from the spot lattice, or (without spots) the features' record.
        device
            Where to run; default where the model is.
        show_progress
            Show a progress bar.

        Returns
        -------
        str
            ``key_added``. ``sdata`` gains ``shapes[f"{key_added}_bins"]`` and ``tables[key_added]``, as
            :func:`histex.tl.super_resolve` writes them; ``uns["histex"]["params"]["use_spots"]`` says whether
            the spots were used.
        """
        trained = self._need_trained()
        check_choice("use_spots", use_spots, ("auto", True, False))
        for name, value in (("refit_readout", refit_readout), ("match_spots", match_spots),
                            ("match_shapes", match_shapes)):  # fmt: skip
            check_bool(name, value, none_ok=True)
        check_bool("show_progress", show_progress)
        check_number("mpp", mpp, minimum=0, above=True, none_ok=True)
        check_output_keys(sdata, key_added)
        to_store = wants_store(sdata, to_store)
        torch_device = resolve_device(device) if device is not None else trained.ensemble.device
        timer = _Timer()
        layer = self._layer(layer)
        if use_spots == "auto":
            use_spots = has_spots(sdata, spots_key, table_key, trained.genes, layer)
        if refit_readout and not use_spots:
            raise ValueError("refit_readout=True needs the section's spots; it cannot be used with use_spots=False.")
        network = self._network_for(use_spots, torch_device, show_progress)  # refuses before any work
        inputs = self._read_section(
            sdata, use_spots=use_spots, image_key=image_key, spots_key=spots_key, table_key=table_key,
            features_key=features_key, coordinate_system=coordinate_system, mpp=mpp,
        )  # fmt: skip
        counts = self._spot_counts(inputs, layer) if use_spots else None
        if refit_readout is None:
            refit_readout = bool(use_spots) and inputs.describe() not in trained.data["sections"]
        log_section(inputs, len(trained.genes))
        timer.lap("inputs")
        problem = self._problem(inputs, counts)
        timer.lap("prepare")
        if refit_readout:
            refitted, fit = readout.refit_readout(network.ensemble, problem, network.config)
            network = network._replace(ensemble=refitted, readout=fit.summary())
            timer.lap("readout")
        match = self.settings.match_spots if match_spots is None else bool(match_spots)
        return self._write(
            sdata, inputs, problem, network, key_added=key_added, to_store=to_store, timer=timer, counts=counts,
            match=match, shapes=match_shapes,
        )  # fmt: skip

    def _read_section(self, sdata, *, use_spots: bool, **keys) -> SectionInputs:
        """A new section, read on the model's bin size and checked against the model's features."""
        inputs = read_inputs(sdata, use_spots=use_spots, bin_size_um=self._trained.bin_size_um, **keys)
        check_features(self._trained, inputs)
        return inputs

    def _layer(self, layer: str | None) -> str | None:
        """The spot layer to read: the one given, else the one the model was fitted on (``None`` for ``X``)."""
        if layer is not None:
            return layer
        fitted = self._trained.data["layer"]
        return None if fitted in (None, "X") else fitted

    def _spot_counts(self, inputs: SectionInputs, layer: str | None) -> np.ndarray:
        genes = self._trained.genes
        missing = missing_genes(inputs.spots.table, genes)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(
                f"The spot table {inputs.table_key!r} lacks {len(missing)} of the model's {len(genes)} genes "
                f"({shown}); use_spots=False predicts from the image alone."
            )
        return dense_counts(inputs.spots.table, genes, layer)

    def _problem(self, inputs: SectionInputs, counts: np.ndarray | None) -> Problem:
        """A section to predict: its tokens, and its spots as context when there are counts."""
        t, s = self._trained, self.settings
        feats = inputs.features
        n_genes = len(t.genes)
        if counts is None:
            spot_rc, y, context = np.zeros((0, 2)), np.zeros((0, n_genes), dtype=np.float32), None
        else:
            spot_rc, y = inputs.spot_rc, t.scaler.transform(counts)
            context = context_points(spot_rc, y, pitch=inputs.pitch_px / inputs.grid.bin_px) if s.use_context else None
        return Problem(
            features=tokens(feats.data, feats.tissue, t.scaling),
            tissue=feats.tissue,
            spot_rc=spot_rc,
            radius_bins=t.spot_diameter_um / 2 / t.bin_size_um,
            targets=y,
            context=context,
        )

    def _network_for(self, use_spots: bool, device, show_progress: bool) -> _Network:
        """The ensemble and settings that predict a section with or without its spots, and how (for ``uns``)."""
        t, s = self._trained, self.settings
        if not s.use_context:
            how = "image_only"
        elif use_spots:
            how = "spots"
        elif s.he_only == "image_states":
            config = s.image_only().fit_config(window=t.window, device=device, show_progress=show_progress)
            return _Network(t.image_ensemble.to(device), config, "image_states", False)
        elif s.he_only == "withheld":
            how = "withheld"
        else:
            raise ValueError(
                "This model was trained with he_only='none' and cannot predict a section without spots. Fit one "
                "with HistexModel(he_only='image_states') (the default), or predict a section with spots "
                "(use_spots=True)."
            )
        config = self._config(t.window, device, show_progress)
        return _Network(t.ensemble.to(device), config, how, bool(use_spots))

    def _write(
        self, sdata, inputs, problem, network, *, key_added, to_store, timer, counts=None, match=False, shapes=None
    ) -> str:
        """Predict the section into its output. ``counts`` (the spots' measured counts, when the spots are used) fit
        the genes' dispersion and check the network; with ``match`` they set the bins' level, each gene's shape first
        chosen on the spots with ``shapes`` (default: the settings).
        """
        t = self._trained
        counts = counts if network.use_spots else None
        ensemble, config = network.ensemble, network.config
        per_spot = bins_per_spot(problem, t.window) if len(problem.spot_rc) else t.bins_per_spot
        tissue_rows, tissue_cols = np.nonzero(problem.tissue)
        output = BinsOutput(
            sdata,
            key_added,
            inputs.grid,
            tissue_rows,
            tissue_cols,
            transformations=inputs.transformations,
            gene_names=t.genes,
            embedding_dim=embedding_dim(config, with_context=problem.context is not None),
            to_store=to_store,
            interval=trust.interval_layers(trust.LEVEL),
        )
        timer.lap("write")
        try:
            # Into the output's arrays block by block (in memory, or the store's chunks): the slide's predictions
            # exist once. Nothing shows in sdata until finish(); a failure removes what was staged in the store.
            to_counts = t.scaler.block_to_counts_per_bin(per_spot)
            spot_match = choice = None
            bin_rc = np.column_stack([tissue_rows, tissue_cols])
            if counts is not None and match:
                if self.settings.match_shapes if shapes is None else bool(shapes):
                    choice = self._shapes(ensemble, problem, config, counts, per_spot)
                    timer.lap("shapes")
                # in counts, as the blocks come: each disk's bins sum to what its spot measured
                spot_match = SpotMatch(problem.spot_rc, problem.radius_bins, counts, bin_rc)
            bin_trust = self._trust(problem, counts, bin_rc, summed=spot_match is None)
            transform = to_counts if choice is None else _then(to_counts, choice)
            predict(
                ensemble, problem, config, transform=transform, out=output.open(), match=spot_match, trust=bin_trust
            )
            consistency = None
            if counts is not None:
                # how well the network alone explained each gene's spots (before they set its level, if matched)
                if spot_match is None:
                    consistency = spot_consistency(bin_trust.disk_sums, counts)
                else:  # the spots it matched to (a spot without bins under its disk has no sum)
                    consistency = spot_consistency(spot_match.sums, spot_match.measured)
                output.var["spot_consistency"] = consistency.astype(np.float32)
            trust_meta = self._reliability(output.var, bin_trust, consistency, dispersion_from_spots=counts is not None)
            if choice is not None:
                output.var["shape_own"] = (1.0 - choice.shared - choice.flat).astype(np.float32)
                output.var["shape_shared"] = choice.shared.astype(np.float32)
            timer.lap("predict")
            output.write_bins()
            timer.lap("write")
            meta = self._meta(inputs, problem, network, per_spot, to_store=to_store)
            meta["params"]["match_spots"] = spot_match is not None  # what was done, not only what the settings say
            meta["params"]["match_shapes"] = choice is not None
            meta["trust"] = trust_meta
            meta["timings"] = dict(timer.timings)
            output.finish(plain(meta))
        except BaseException:
            output.abort()
            raise
        logger.info("Wrote shapes %r and table %r (%d bins x %d genes).", output.bins_key, key_added, *output.shape)
        return key_added

    def _trust(self, problem, counts, bin_rc, *, summed: bool) -> trust.BinTrust:
        """The intervals' and reliability's accumulator: the genes' dispersion from the section's spots when it has
        them, else the training spots'; with ``summed``, the final prediction summed over the spots' disks.
        """
        began = time.perf_counter()
        if counts is None:
            return trust.BinTrust(self._trained.dispersion, seed=self.settings.seed)
        dispersion = trust.spot_dispersion(counts, problem.spot_rc)
        incidence = disk_incidence(problem.spot_rc, problem.radius_bins, bin_rc) if summed else None
        bin_trust = trust.BinTrust(dispersion, incidence=incidence, seed=self.settings.seed)
        bin_trust.seconds += time.perf_counter() - began
        return bin_trust

    @staticmethod
    def _reliability(var, bin_trust: trust.BinTrust, consistency, *, dispersion_from_spots: bool) -> dict:
        """Write the genes' dispersion, expected Pearson, reliability and flag to ``var``; return ``uns``'s record."""
        began = time.perf_counter()
        expected = bin_trust.expected_pearson()
        reliability = trust.reliability(expected, consistency)
        var["dispersion"] = bin_trust.dispersion.astype(np.float32)
        var["expected_pearson"] = expected.astype(np.float32)
        var["reliability"] = reliability.astype(np.float32)
        var["reliable"] = reliability >= trust.RELIABLE
        seconds = bin_trust.seconds + time.perf_counter() - began
        return {
            "level": bin_trust.level,
            "interval_layers": list(trust.interval_layers(bin_trust.level)),
            "reliable_threshold": trust.RELIABLE,
            "dispersion": "section spots" if dispersion_from_spots else "training spots",
            "checked_on_spots": consistency is not None,
            "seconds": seconds,
        }

    def _shapes(self, ensemble, problem, config, counts, per_spot) -> ShapeChoice:
        """Each gene's shape within a spot, chosen on the spots' windows predicted as at training."""
        to_counts = self._trained.scaler.to_counts_per_bin
        windows = ((to_counts(pred, per_spot), in_disk) for pred, in_disk in predict_spots(ensemble, problem, config))
        return ShapeChoice.fit(windows, counts, problem.spot_rc, per_spot)

    def _meta(self, inputs, problem, network: _Network, per_spot, *, to_store) -> dict:
        """``uns["histex"]`` of a predicted table: the settings, the section, the network and the training."""
        t, config = self._trained, network.config
        params = {
            "variant": self.variant,
            **self.settings.to_dict(),
            "epochs_run": t.history.epochs,
            "bin_size_um": t.bin_size_um,
            "window": t.window,
            "device": str(config.device),
            "batch_size": t.batch_size,
            "genes_given": t.data["genes_given"],
            "n_top_genes": t.data["n_top_genes"],
            "layer": t.data["layer"],
            "to_store": to_store,
            "use_spots": network.use_spots,
            "refit_readout": network.readout is not None,
        }
        spots = inputs.spots
        data = {
            "image_key": inputs.image_key,
            "spots_key": inputs.spots_key,
            "table_key": inputs.table_key,
            "features_key": inputs.features_key,
            "feature_channels": list(inputs.features.names),
            "coordinate_system": inputs.coordinate_system,
            "mpp": inputs.mpp,
            "mpp_source": inputs.mpp_source,
            "spot_diameter_um": t.spot_diameter_um,
            "circle_diameter_um": None if spots is None else 2 * spots.radius_px * inputs.mpp,
            "radius_bins": problem.radius_bins,
            "n_spots": len(problem.spot_rc),
            "grid_shape": list(inputs.grid.shape),
            "bin_px": inputs.grid.bin_px,
            "bins_per_spot": per_spot,
        }
        architecture = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(replace(config, device=None)).items()
        }
        return {
            "params": params,
            "data": data,
            "network": {k: v for k, v in architecture.items() if v is not None},
            "versions": versions(),
            "history": {"loss": t.history.loss, "validation": t.history.validation, "best_epoch": t.history.best_epoch},
            "model": {
                "he_only": self.settings.he_only,
                "prediction": network.how,
                "readout": network.readout or "trained",
                "trained_on": [s["name"] for s in t.data["sections"]],
                "n_training_spots": [s["n_spots"] for s in t.data["sections"]],
                "encoder": t.encoder or {},
            },
        }

    # --- keeping ------------------------------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the trained model to the folder ``path``: the weights of every state as safetensors and a JSON
        manifest (settings, genes, scalings, encoder, what it was trained on, history).

        The folder is written under a temporary name and renamed when complete: it is there whole or not at all.
        An existing folder is replaced only with ``overwrite=True``.
        """
        path = model_folder.save(self._need_trained(), self.variant, self.settings, path, overwrite=overwrite)
        logger.info("Saved the model to %s.", path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> HistexModel:
        """Load a model saved with :meth:`save`, onto ``device`` (``None``: cuda, then mps, then cpu).

        The files are checked against the manifest's checksums and nothing is unpickled; a folder of a newer
        schema than this histex reads is refused with the version to upgrade to.
        """
        variant, settings, trained = model_folder.load(path, device)
        model = cls(variant, settings=settings)
        model._trained = trained
        logger.info("Loaded %r.", model)
        return model

    def _need_trained(self) -> Trained:
        if self._trained is None:
            raise RuntimeError("The model is not trained: call model.fit(sdata) first, or HistexModel.load(path).")
        return self._trained


class _Network(NamedTuple):
    """What predicts a section: the ensemble, its settings, how (``uns["histex"]["model"]["prediction"]``)."""

    ensemble: Ensemble
    config: FitConfig
    how: str
    use_spots: bool
    readout: dict | None = None  # how the output layer was refitted to the section's spots (refit_readout)


class _Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(self.timings.get(stage, 0.0) + now - self._clock, 3)
        self._clock = now


def _then(first, second):
    """The block transform ``second(*first(mean, spread))``."""
    return lambda mean, spread: second(*first(mean, spread))


def _as_list(sdata) -> list:
    sections = list(sdata) if isinstance(sdata, list | tuple) else [sdata]
    if not sections:
        raise ValueError("fit needs at least one SpatialData; got an empty list.")
    return sections
