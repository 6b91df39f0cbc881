"""Image features made ready for the network: standardised over tissue, with position channels, one token per bin."""

from __future__ import annotations

import numpy as np

_ROWS_PER_CHUNK = 32


def positions(shape: tuple[int, int]) -> np.ndarray:
    """The normalised position of each bin, ``(2, rows, cols)``: row / rows and col / cols of its centre."""
    rows, cols = shape
    r, c = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    return np.stack([r, c]).astype(np.float32)


def standardised_with_position(features, tissue: np.ndarray, *, n_components: int | None = None) -> np.ndarray:
    """The features and the bins' positions (:func:`positions`), standardised over the tissue bins, channel last.

    Every feature channel gets zero mean and unit variance over the in-tissue bins (constant channels are only
    centred). With ``n_components``, the standardised features are then projected onto their first
    ``n_components`` principal axes, fitted on the tissue bins (the projection keeps their scale: a bin's token
    keeps about the norm it had). The two position channels are standardised and appended last.

    Returns ``(rows, cols, channels)`` float32: one token per bin, the layout the network gathers windows from.
    It is the only full copy made: a whole slide's feature map (1,029 channels on 800 x 800 bins is 2.6 GB) is
    not concatenated, transposed or rescaled in copies of itself. ``features`` ``(channels, rows, cols)`` may be
    lazy (dask); it is read a band of rows at a time, once for the statistics and once for the output (and once
    more to fit the principal axes).
    """
    n, rows, cols = features.shape
    mean, std = _tissue_moments(features, tissue)
    scale = np.where(std > 1e-8, std, 1.0)
    axes = None
    if n_components is not None:
        if not 1 <= n_components <= n:
            raise ValueError(f"n_components must be between 1 and the {n} feature channels, got {n_components}.")
        axes = _principal_axes(features, tissue, mean, scale, n_components)
    width = n if axes is None else n_components
    out = np.empty((rows, cols, width + 2), dtype=np.float32)
    for r0 in range(0, rows, _ROWS_PER_CHUNK):
        band = _standardised_band(features, slice(r0, r0 + _ROWS_PER_CHUNK), mean, scale)
        out[r0 : r0 + _ROWS_PER_CHUNK, :, :width] = band if axes is None else band @ axes
    position = positions((rows, cols))
    for i in range(2):
        values = position[i][tissue].astype(np.float64)
        out[..., width + i] = (position[i] - np.float32(values.mean())) / np.float32(values.std() or 1.0)
    return out


def _tissue_moments(features, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over the tissue bins, in float64, from one pass over bands of rows
    (stored feature maps are chunked over all channels at once: a channel at a time would read the store once per
    channel). Bands are merged with Chan's formula, which keeps the precision of a two-pass variance."""
    n = features.shape[0]
    count, mean, m2 = 0, np.zeros(n), np.zeros(n)
    for r0 in range(0, tissue.shape[0], _ROWS_PER_CHUNK):
        rows = slice(r0, r0 + _ROWS_PER_CHUNK)
        x = np.asarray(features[:, rows], dtype=np.float32)[:, tissue[rows]].astype(np.float64)
        k = x.shape[1]
        if k == 0:
            continue
        band_mean = x.mean(axis=1)
        band_m2 = np.square(x - band_mean[:, None]).sum(axis=1)
        delta = band_mean - mean
        total = count + k
        mean = mean + delta * (k / total)
        m2 = m2 + band_m2 + np.square(delta) * (count * k / total)
        count = total
    return mean, np.sqrt(m2 / max(count, 1))


def _standardised_band(features, rows: slice, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of the standardised features, ``(band rows, cols, channels)`` float32."""
    band = np.asarray(features[:, rows], dtype=np.float32).transpose(1, 2, 0)
    band = band - mean.astype(np.float32)
    band /= scale.astype(np.float32)
    return band


def _principal_axes(features, tissue: np.ndarray, mean, scale, k: int) -> np.ndarray:
    """The first ``k`` principal axes ``(channels, k)`` of the standardised features of the tissue bins."""
    n = len(mean)
    gram = np.zeros((n, n))
    for r0 in range(0, tissue.shape[0], _ROWS_PER_CHUNK):
        rows = slice(r0, r0 + _ROWS_PER_CHUNK)
        x = _standardised_band(features, rows, mean, scale)[tissue[rows]]
        gram += (x.T @ x).astype(np.float64)  # the standardised features have zero mean over tissue
    _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :k]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])  # a fixed sign per axis: reproducible
    return axes.astype(np.float32)
