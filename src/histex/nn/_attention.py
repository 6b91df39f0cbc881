"""Cross-attention and the bidirectional fusion block of HISTEX."""

from __future__ import annotations

import torch
from torch import nn

from histex.nn._stacked import Linear, linear


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
        self.to_q = Linear(query_dim, dim)
        self.to_k = Linear(kv_dim, dim)
        self.to_v = Linear(kv_dim, dim)
        self.out = Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._folded(queries, context)
        # Any leading axes: (batch, tokens, dim), or (states, batch, tokens, dim) with stacked weights.
        *lead, n, _ = queries.shape
        m = context.shape[-2]
        q = self.to_q(queries).view(*lead, n, self.heads, self.head_dim).transpose(-3, -2)
        k = self.to_k(context).view(*lead, m, self.heads, self.head_dim).transpose(-3, -2)
        v = self.to_v(context).view(*lead, m, self.heads, self.head_dim).transpose(-3, -2)
        attended = _softmax((q @ k.transpose(-2, -1)) * self.scale) @ v
        return self.out(attended.transpose(-3, -2).reshape(*lead, n, -1))

    def _folded(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The same attention, computed for prediction with the projections of the side with many tokens folded
        into the side with few (:func:`_few_keys`, :func:`_few_queries`): a window's 49 bins attend to 5 gene tokens
        or are attended by them, and projecting the 49 tokens per head cost more than the attention itself. Half the
        time on the CPU; equal to :meth:`forward` up to rounding. Queries ``(batch, n, dim)``, or with stacked
        weights ``(states, batch, n, dim)``.
        """
        params = [layer.weight for layer in (self.to_q, self.to_k, self.to_v, self.out)]
        params += [layer.bias for layer in (self.to_q, self.to_k, self.to_v, self.out)]
        stacked = params[0].dim() == 3
        *lead, n, _ = queries.shape
        states = lead[0] if stacked else 1
        queries = queries.reshape(states, -1, n, queries.shape[-1])
        context = context.reshape(states, -1, *context.shape[-2:])
        if not stacked:
            params = [p.unsqueeze(0) for p in params]
        fold = _few_keys if context.shape[-2] <= n else _few_queries
        return fold(queries, context, *params, heads=self.heads, scale=self.scale).view(*lead, n, -1)


def _softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim``. torch.softmax is four times slower on the CPU over the five gene tokens a window
    attends to (a fifth of a prediction's time, and slower to differentiate); this is the same function, written
    out.
    """
    weights = scores - scores.amax(dim=dim, keepdim=True)
    if torch.is_grad_enabled():
        weights = weights.exp()
        return weights / weights.sum(dim=dim, keepdim=True)
    # predicting: in place, without the two intermediates that autograd would need
    weights.exp_()
    return weights.div_(weights.sum(dim=dim, keepdim=True))


def _per_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(states, batch, tokens, heads * head_dim)`` -> ``(states * heads, batch * tokens, head_dim)``."""
    states, batch, tokens, dim = x.shape
    return (
        x.view(states, batch, tokens, heads, dim // heads)
        .permute(0, 3, 1, 2, 4)
        .reshape(states * heads, -1, dim // heads)
    )


def _few_keys(x, context, wq, wk, wv, wo, bq, bk, bv, bo, *, heads: int, scale: float) -> torch.Tensor:
    """Attention of many queries ``x`` ``(states, batch, n, in)`` over few tokens ``context`` ``(states, batch, m,
    c)``, with the weights and biases of the four projections stacked over states.

    Per head, the scores ``(x Wq_h' + bq_h) k_h'`` are ``x (Wq_h' k_h') + bq_h k_h'``, and the output
    ``sum_h w_h v_h Wo_h' + bo``: the query and output projections are folded into the ``m`` keys and values
    instead of being applied to the ``n`` queries. The scores are laid out keys by queries, so that the softmax
    runs over a short axis with a long one inside it.
    """
    states, batch, n, width = x.shape
    m, dim, out = context.shape[2], wq.shape[1], wo.shape[1]
    head_dim = dim // heads
    keys = _per_head(linear(context, wk, bk), heads)  # (states * heads, batch * m, head_dim)
    values = _per_head(linear(context, wv, bv), heads)
    folded_q = torch.bmm(keys, (wq * scale).view(states * heads, head_dim, width))
    offset = torch.bmm(keys, (bq * scale).view(states * heads, head_dim, 1))
    folded_q, offset = (_heads_to_rows(t, states, heads, batch) for t in (folded_q, offset))
    flat = x.reshape(states * batch, n, width)
    scores = torch.baddbmm(offset, folded_q, flat.transpose(1, 2))  # (states * batch, heads * m, n)
    weights = _softmax(scores.view(-1, heads, m, n), dim=-2).view(-1, heads * m, n)
    wo_heads = wo.view(states, out, heads, head_dim).permute(0, 2, 3, 1).reshape(states * heads, head_dim, out)
    folded_v = _heads_to_rows(torch.bmm(values, wo_heads), states, heads, batch)  # (states * batch, heads * m, out)
    bias = bo[:, None, None, :].expand(states, batch, 1, out).reshape(states * batch, 1, out)
    return torch.baddbmm(bias, weights.transpose(1, 2), folded_v)


def _few_queries(queries, x, wq, wk, wv, wo, bq, bk, bv, bo, *, heads: int, scale: float) -> torch.Tensor:
    """Attention of few ``queries`` ``(states, batch, n, c)`` over many tokens ``x`` ``(states, batch, m, in)``.

    Per head, the scores ``q_h (x Wk_h' + bk_h)'`` are ``(q_h Wk_h) x' + q_h bk_h'``, and as each row of the
    attention weights sums to one, ``w_h (x Wv_h' + bv_h) = (w_h x) Wv_h' + bv_h``: the key and value projections
    are applied to the ``n`` queries' mixtures of ``x``, not to the ``m`` tokens of ``x``.
    """
    states, batch, n, _ = queries.shape
    m, width, dim = x.shape[2], x.shape[3], wq.shape[1]
    head_dim = dim // heads
    q = _per_head(linear(queries, wq, bq) * scale, heads)  # (states * heads, batch * n, head_dim)
    folded_k = torch.bmm(q, wk.view(states * heads, head_dim, width))
    offset = torch.bmm(q, bk.view(states * heads, head_dim, 1))
    folded_k, offset = (_heads_to_rows(t, states, heads, batch) for t in (folded_k, offset))
    flat = x.reshape(states * batch, m, width)
    weights = _softmax(torch.baddbmm(offset, folded_k, flat.transpose(1, 2)))  # (states * batch, heads * n, m)
    mixed = torch.bmm(weights, flat).view(states, batch, heads, n, width).transpose(1, 2)
    mixed = mixed.reshape(states * heads, batch * n, width)
    attended = torch.baddbmm(
        bv.view(states * heads, 1, head_dim), mixed, wv.view(states * heads, head_dim, width).transpose(1, 2)
    )
    attended = attended.view(states, heads, batch, n, head_dim).permute(0, 2, 3, 1, 4).reshape(states, batch, n, dim)
    return linear(attended, wo, bo).view(states * batch, n, -1)


def _heads_to_rows(x: torch.Tensor, states: int, heads: int, batch: int) -> torch.Tensor:
    """``(states * heads, batch * tokens, d)`` -> ``(states * batch, heads * tokens, d)``."""
    d = x.shape[-1]
    return x.view(states, heads, batch, -1, d).transpose(1, 2).reshape(states * batch, -1, d)


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
        self.linear = Linear(dim, dim)

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor) -> torch.Tensor:
        c = self.image_to_gene(image_tokens, gene_tokens)
        d = self.gene_to_image(gene_tokens, image_tokens)
        out = self.fuse(c, d)
        if self.carry_context:
            out = out + c
        return out + self.linear(out)
