"""An ensemble of networks of one architecture, trained and run together: parameters stacked, forward vmapped."""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call, stack_module_state, vmap

from histex._device import resolve_precision


class Ensemble:
    """``n_states`` networks with their parameters stacked along a leading axis, run in one vmapped call.

    One step of all states costs one launch of each layer instead of one per state: on a GPU the states train in
    the time of one; on a CPU it costs what running them one after another costs. Each state keeps its own
    initialisation, and the Adam optimiser (element-wise) on the stacked tensors updates each state as its own
    optimiser would.
    """

    def __init__(self, networks: list[torch.nn.Module]):
        if not networks:
            raise ValueError("An ensemble needs at least one network.")
        params, buffers = stack_module_state(networks)
        self.params = {name: p.detach().requires_grad_() for name, p in params.items()}
        self.buffers = buffers
        # The architecture without memory of its own: functional_call fills it with one state's tensors.
        self._template = copy.deepcopy(networks[0]).to("meta")
        self.n_states = len(networks)

    def train(self, mode: bool = True) -> Ensemble:
        """Put every state in training mode (dropout on), or not; returns the ensemble."""
        self._template.train(mode)
        return self

    def eval(self) -> Ensemble:
        """Put every state in evaluation mode (dropout off); returns the ensemble."""
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters, as an optimiser takes them."""
        return list(self.params.values())

    @property
    def device(self) -> torch.device:
        """Where the parameters are."""
        return next(iter(self.params.values())).device

    def to(self, device: torch.device | str) -> Ensemble:
        """Move the parameters and buffers to ``device`` (in place; a no-op where they are)."""
        device = torch.device(device)
        if self.device != device:
            self.params = {n: p.detach().to(device).requires_grad_() for n, p in self.params.items()}
            self.buffers = {n: b.to(device) for n, b in self.buffers.items()}
        return self

    @classmethod
    def from_state_dicts(cls, template: torch.nn.Module, state_dicts: list[dict[str, torch.Tensor]]) -> Ensemble:
        """An ensemble of ``template``'s architecture with the given states (:meth:`state_dicts`); the keys and
        shapes must be the architecture's exactly.
        """
        networks = []
        for state in state_dicts:
            network = copy.deepcopy(template)
            network.load_state_dict(state, strict=True)
            networks.append(network)
        return cls(networks)

    def __call__(
        self,
        image_tokens: torch.Tensor,
        gene_tokens: torch.Tensor | None,
        *,
        shared: bool = False,
        dtype: torch.dtype | None = None,
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every state's ``(expression, embedding)``, with a leading state axis.

        Inputs carry a leading state axis (each state its own batch), or with ``shared=True`` none (every state
        sees the same batch). With ``dtype`` (bfloat16), weights and inputs are cast to it for the forward pass
        (mixed precision: the parameters, their gradients and the optimiser stay in float32). torch.autocast does
        not reach into vmapped functional calls, so the cast is made here. With ``hidden``, the first output is
        each network's last hidden layer instead of its expression.

        Where no gradient is recorded (predicting), the states run as one computation on their stacked parameters,
        which the networks' layers take directly (:func:`histex.nn._stacked.linear`), not vmapped, which is faster.
        The same function; in float32 the same numbers.
        """
        if not torch.is_grad_enabled():
            return self._stacked(image_tokens, gene_tokens, shared=shared, dtype=dtype, hidden=hidden)
        axis = None if shared else 0

        def one_state(params, buffers, tokens, genes):
            params, tokens, genes = _cast(dtype, params, tokens, genes)
            return functional_call(self._template, (params, buffers), (tokens, genes), {"hidden": hidden})

        in_dims = (0, 0, axis, None if gene_tokens is None else axis)
        # Each state draws its own dropout masks.
        return vmap(one_state, in_dims=in_dims, randomness="different")(
            self.params, self.buffers, image_tokens, gene_tokens
        )

    def _stacked(self, image_tokens, gene_tokens, *, shared: bool, dtype: torch.dtype | None, hidden: bool):
        params, image_tokens, gene_tokens = _cast(dtype, self.params, image_tokens, gene_tokens)
        if shared:  # every state sees the same batch: a view with a state axis of stride 0
            image_tokens = image_tokens.expand(self.n_states, *image_tokens.shape)
            gene_tokens = None if gene_tokens is None else gene_tokens.expand(self.n_states, *gene_tokens.shape)
        return functional_call(self._template, (params, self.buffers), (image_tokens, gene_tokens), {"hidden": hidden})

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One state dict per network, as :meth:`torch.nn.Module.load_state_dict` takes it."""
        tensors = {**self.params, **self.buffers}
        return [{name: t[i].detach().clone() for name, t in tensors.items()} for i in range(self.n_states)]

    def with_params(self, replacements: dict[str, torch.Tensor]) -> Ensemble:
        """A new ensemble that shares this one's tensors except ``replacements`` (stacked, as :attr:`params`);
        this one is unchanged.
        """
        unknown = set(replacements) - set(self.params)
        if unknown:
            raise KeyError(f"No parameters {sorted(unknown)} in the ensemble.")
        other = copy.copy(self)
        other.params = {**self.params, **{n: t.detach().to(self.device) for n, t in replacements.items()}}
        return other

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the stacked parameters, for :meth:`restore`."""
        return {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Put back parameters taken by :meth:`snapshot`."""
        for name, p in self.params.items():
            p.copy_(snapshot[name])


def _cast(dtype: torch.dtype | None, params: dict, tokens: torch.Tensor, genes: torch.Tensor | None):
    """Weights and inputs in the forward pass's dtype (``None``: as they are)."""
    if dtype is None:
        return params, tokens, genes
    params = {name: p.to(dtype) for name, p in params.items()}
    return params, tokens.to(dtype), None if genes is None else genes.to(dtype)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the forward pass (:meth:`Ensemble.__call__`), or ``None`` for float32
    (:func:`histex._device.resolve_precision` for training).
    """
    dtype = resolve_precision(precision, device, training=True)
    return None if dtype == torch.float32 else dtype
