"""Tools: super-resolution of spot expression onto 8 µm bins, tissue domains on them, and their gene sets."""

from histex.tl._annotate import annotate
from histex.tl._enrich import enrich
from histex.tl._model import HistexModel
from histex.tl._patterns import spatial_patterns
from histex.tl._super_resolve import VARIANTS, super_resolve

__all__ = ["VARIANTS", "HistexModel", "annotate", "enrich", "spatial_patterns", "super_resolve"]
