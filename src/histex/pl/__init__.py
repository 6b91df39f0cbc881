"""Plots."""

from histex.pl._domains import domains, history
from histex.pl._enrichment import enrichment
from histex.pl._genes import genes, uncertainty

__all__ = ["domains", "enrichment", "genes", "history", "uncertainty"]
