"""What a fitted HistexModel holds, the encoder it expects, and how it goes to and comes from a model folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histex.model import TargetScaler
from histex.model.ensemble import Ensemble
from histex.model.features import FeatureScaling
from histex.model.fit import History, build_network, resolve_device
from histex.model.io import read_model, write_model
from histex.model.settings import HistexSettings
from histex.tl._bins_output import versions
from histex.tl._sections import SectionInputs

#: What must agree between the features a model was trained on and those of a section it predicts.
ENCODER_KEYS = ("model", "weights_digest", "bin_size_um")


@dataclass
class Trained:
    """Everything a fit leaves that prediction needs, and what it was fitted on."""

    ensemble: Ensemble
    history: History
    image_ensemble: Ensemble | None  # he_only="image_states": the image-only states for slides without spots
    scaler: TargetScaler
    scaling: FeatureScaling
    genes: list[str]
    feature_channels: list[str]
    encoder: dict | None
    bin_size_um: float
    spot_diameter_um: float
    window: int
    bins_per_spot: float  # over the training spots: the divisor for sections without spots
    dispersion: np.ndarray  # per gene, on the training spots (histex.model.trust.spot_dispersion)
    data: dict  # layer, genes_given, n_top_genes, sections (their description), fine_tuned
    batch_size: int
    device: str

    @property
    def n_features(self) -> int:
        """Width of the network's image tokens."""
        return self.scaling.width(len(self.feature_channels))


# --- the encoder ---------------------------------------------------------------------------------------------------


def encoder_record(inputs: SectionInputs) -> dict | None:
    """What :func:`histex.pp.extract_features` recorded of the encoder of a section's features."""
    enc = inputs.encoder
    if enc is None:
        return None
    keys = ("model", "weights_digest", "mpp", "working_mpp", "bin_size_um", "tile_size", "patch_size", "n_shifts")
    return {k: enc.get(k) for k in keys}


def check_same_encoder(inputs: list[SectionInputs]) -> None:
    """Sections fitted together must have features of one encoder, weights and bin size."""
    first = inputs[0]
    for other in inputs[1:]:
        if list(other.features.names) != list(first.features.names):
            raise ValueError(
                f"Sections {first.name!r} and {other.name!r} have different feature channels; extract the features "
                "of every section with the same model (histex.pp.extract_features(sdata, model=...))."
            )
        a, b = first.encoder or {}, other.encoder or {}
        for key in ENCODER_KEYS:
            if a.get(key) != b.get(key):
                raise ValueError(
                    f"Sections {first.name!r} and {other.name!r} have features of different {key} "
                    f"({a.get(key)!r} vs {b.get(key)!r}); extract them with the same model, weights and bin size."
                )


def check_features(trained: Trained, inputs: SectionInputs) -> None:
    """A section to predict must have features of the model's encoder, weights and bin size."""
    ours, theirs = trained.encoder or {}, inputs.encoder or {}
    for key in ENCODER_KEYS:
        if key in ours and key in theirs and ours[key] != theirs[key]:
            raise ValueError(
                f"The features {inputs.features_key!r} have {key}={theirs[key]!r}, the model's have {ours[key]!r}. "
                f"Extract them as the model's were: histex.pp.extract_features(sdata, model={ours.get('model')!r}, "
                f"weights=..., bin_size_um={ours.get('bin_size_um')})."
            )
    if list(inputs.features.names) != trained.feature_channels:
        raise ValueError(
            f"The features {inputs.features_key!r} have {len(inputs.features.names)} channels, not the model's "
            f"{len(trained.feature_channels)} ({(trained.encoder or {}).get('model', 'unknown encoder')}); extract "
            "them with the model's encoder."
        )


# --- the model folder ----------------------------------------------------------------------------------------------


