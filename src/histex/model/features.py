"""Image features made ready for the network: standardised over tissue, with position channels, one token per bin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ROWS_PER_CHUNK = 32


def positions(shape: tuple[int, int]) -> np.ndarray:
    """The normalised position of each bin, ``(2, rows, cols)``: row / rows and col / cols of its centre."""
    rows, cols = shape
    r, c = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    return np.stack([r, c]).astype(np.float32)


@dataclass
class FeatureScaling:
    """How image features become tokens: per-channel centre and scale, optional principal axes, positions.

    ``mean`` and ``scale`` are ``None`` when every section is standardised with its own statistics over its tissue
    (``"section"``), and hold the statistics of the training sections together otherwise (``"global"``).
    """

    mean: np.ndarray | None  # (channels,) float64
    scale: np.ndarray | None  # (channels,) float64, 1 where a channel is constant
    axes: np.ndarray | None  # (channels, k) float32 principal axes of the standardised features
    positions: bool  # two position channels appended last

    @property
    def per_section(self) -> bool:
        """Whether each section is standardised with its own statistics (none are kept)."""
        return self.mean is None

    def width(self, n_channels: int) -> int:
        """Token width for features of ``n_channels``."""
        return (n_channels if self.axes is None else self.axes.shape[1]) + 2 * self.positions


def fit_scaling(
    sections,
    *,
    per_section: bool = True,
    n_components: int | None = None,
    positions: bool = True,
    moments: list | None = None,
) -> FeatureScaling:
    """The scaling of the features of ``sections`` (pairs of ``(channels, rows, cols)`` features and tissue).

    Statistics are over the tissue bins, in float64, merged over sections with Chan's formula. The principal axes
    (``n_components``) are fitted on the standardised features of all sections together, each standardised as the
    model will standardise it. ``moments``: each section's :func:`tissue_moments`, when known already.
    """
    sections = list(sections)
    n = sections[0][0].shape[0]
    if any(f.shape[0] != n for f, _ in sections):
        raise ValueError(f"The sections' features have different channels: {[f.shape[0] for f, _ in sections]}.")
    moments = moments if moments is not None else [tissue_moments(f, t) for f, t in sections]
    pooled = moments[0] if len(moments) == 1 else _merge_moments(moments)
    scaling = FeatureScaling(
        mean=None if per_section else pooled[1],
        scale=None if per_section else _scale(pooled[2]),
        axes=None,
        positions=positions,
    )
    if n_components is None:
        return scaling
    if not 1 <= n_components <= n:
        raise ValueError(f"n_components must be between 1 and the {n} feature channels, got {n_components}.")
    gram = np.zeros((n, n))
    for (features, tissue), (_, mean, std) in zip(sections, moments, strict=True):
        if not per_section:
            mean, std = scaling.mean, scaling.scale
        gram += _gram(features, tissue, mean, _scale(std))
    scaling.axes = _principal_axes(gram, n_components)
    return scaling


def tokens(features, tissue: np.ndarray, scaling: FeatureScaling, *, moments=None) -> np.ndarray:
    """The features as tokens (:class:`FeatureScaling`), standardised over the tissue bins, channel last.

    Every feature channel gets zero mean and unit variance (constant channels are only centred), with the
    section's own statistics or the stored ones; with principal axes, the standardised features are then projected
    onto them (the projection keeps their scale: a bin's token keeps about the norm it had). The two position
    channels, standardised over the section's tissue, are appended last.

    Returns ``(rows, cols, channels)`` float32: one token per bin, the layout the network gathers windows from.
    It is the only full copy made: a whole slide's feature map (1,029 channels on 800 x 800 bins is 2.6 GB) is
    not concatenated, transposed or rescaled in copies of itself. ``features`` ``(channels, rows, cols)`` may be
    lazy (dask); it is read a band of rows at a time, once for the statistics and once for the output.
    ``moments``: the section's statistics (:func:`tissue_moments`) when they are known already.
    """
    n, rows, cols = features.shape
    if scaling.per_section:
        _, mean, std = moments if moments is not None else tissue_moments(features, tissue)
        scale = _scale(std)
    else:
        mean, scale = scaling.mean, scaling.scale
    if len(mean) != n:
        raise ValueError(f"The features have {n} channels; the scaling was fitted on {len(mean)}.")
    axes = scaling.axes
    width = n if axes is None else axes.shape[1]
    out = np.empty((rows, cols, scaling.width(n)), dtype=np.float32)
    for r0 in range(0, rows, _ROWS_PER_CHUNK):
        band = _standardised_band(features, slice(r0, r0 + _ROWS_PER_CHUNK), mean, scale)
        out[r0 : r0 + _ROWS_PER_CHUNK, :, :width] = band if axes is None else band @ axes
    if scaling.positions:
        position = positions((rows, cols))
        for i in range(2):
            values = position[i][tissue].astype(np.float64)
            out[..., width + i] = (position[i] - np.float32(values.mean())) / np.float32(values.std() or 1.0)
    return out


def standardised_with_position(features, tissue: np.ndarray, *, n_components: int | None = None) -> np.ndarray:
    """One section's tokens with its own statistics and its positions (:func:`fit_scaling`, :func:`tokens`)."""
    moments = tissue_moments(features, tissue)
    scaling = fit_scaling([(features, tissue)], n_components=n_components, moments=[moments])
    return tokens(features, tissue, scaling, moments=moments)


def _scale(std: np.ndarray) -> np.ndarray:
    return np.where(std > 1e-8, std, 1.0)


def _merge_moments(moments) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, std)`` of sections together from each one's."""
    count, mean, m2 = 0, np.zeros_like(moments[0][1]), np.zeros_like(moments[0][1])
    for k, part_mean, part_std in moments:
        count, mean, m2 = _chan(count, mean, m2, k, part_mean, np.square(part_std) * k)
    return count, mean, np.sqrt(m2 / max(count, 1))


