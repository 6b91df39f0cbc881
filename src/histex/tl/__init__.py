"""Tools: super-resolution of spot expression onto 8 µm bins, expression per cell, tissue domains, and gene sets."""

from histex.tl._annotate import annotate
from histex.tl._cells import to_cells
from histex.tl._enrich import enrich
from histex.tl._model import HistexModel
from histex.tl._patterns import spatial_patterns
from histex.tl._super_resolve import VARIANTS, super_resolve
from histex.tl._trust import predictive_interval

__all__ = [
    "VARIANTS",
    "HistexModel",
    "annotate",
    "enrich",
    "predictive_interval",
    "spatial_patterns",
    "super_resolve",
    "to_cells",
]
