"""A weight-free colour and texture encoder: offline, fast on a CPU, and a baseline for foundation models."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from histex.encoders._base import Encoder

# Ruifrok & Johnston stain vectors (optical density of haematoxylin, eosin, DAB), rows normalised.
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(_STAINS)

_PIXEL_MAPS = ("hematoxylin", "eosin", "density", "grey", "gradient", "blob")
_CONTEXT_MAPS = ("hematoxylin", "eosin", "grey", "nuclear")
_CONTEXT_SCALES = (3, 5, 9)  # neighbourhoods in bins
_NUCLEAR_H = 0.25  # haematoxylin optical density above which a pixel counts as nuclear


class TextureEncoder(Encoder):
    """Multi-scale colour/texture statistics per bin, from colour deconvolution and simple filters.

    Per pixel: haematoxylin and eosin optical densities (Ruifrok-Johnston deconvolution), total optical density,
    grey level, gradient magnitude and a difference-of-Gaussians blob response (nuclei). Per bin: the mean and the
    standard deviation of each, and the fraction of nuclear pixels. Around each bin: the means of haematoxylin,
    eosin, grey level and nuclear fraction over 3 x 3, 5 x 5 and 9 x 9 bins, so that the features see tissue
    architecture at the scale of glands and aggregates.

    Parameters
    ----------
    patch_size
        Pixels per bin at the working resolution (16 px = 8 µm at 0.5 µm/px).
    tile_size
        Pixels per tile side.
    """

    name = "texture"

    def __init__(self, patch_size: int = 16, tile_size: int = 256):
        if tile_size % patch_size:
            raise ValueError(f"tile_size ({tile_size}) must be a multiple of patch_size ({patch_size}).")
        self.patch_size = patch_size
        self.tile_size = tile_size
        self.margin = patch_size * (max(_CONTEXT_SCALES) // 2)

    @property
    def feature_names(self) -> list[str]:
        names = [f"{m}_mean" for m in _PIXEL_MAPS] + [f"{m}_std" for m in _PIXEL_MAPS] + ["nuclear_fraction"]
        names += [f"{m}_ctx{s}" for s in _CONTEXT_SCALES for m in _CONTEXT_MAPS]
        return names

    @property
    def digest(self) -> str:
        return f"{self.name}-v1"  # no weights: the algorithm's version identifies the features

    def encode(self, tiles: torch.Tensor) -> torch.Tensor:
        # one tile at a time: the per-pixel maps of a whole batch would take ~20 MB per tile for no speed
        return torch.from_numpy(np.concatenate([self._encode(t[None]) for t in np.asarray(tiles.cpu())]))

    def _encode(self, tiles: np.ndarray) -> np.ndarray:
        tiles = tiles.astype(np.float32) / 255.0
        od = -np.log10((tiles * 255.0 + 1.0) / 256.0)  # (b, 3, h, w)
        conc = np.einsum("bchw,cs->bshw", od, _UNMIX)
        grey = tiles.mean(axis=1)
        blur1 = ndimage.gaussian_filter(grey, sigma=(0, 1, 1))
        maps = np.stack(
            [
                conc[:, 0],
                conc[:, 1],
                od.sum(axis=1),
                grey,
                ndimage.gaussian_gradient_magnitude(grey, sigma=(0, 1, 1)),
                ndimage.gaussian_filter(grey, sigma=(0, 4, 4)) - blur1,  # dark blobs of nucleus size are positive
            ],
            axis=1,
        )
        p = self.patch_size
        b, c, h, w = maps.shape
        patches = maps.reshape(b, c, h // p, p, w // p, p)
        mean = patches.mean(axis=(3, 5))
        std = patches.std(axis=(3, 5))
        nuclear = (conc[:, 0] > _NUCLEAR_H).reshape(b, h // p, p, w // p, p).mean(axis=(2, 4))[:, None]
        context_source = np.concatenate([mean[:, [0, 1, 3]], nuclear], axis=1)
        context = [ndimage.uniform_filter(context_source, size=(1, 1, s, s), mode="nearest") for s in _CONTEXT_SCALES]
        out = np.concatenate([mean, std, nuclear, *context], axis=1)
        m = self.margin // p
        core = out[:, :, m : out.shape[2] - m, m : out.shape[3] - m]
        return np.ascontiguousarray(core, dtype=np.float32)
