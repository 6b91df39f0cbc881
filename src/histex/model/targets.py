"""Expression targets: scaling spot counts for training and mapping predictions back to counts per bin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGETS = ("minmax", "log1p")


@dataclass
class TargetScaler:
    """Per-gene scaling of spot counts to [0, 1].

    ``"minmax"`` (paper): ``(x - min) / (max - min)`` over spots. ``"log1p"``: the same on ``log1p(x)``.
    Predictions are mapped back to counts per bin by inverting the scaling and dividing by the number of bins in
    a spot's disk, so that a spot's bins sum to about its measured counts.
    """

    kind: str
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def fit(cls, counts: np.ndarray, kind: str = "minmax") -> TargetScaler:
        """The scaling of ``counts`` (spots x genes): ``kind`` ``"minmax"`` or ``"log1p"``, each gene's range."""
        if kind not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {kind!r}.")
        x = cls._forward(np.asarray(counts, dtype=np.float64), kind)
        return cls(kind=kind, low=x.min(axis=0), high=x.max(axis=0))

    @staticmethod
    def _forward(x: np.ndarray, kind: str) -> np.ndarray:
        return np.log1p(x) if kind == "log1p" else x

    @property
    def span(self) -> np.ndarray:
        """Each gene's range, 1 where it has none."""
        span = self.high - self.low
        return np.where(span > 0, span, 1.0)

    def transform(self, counts: np.ndarray) -> np.ndarray:
        """Counts to network targets, gene by gene in [0, 1] over the fitted range."""
        x = self._forward(np.asarray(counts, dtype=np.float64), self.kind)
        return ((x - self.low) / self.span).astype(np.float32)

    def to_counts_per_bin(self, y: np.ndarray, bins_per_spot: float) -> np.ndarray:
        """Scaled predictions of bins (``y`` in target units) to expected counts per bin."""
        x = np.asarray(y, dtype=np.float64) * self.span + self.low
        spot_counts = np.expm1(x) if self.kind == "log1p" else x
        return (np.maximum(spot_counts, 0) / bins_per_spot).astype(np.float32)

    def spread_to_counts_per_bin(self, s: np.ndarray, y: np.ndarray, bins_per_spot: float) -> np.ndarray:
        """Ensemble spread in target units to counts per bin (first-order for ``log1p``)."""
        s = np.asarray(s, dtype=np.float64) * self.span
        if self.kind == "log1p":
            s = s * np.exp(np.asarray(y, dtype=np.float64) * self.span + self.low)
        return (s / bins_per_spot).astype(np.float32)

    def block_to_counts_per_bin(self, bins_per_spot: float):
        """``(mean, spread)`` in target units to counts per bin, for :func:`histex.model.predict` to apply a block
        at a time.
        """

        def transform(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self.to_counts_per_bin(y, bins_per_spot), self.spread_to_counts_per_bin(s, y, bins_per_spot)

        return transform
