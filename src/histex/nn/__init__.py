"""Torch modules of HISTEX: cross-attention, the fusion block, the networks."""

from histex.nn._attention import CrossAttention, FusionBlock
from histex.nn._networks import HistexNet, ImageOnlyNet, PositiveHead, mlp

__all__ = ["CrossAttention", "FusionBlock", "HistexNet", "ImageOnlyNet", "PositiveHead", "mlp"]
