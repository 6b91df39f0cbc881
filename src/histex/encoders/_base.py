"""What an image encoder is to histex: image tiles in, one feature vector per bin out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class Encoder(ABC):
    """Maps RGB tiles at a working resolution to one feature vector per ``patch_size x patch_size`` patch.

    histex resamples the image so that one patch is one bin (``bin_size_um / patch_size`` µm/px), cuts tiles of
    ``tile_size`` px with ``margin`` px of surrounding context on every side, and assembles the patch features into
    a map over the bin grid. A vision transformer has ``margin = 0``; an encoder that looks at neighbouring bins
    asks for a margin.

    Subclasses set the attributes below and implement :attr:`feature_names` and :meth:`encode`; encoders that run
    on an accelerator also override :meth:`to`.
    """

    #: Registry name; used in the key of the features element.
    name: str
    #: Pixels per bin side at the working resolution.
    patch_size: int
    #: Pixels per tile side (a multiple of ``patch_size``), without the margin.
    tile_size: int
    #: Pixels of context on each side of a tile (a multiple of ``patch_size``).
    margin: int = 0

    @property
    @abstractmethod
    def feature_names(self) -> list[str]:
        """One name per output channel."""

    @property
    def digest(self) -> str | None:
        """A fingerprint of the weights (or of the algorithm, for a weight-free encoder), used to reuse features
        computed before. ``None``: unknown, features are always recomputed.
        """
        return None

    @property
    def device(self) -> torch.device:
        """Where :meth:`encode` expects its tiles."""
        return torch.device("cpu")

    def to(self, device: torch.device, **options) -> Encoder:
        """Get ready to encode on ``device``; the options (precision, channels_last, compile) concern torch models.

        The default encoder runs on the CPU whatever the device.
        """
        return self

    @abstractmethod
    def encode(self, tiles: torch.Tensor) -> torch.Tensor | np.ndarray:
        """Encode a batch of tiles.

        Parameters
        ----------
        tiles
            ``(batch, 3, tile_size + 2 * margin, tile_size + 2 * margin)`` uint8 RGB on :attr:`device`.

        Returns
        -------
        ``(batch, n_features, tile_size // patch_size, tile_size // patch_size)`` float features of the tile's core
        (the margin excluded).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, patch_size={self.patch_size}, tile_size={self.tile_size})"
