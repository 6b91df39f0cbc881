"""Tools: super-resolution of spot expression onto 8 µm bins, and tissue domains on them."""

from histex.tl._annotate import annotate
from histex.tl._super_resolve import VARIANTS, super_resolve

__all__ = ["VARIANTS", "annotate", "super_resolve"]
