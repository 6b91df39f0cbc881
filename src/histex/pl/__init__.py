"""Plots."""

from histex.pl._domains import domains, history
from histex.pl._enrichment import enrichment
from histex.pl._genes import genes, uncertainty
from histex.pl._trust import reliability

__all__ = ["domains", "enrichment", "genes", "history", "reliability", "uncertainty"]
