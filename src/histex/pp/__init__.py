"""Preprocessing: image features and tissue mask on the bin grid."""

from histex.encoders import available_models
from histex.pp._features import extract_features

__all__ = ["available_models", "extract_features"]