def _chan(count: int, mean: np.ndarray, m2: np.ndarray, k: int, part_mean: np.ndarray, part_m2: np.ndarray):
    """Count, mean and sum of squared deviations of two groups merged (Chan's formula, which keeps the precision
    of a two-pass variance).
    """
    if k == 0:
        return count, mean, m2
    delta = part_mean - mean
    total = count + k
    return total, mean + delta * (k / total), m2 + part_m2 + np.square(delta) * (count * k / total)


def tissue_moments(features, tissue: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Number of tissue bins, and per-channel mean and standard deviation over them, in float64, from one pass over
    bands of rows (stored feature maps are chunked over all channels at once: a channel at a time would read the
    store once per channel). Bands are merged with Chan's formula.
    """
    n = features.shape[0]
    count, mean, m2 = 0, np.zeros(n), np.zeros(n)
    for r0 in range(0, tissue.shape[0], _ROWS_PER_CHUNK):
        rows = slice(r0, r0 + _ROWS_PER_CHUNK)
        x = np.asarray(features[:, rows], dtype=np.float32)[:, tissue[rows]].astype(np.float64)
        if x.shape[1] == 0:
            continue
        band_mean = x.mean(axis=1)
        band_m2 = np.square(x - band_mean[:, None]).sum(axis=1)
        count, mean, m2 = _chan(count, mean, m2, x.shape[1], band_mean, band_m2)
    return count, mean, np.sqrt(m2 / max(count, 1))


def _standardised_band(features, rows: slice, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of the standardised features, ``(band rows, cols, channels)`` float32."""
    band = np.asarray(features[:, rows], dtype=np.float32).transpose(1, 2, 0)
    band = band - mean.astype(np.float32)
    band /= scale.astype(np.float32)
    return band


def _gram(features, tissue: np.ndarray, mean, scale) -> np.ndarray:
    """``x.T @ x`` of the standardised features ``x`` of the tissue bins, float64."""
    n = len(mean)
    gram = np.zeros((n, n))
    for r0 in range(0, tissue.shape[0], _ROWS_PER_CHUNK):
        rows = slice(r0, r0 + _ROWS_PER_CHUNK)
        x = _standardised_band(features, rows, mean, scale)[tissue[rows]]
        gram += (x.T @ x).astype(np.float64)  # the standardised features have zero mean over tissue
    return gram


def _principal_axes(gram: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal axes ``(channels, k)`` from the Gram matrix of centred features."""
    _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :k]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])  # a fixed sign per axis: reproducible
    return axes.astype(np.float32)
