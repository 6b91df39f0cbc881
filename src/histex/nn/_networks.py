"""The HISTEX network and its image-only ablation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histex.nn._attention import FusionBlock
from histex.nn._stacked import Linear, linear


def mlp(in_dim: int, hidden: Sequence[int], *, nonlinear: bool) -> nn.Sequential:
    """Stack of linear layers; with ``nonlinear``, each is followed by a GELU.

    The published network has no nonlinearity between its layers (``nonlinear=False``), which makes the stack one
    linear map. There is no LayerNorm: it made the MLP over-fit sections of few spots (the benchmark page gives
    the figures), and iStar's MLP has none either.
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for width in hidden:
        layers.append(Linear(dim, width))
        if nonlinear:
            layers.append(nn.GELU())
        dim = width
    return nn.Sequential(*layers)


class PositiveHead(nn.Module):
    """Linear head with ``ELU(alpha=0.01) + 0.01``: strictly positive expression."""

    def __init__(self, in_dim: int, n_genes: int):
        super().__init__()
        self.linear = Linear(in_dim, n_genes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return positive_head(x, self.linear.weight, self.linear.bias)


def positive_head(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """:class:`PositiveHead` with the given weights: ``ELU(x @ weight.T + bias, alpha=0.01) + 0.01``."""
    return nn.functional.elu(linear(x, weight, bias), alpha=0.01) + 0.01


class HistexNet(nn.Module):
    """Image tokens of a window of bins, fused with gene tokens of nearby spots, to expression per bin.

    Parameters
    ----------
    n_features
        Feature channels per bin (image token size).
    n_genes
        Genes per gene token and per output.
    dim, heads
        Embedding size and heads of the cross-attention.
    n_blocks
        Fusion blocks; each after the first takes the previous output as its image side.
    hidden
        Widths of the MLP after fusion.
    nonlinear
        GELU between MLP layers, without LayerNorm (the published network has no nonlinearity there).
    carry_context
        Let the fusion blocks pass the gene tokens' values through (see :class:`FusionBlock`).
    context_skip
        Also give the MLP the mean of the gene tokens, a direct path from measured expression to the output.
    fusion_dropout
        At training, the share of windows whose fused tokens are withheld from the MLP (set to zero), which then
        sees the bins' own image features and the context mean only. The fused tokens summarise the whole window,
        which is the spot being fitted, so with few spots the network can learn each spot by heart through them;
        withholding them makes the MLP learn a per-bin mapping from the image that the fused tokens then refine.
        Prediction always uses them.
    context_withheld
        At training, the share of windows that see no expression at all: the fused tokens and the context mean
        are both withheld, so the MLP learns to predict each bin from its image alone, as it must on a slide
        without spots (``gene_tokens=None``).

    Forward
    -------
    ``image_tokens (batch, n_bins, n_features)``, ``gene_tokens (batch, k, n_genes)`` or ``None`` (no spots) ->
    ``(expression (batch, n_bins, n_genes), embedding (batch, n_bins, dim))``. Without gene tokens the fused
    tokens and the context mean are zero, and the embedding is the MLP's last hidden layer ``(..., hidden[-1])``.
    With ``hidden=True`` the first output is the MLP's last hidden layer instead of the expression: what the
    linear head reads (:mod:`histex.model.readout` refits that head to a new section's spots).
    """

    def __init__(
        self,
        n_features: int,
        n_genes: int,
        *,
        dim: int = 128,
        heads: int = 8,
        n_blocks: int = 2,
        hidden: Sequence[int] = (1024, 512, 512, 512),
        nonlinear: bool = True,
        carry_context: bool = False,
        context_skip: bool = False,
        fusion_dropout: float = 0.0,
        context_withheld: float = 0.0,
    ):
        super().__init__()
        if not 0 <= fusion_dropout < 1:
            raise ValueError(f"fusion_dropout must be in [0, 1), got {fusion_dropout}.")
        if not 0 <= context_withheld < 1:
            raise ValueError(f"context_withheld must be in [0, 1), got {context_withheld}.")
        self.context_skip = context_skip
        self.fusion_dropout = fusion_dropout
        self.context_withheld = context_withheld
        self.blocks = nn.ModuleList(
            [
                FusionBlock(n_features if i == 0 else dim, n_genes, dim, heads, carry_context=carry_context)
                for i in range(n_blocks)
            ]
        )
        self.mlp = mlp(dim + n_features + (n_genes if context_skip else 0), hidden, nonlinear=nonlinear)
        self.head = PositiveHead(hidden[-1], n_genes)

    def forward(
        self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor | None, hidden: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, embedding = self._hidden(image_tokens, gene_tokens)
        return (h if hidden else self.head(h)), embedding

    def _hidden(
        self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if gene_tokens is None:
            return self._image_alone(image_tokens)
        fused = image_tokens
        for block in self.blocks:
            fused = block(fused, gene_tokens)
        shown = fused
        if self.training and self.fusion_dropout > 0:
            shown = fused * (torch.rand(*fused.shape[:-2], 1, 1, device=fused.device) >= self.fusion_dropout)
        context_mean = gene_tokens.mean(dim=-2)
        if self.training and self.context_withheld > 0:
            kept = torch.rand(*fused.shape[:-2], 1, device=fused.device) >= self.context_withheld
            shown = shown * kept[..., None]
            context_mean = context_mean * kept
        per_bin = torch.cat([shown, image_tokens], dim=-1)
        if not self.context_skip:
            return self.mlp(per_bin), fused
        # The MLP's first layer sees [fused, image, context mean]. The context mean is the same for every bin of a
        # window, so its share of that layer is computed once per window and broadcast, not once per bin (the same
        # map as concatenating it to every bin, at a quarter less compute per step on 1,000 genes).
        first = self.mlp[0]
        w_bins, w_context = first.weight.split([per_bin.shape[-1], gene_tokens.shape[-1]], dim=-1)
        h = linear(per_bin, w_bins, first.bias)
        h = h + linear(context_mean, w_context, None)[..., None, :]
        return self.mlp[1:](h), fused

    def _image_alone(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP's last hidden layer with the fused tokens and the context mean at zero (what
        ``context_withheld`` trains); it is also the embedding, as :class:`ImageOnlyNet`'s.
        """
        dim = self.blocks[-1].linear.out_features
        first = self.mlp[0]
        # zero inputs contribute nothing: only the image columns of the first layer act
        w_image = first.weight[..., dim : dim + image_tokens.shape[-1]]
        h = self.mlp[1:](linear(image_tokens, w_image, first.bias))
        return h, h


class ImageOnlyNet(nn.Module):
    """Per-bin MLP on image features (the iStar design): no expression context.

    Forward: ``image_tokens (batch, n_bins, n_features)`` -> ``(expression, embedding)``, the embedding being the
    last hidden layer (with ``hidden=True``, that layer twice).
    """

    def __init__(
        self, n_features: int, n_genes: int, *, hidden: Sequence[int] = (1024, 512, 512, 512), nonlinear: bool = True
    ):
        super().__init__()
        self.mlp = mlp(n_features, hidden, nonlinear=nonlinear)
        self.head = PositiveHead(hidden[-1], n_genes)

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor | None = None, hidden: bool = False):
        h = self.mlp(image_tokens)
        return (h if hidden else self.head(h)), h
