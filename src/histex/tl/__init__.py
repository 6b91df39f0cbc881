"""Tools: super-resolution of spot expression onto 8 µm bins."""

from histex.tl._super_resolve import VARIANTS, super_resolve

__all__ = ["VARIANTS", "super_resolve"]
