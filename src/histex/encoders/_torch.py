"""Any torch model as an encoder: a vision transformer's patch tokens or a CNN's feature map, one vector per bin."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from histex._device import resolve_precision
from histex.encoders._base import Encoder

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def state_dict_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, in key order: the same weights give the same digest."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TorchEncoder(Encoder):
    """A torch model that turns tiles into patch tokens (a ViT) or a feature map (a CNN).

    Parameters
    ----------
    module
        A :class:`torch.nn.Module` or any callable on a ``(batch, 3, size, size)`` float tensor normalised with
        ``mean`` and ``std``. It returns either tokens ``(batch, n_tokens, dim)`` (prefix tokens first, then the
        patch tokens in row-major order) or a map ``(batch, dim, rows, cols)``; a list or tuple of outputs gives its
        last element.
    patch_size
        Input pixels per output token (16 for a ViT/16, 14 for a ViT/14, the stride of a CNN's feature map).
    tile_size
        Input pixels per tile side, a multiple of ``patch_size``.
    margin
        Context pixels on each side of a tile that the model sees but whose tokens are dropped (useful for CNNs,
        whose features blur at tile borders); a multiple of ``patch_size``.
    mean, std
        Input normalisation (ImageNet by default).
    n_prefix_tokens
        Tokens before the patch tokens (class and register tokens), dropped. ``None``: whatever precedes the
        expected number of patch tokens.
    feature_dim
        Channels per token; found with one forward pass when not given.
    name
        Name in the features key.
    forward
        Name of the method to call instead of ``module(x)``, e.g. ``"forward_features"`` for timm models.
    digest
        Fingerprint of the weights, for reuse of computed features; by default a hash of the module's state dict.
    """

    def __init__(
        self,
        module: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        *,
        patch_size: int,
        tile_size: int = 224,
        margin: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        n_prefix_tokens: int | None = None,
        feature_dim: int | None = None,
        name: str = "custom",
        forward: str | None = None,
        digest: str | None = None,
    ):
        if not callable(module):
            raise TypeError(f"module must be a torch.nn.Module or a callable, not {type(module).__name__}.")
        if patch_size < 1 or tile_size % patch_size or margin % patch_size:
            raise ValueError(
                f"tile_size ({tile_size}) and margin ({margin}) must be multiples of a positive patch_size "
                f"({patch_size})."
            )
        self.module = module
        self.patch_size = int(patch_size)
        self.tile_size = int(tile_size)
        self.margin = int(margin)
        self.name = name
        self.n_prefix_tokens = n_prefix_tokens
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._forward_name = forward
        self._feature_dim = feature_dim
        self._digest = digest
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self._channels_last = False
        self._run: Callable | None = None

    # -- what the extraction loop needs ---------------------------------------------------------------------------
    @property
    def tokens_per_side(self) -> int:
        return self.tile_size // self.patch_size

    @property
    def feature_dim(self) -> int:
        if self._feature_dim is None:
            probe = torch.full((1, 3, self.tile_size + 2 * self.margin, self.tile_size + 2 * self.margin), 200)
            self._feature_dim = int(self.encode(probe.to(torch.uint8).to(self._device)).shape[1])
        return self._feature_dim

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.name}_{i}" for i in range(self.feature_dim)]

    @property
    def digest(self) -> str | None:
        if self._digest is None and isinstance(self.module, torch.nn.Module):
            return state_dict_digest(self.module)  # not remembered: a module trained in place gets a new digest
        return self._digest

    @property
    def device(self) -> torch.device:
        return self._device

    def to(
        self, device: torch.device, *, precision: str = "auto", channels_last: bool = True, compile: bool = False
    ) -> TorchEncoder:
        """Move the model to ``device`` in eval mode, with autocast ``precision`` and optional ``torch.compile``."""
        device = torch.device(device)
        if isinstance(self.module, torch.nn.Module):
            self.module.eval()
            self.module.to(device)
            if channels_last and device.type != "cpu":
                self.module.to(memory_format=torch.channels_last)
        self._device = device
        self._dtype = resolve_precision(precision, device)
        self._channels_last = channels_last and device.type != "cpu"
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        call = getattr(self.module, self._forward_name) if self._forward_name else self.module
        self._run = torch.compile(call) if compile else call
        logger.info("Encoder %s on %s, %s.", self.name, device, str(self._dtype).removeprefix("torch."))
        return self

    @torch.inference_mode()
    def encode(self, tiles: torch.Tensor) -> torch.Tensor:
        if self._run is None:
            self.to(self._device)
        x = tiles.to(self._device, non_blocking=True).float().div_(255.0)
        x = (x - self._mean) / self._std
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = self._dtype != torch.float32
        with torch.autocast(self._device.type, dtype=self._dtype, enabled=autocast):
            out = self._run(x)
        return self._to_grid(out).float()

    def _to_grid(self, out) -> torch.Tensor:
        """Patch tokens or a feature map as ``(batch, dim, t, t)`` over the tile's core."""
        if isinstance(out, (list, tuple)):
            out = out[-1]
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        t, m = self.tokens_per_side, self.margin // self.patch_size
        side = t + 2 * m
        if out.ndim == 3:  # (batch, tokens, dim)
            n_prefix = out.shape[1] - side * side if self.n_prefix_tokens is None else self.n_prefix_tokens
            if n_prefix < 0 or out.shape[1] - n_prefix != side * side:
                raise ValueError(
                    f"Encoder {self.name!r} returned {out.shape[1]} tokens for a {side * self.patch_size} px tile; "
                    f"expected {side * side} patch tokens of {self.patch_size} px"
                    + (f" after {self.n_prefix_tokens} prefix tokens." if self.n_prefix_tokens is not None else ".")
                )
            out = out[:, n_prefix:].reshape(out.shape[0], side, side, out.shape[2]).permute(0, 3, 1, 2)
        elif out.ndim == 4:  # (batch, dim, rows, cols)
            if tuple(out.shape[2:]) != (side, side):
                raise ValueError(
                    f"Encoder {self.name!r} returned a {tuple(out.shape[2:])} feature map for a "
                    f"{side * self.patch_size} px tile; expected ({side}, {side}) at a stride of {self.patch_size} px."
                )
        else:
            raise ValueError(
                f"Encoder {self.name!r} returned an output of shape {tuple(out.shape)}; expected tokens "
                "(batch, tokens, dim) or a feature map (batch, dim, rows, cols)."
            )
        return out[:, :, m : m + t, m : m + t]
