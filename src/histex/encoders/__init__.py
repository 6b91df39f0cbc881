"""Image encoders: tiles of H&E in, one feature vector per bin out.

``texture`` is weight-free and runs anywhere; the foundation models (:data:`MODELS`) are built with timm and load
their weights from a local file or the Hugging Face cache; any torch module or callable with its patch size plugs
in too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from histex.encoders._base import Encoder
from histex.encoders._registry import MODELS, FoundationModel
from histex.encoders._texture import TextureEncoder
from histex.encoders._torch import IMAGENET_MEAN, IMAGENET_STD, TorchEncoder
from histex.encoders._weights import file_digest

DEFAULT_MODEL = "texture"


def available_models() -> list[str]:
    """Names of the encoders that ``histex.pp.extract_features(model=...)`` accepts.

    Returns
    -------
    list of str
        ``"texture"`` (weight-free) and the foundation models of :data:`MODELS`, sorted.
    """
    return sorted([TextureEncoder.name, *MODELS])


@dataclass
class EncoderPlan:
    """What an encoder will be, known before its weights are loaded: enough to look for cached features."""

    name: str
    digest: str | None
    patch_size: int
    tile_size: int
    margin: int
    build: Callable[[], Encoder]

    @classmethod
    def ready(cls, encoder: Encoder) -> EncoderPlan:
        """The plan of an encoder that already exists."""
        return cls(encoder.name, encoder.digest, encoder.patch_size, encoder.tile_size, encoder.margin, lambda: encoder)


def plan_encoder(
    model: str | FoundationModel | Encoder | torch.nn.Module | Callable,
    *,
    weights: str | Path | None = None,
    patch_size: int | None = None,
    tile_size: int | None = None,
) -> EncoderPlan:
    """Resolve ``model`` to a name, a weights digest and a way to build it (see :func:`get_encoder`)."""
    if isinstance(model, Encoder):
        _no_weights(weights, model.name)
        return EncoderPlan.ready(model)
    if isinstance(model, str) and model == TextureEncoder.name:
        _no_weights(weights, model)
        kwargs = {k: v for k, v in {"patch_size": patch_size, "tile_size": tile_size}.items() if v is not None}
        return EncoderPlan.ready(TextureEncoder(**kwargs))
    if isinstance(model, str) and model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; available models: {', '.join(available_models())}.")
    if isinstance(model, (str, FoundationModel)):
        spec = MODELS[model] if isinstance(model, str) else model
        if patch_size not in (None, spec.patch_size):
            raise ValueError(f"{spec.name} has {spec.patch_size} px patches; patch_size={patch_size} cannot change it.")
        if tile_size is not None:
            spec = _with_tile_size(spec, tile_size)
        path = spec.weights_file(weights)
        digest = file_digest(path)
        return EncoderPlan(
            spec.name, digest, spec.patch_size, spec.tile_size, spec.margin, lambda: spec.encoder(path, digest=digest)
        )
    if callable(model):
        _no_weights(weights, "a torch module")
        if patch_size is None:
            raise ValueError("A torch module or callable as model needs its patch_size (input pixels per token).")
        return EncoderPlan.ready(TorchEncoder(model, patch_size=patch_size, tile_size=tile_size or 224))
    raise TypeError(
        f"model must be a registry name, an Encoder, a torch module or a callable, not {type(model).__name__}."
    )


def _no_weights(weights, what: str) -> None:
    if weights is not None:
        raise ValueError(f"weights= applies to the foundation models ({', '.join(MODELS)}), not to {what}.")


def _with_tile_size(spec: FoundationModel, tile_size: int) -> FoundationModel:
    import dataclasses

    if tile_size % spec.patch_size:
        raise ValueError(f"tile_size ({tile_size}) must be a multiple of {spec.name}'s patch size ({spec.patch_size}).")
    if spec.timm_kwargs.get("dynamic_img_size") is False and tile_size != spec.tile_size:
        raise ValueError(f"{spec.name} takes {spec.tile_size} px tiles only.")
    return dataclasses.replace(spec, tile_size=tile_size)


def get_encoder(
    model: str | FoundationModel | Encoder | torch.nn.Module | Callable = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    patch_size: int | None = None,
    tile_size: int | None = None,
) -> Encoder:
    """An encoder ready to run.

    Parameters
    ----------
    model
        A registry name (:func:`available_models`), a :class:`FoundationModel`, an :class:`Encoder` (returned
        unchanged), or a torch module / callable that maps normalised tiles to tokens or a feature map.
    weights
        For foundation models: a local state dict (``.safetensors``, ``.bin``, ``.pt``, ``.pth``). Without it the
        Hugging Face cache is used, and only when the weights are not cached are they downloaded, with a log line
        (never with ``HF_HUB_OFFLINE=1``). Gated models need access granted on the hub and a login.
    patch_size
        Pixels per token; required for a torch module or callable, and the bin size in pixels of ``texture``.
    tile_size
        Pixels per tile side; the model's default otherwise.

    Returns
    -------
    :class:`Encoder`
    """
    return plan_encoder(model, weights=weights, patch_size=patch_size, tile_size=tile_size).build()


__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "Encoder",
    "EncoderPlan",
    "FoundationModel",
    "TextureEncoder",
    "TorchEncoder",
    "available_models",
    "get_encoder",
    "plan_encoder",
]
