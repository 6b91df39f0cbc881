"""Cross-attention and the bidirectional fusion block of HISTEX."""

from __future__ import annotations

import torch
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens over key/value tokens.

    Queries and keys/values are projected to ``dim`` with ``heads`` heads; scores are scaled by
    ``head_dim ** -0.5`` (the reference code scales by ``heads ** -0.5``).
    """

    def __init__(self, query_dim: int, kv_dim: int, dim: int = 128, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.to_q = nn.Linear(query_dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = queries.shape
        m = context.shape[1]
        q = self.to_q(queries).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(context).view(b, m, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(context).view(b, m, self.heads, self.head_dim).transpose(1, 2)
        return self.out((_softmax((q @ k.transpose(-2, -1)) * self.scale) @ v).transpose(1, 2).reshape(b, n, -1))


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis. torch.softmax is four times slower on the CPU over the five gene tokens a window
    attends to (a fifth of a prediction's time, and slower to differentiate); this is the same function, written
    out."""
    weights = scores - scores.amax(dim=-1, keepdim=True)
    if torch.is_grad_enabled():
        weights = weights.exp()
        return weights / weights.sum(dim=-1, keepdim=True)
    # predicting: in place, without the two intermediates that autograd would need
    weights.exp_()
    return weights.div_(weights.sum(dim=-1, keepdim=True))


class FusionBlock(nn.Module):
    """Bidirectional cross-attention between image and gene tokens.

    ``C = CA(image -> gene)`` (image tokens attend to gene tokens), ``D = CA(gene -> image)``, and
    ``out = CA(C -> D)``, followed by a linear layer with a residual connection. The output has one token per image
    token.

    In that published form the expression values reach ``out`` only through attention weights: ``out`` mixes the
    values of ``D``, which are image features. With ``carry_context=True`` the block adds ``C`` (image tokens
    that read the gene tokens' values) to ``out`` before the linear layer, the residual path of a standard
    transformer, so that measured expression can pass through.
    """

    def __init__(self, image_dim: int, gene_dim: int, dim: int = 128, heads: int = 8, *, carry_context: bool = False):
        super().__init__()
        self.carry_context = carry_context
        self.image_to_gene = CrossAttention(image_dim, gene_dim, dim, heads)
        self.gene_to_image = CrossAttention(gene_dim, image_dim, dim, heads)
        self.fuse = CrossAttention(dim, dim, dim, heads)
        self.linear = nn.Linear(dim, dim)

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor) -> torch.Tensor:
        c = self.image_to_gene(image_tokens, gene_tokens)
        d = self.gene_to_image(gene_tokens, image_tokens)
        out = self.fuse(c, d)
        if self.carry_context:
            out = out + c
        return out + self.linear(out)
