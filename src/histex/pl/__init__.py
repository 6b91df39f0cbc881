"""Plots."""

from histex.pl._genes import genes

__all__ = ["genes"]
