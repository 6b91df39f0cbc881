"""Preprocessing: image features and tissue mask on the bin grid, and nuclei segmented from the H&E."""

from histex.encoders import available_models
from histex.pp._features import extract_features
from histex.pp._segment import segment_nuclei

__all__ = ["available_models", "extract_features", "segment_nuclei"]
