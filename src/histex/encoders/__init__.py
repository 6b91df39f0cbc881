"""Image encoders: tiles of H&E in, one feature vector per bin out."""

from histex.encoders._base import Encoder
from histex.encoders._texture import TextureEncoder

_REGISTRY = {"texture": TextureEncoder}


def available_models() -> list[str]:
    """Names of the encoders that ``histex.pp.extract_features(model=...)`` accepts.

    Returns
    -------
    list of str
        Registry names, sorted.
    """
    return sorted(_REGISTRY)


def get_encoder(model: str | Encoder) -> Encoder:
    """An encoder instance from a registry name, or the given :class:`Encoder` unchanged."""
    if isinstance(model, Encoder):
        return model
    if model not in _REGISTRY:
        raise ValueError(f"Unknown model {model!r}; available models: {', '.join(available_models())}.")
    return _REGISTRY[model]()


__all__ = ["Encoder", "TextureEncoder", "available_models", "get_encoder"]