def save(trained: Trained, variant: str, settings: HistexSettings, path: str | Path, *, overwrite: bool) -> Path:
    """Write the model folder (:mod:`histex.model.io`): the manifest, one safetensors file per state."""
    t = trained
    scaling = t.scaling
    manifest = {
        "histex_version": versions()["histex"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variant": variant,
        "settings": settings.to_dict(),
        "n_states": t.ensemble.n_states,
        "genes": t.genes,
        "n_features": t.n_features,
        "feature_channels": t.feature_channels,
        "targets": {"kind": t.scaler.kind, "low": t.scaler.low.tolist(), "high": t.scaler.high.tolist()},
        "feature_scaling": {
            "mode": "section" if scaling.per_section else "global",
            "positions": scaling.positions,
            "mean": None if scaling.mean is None else scaling.mean.tolist(),
            "scale": None if scaling.scale is None else scaling.scale.tolist(),
            "axes": None if scaling.axes is None else "feature_axes",
        },
        "encoder": t.encoder,
        "bin_size_um": t.bin_size_um,
        "spot_diameter_um": t.spot_diameter_um,
        "window": t.window,
        "bins_per_spot": t.bins_per_spot,
        "dispersion": np.asarray(t.dispersion, float).tolist(),
        "trained_on": t.data,
        "batch_size": t.batch_size,
        "device": t.device,
        "history": {
            "loss": t.history.loss.tolist(),
            "validation": t.history.validation.tolist(),
            "best_epoch": np.asarray(t.history.best_epoch).tolist(),
        },
    }
    arrays = {} if scaling.axes is None else {"feature_axes": scaling.axes}
    weights = {f"state_{i}": state for i, state in enumerate(t.ensemble.state_dicts())}
    if t.image_ensemble is not None:
        weights.update({f"image_state_{i}": state for i, state in enumerate(t.image_ensemble.state_dicts())})
    return write_model(path, manifest, weights, arrays, overwrite=overwrite)


def load(path: str | Path, device: str | None) -> tuple[str, HistexSettings, Trained]:
    """The variant, the settings and the trained state of a model folder, on ``device``."""
    manifest, weights, arrays = read_model(path)
    try:
        settings = HistexSettings.from_dict(manifest["settings"])
        torch_device = resolve_device(device)
        window, n_states = int(manifest["window"]), int(manifest["n_states"])
        n_features, n_genes = int(manifest["n_features"]), len(manifest["genes"])

        def ensemble(config, prefix: str) -> Ensemble:
            template = build_network(config, n_features, n_genes)
            states = [weights[f"{prefix}_{i}"] for i in range(n_states)]
            return Ensemble.from_state_dicts(template, states).to(torch_device)

        image_ensemble = None
        if "image_state_0" in weights:
            image_ensemble = ensemble(settings.image_only().fit_config(window=window), "image_state")
        scaling, history, target = manifest["feature_scaling"], manifest["history"], manifest["targets"]
        trained = Trained(
            ensemble=ensemble(settings.fit_config(window=window), "state"),
            image_ensemble=image_ensemble,
            history=History(
                loss=np.asarray(history["loss"], dtype=np.float32).reshape(n_states, -1),
                validation=np.asarray(history["validation"], dtype=np.float32).reshape(n_states, -1),
                best_epoch=np.asarray(history["best_epoch"], dtype=np.int64),
            ),
            scaler=TargetScaler(
                kind=target["kind"], low=np.asarray(target["low"], float), high=np.asarray(target["high"], float)
            ),
            scaling=FeatureScaling(
                mean=None if scaling["mean"] is None else np.asarray(scaling["mean"], dtype=np.float64),
                scale=None if scaling["scale"] is None else np.asarray(scaling["scale"], dtype=np.float64),
                axes=None if scaling["axes"] is None else arrays[scaling["axes"]],
                positions=bool(scaling["positions"]),
            ),
            genes=[str(g) for g in manifest["genes"]],
            feature_channels=[str(c) for c in manifest["feature_channels"]],
            encoder=manifest["encoder"],
            bin_size_um=float(manifest["bin_size_um"]),
            spot_diameter_um=float(manifest["spot_diameter_um"]),
            window=window,
            bins_per_spot=float(manifest["bins_per_spot"]),
            # models saved before the intervals existed have none: Poisson intervals
            dispersion=np.asarray(manifest.get("dispersion") or np.zeros(n_genes), dtype=np.float64),
            data=manifest["trained_on"],
            batch_size=int(manifest["batch_size"]),
            device=str(manifest["device"]),
        )
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(
            f"The model in {path} does not match its manifest ({type(error).__name__}: {error}); it is damaged or "
            "was not written by HistexModel.save."
        ) from error
    return str(manifest["variant"]), settings, trained
