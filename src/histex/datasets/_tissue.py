"""The toy's tissue, procedurally, on a 1 µm label map: a section of stroma with tumour nests, glands and immune
aggregates, and the nuclei of each compartment (ellipses in µm, with the class :func:`histex.sim.paint_he` paints).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from histex.geometry import hex_lattice

# Codes of the label map. The two tumour clones are separate codes (they differ in expression) but one compartment,
# and they look identical in the image.
BG, STR, EPI, LUM, IMM, TUM_A, TUM_B = range(7)
N_CODES = 7
TISSUE_CODES = (STR, EPI, LUM, IMM, TUM_A, TUM_B)


@dataclass
class Nuclei:
    """Filled ellipses in µm: centres, semi-axes (``a`` along ``angle``) and the nucleus class of each."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    kind: np.ndarray

    def polygons(self, mpp: float, n_vertices: int = 16) -> np.ndarray:
        """The ellipses as shapely polygons in pixels of ``mpp``."""
        import shapely

        t = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
        u, v = self.a[:, None] * np.cos(t), self.b[:, None] * np.sin(t)
        c, s = np.cos(self.angle)[:, None], np.sin(self.angle)[:, None]
        xy = np.stack([self.cx[:, None] + u * c - v * s, self.cy[:, None] + u * s + v * c], axis=-1) / mpp
        return shapely.polygons(xy)


def _interp_matrix(n_fine: int, n_coarse: int, step: float) -> np.ndarray:
    """Linear interpolation from coarse nodes at ``k * step`` to fine cell centres ``i + 0.5``, as a matrix."""
    p = (np.arange(n_fine) + 0.5) / step
    i0 = np.minimum(np.floor(p).astype(int), n_coarse - 2)
    t = p - i0
    m = np.zeros((n_fine, n_coarse))
    m[np.arange(n_fine), i0] = 1 - t
    m[np.arange(n_fine), i0 + 1] = t
    return m


def tissue_mask(shape_f: tuple[int, int], h_um: float, w_um: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth irregular blob covering about two thirds of the section, inside a white margin.

    The blob is a level set of a rounded-square norm divided by a wavy radius (low angular harmonics plus smooth
    noise); the level is the one that covers the target area, lowered if needed so that the blob stays off the margin.
    """
    step = 8.0  # drawn coarse and interpolated: the edge is smooth at 1 µm anyway
    ny, nx = int(np.ceil(shape_f[0] / step)) + 2, int(np.ceil(shape_f[1] / step)) + 2
    noise = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma=60.0 / step, mode="reflect")
    noise /= noise.std()
    u = ((np.arange(nx) * step - w_um / 2) / (w_um / 2))[None, :]
    v = ((np.arange(ny) * step - h_um / 2) / (h_um / 2))[:, None]
    theta = np.arctan2(v, u)
    radius = 1 + 0.04 * noise
    for k in range(2, 6):
        radius = radius + rng.uniform(0, 0.12 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = (np.abs(u) ** 5 + np.abs(v) ** 5) ** 0.2 / radius
    fine = _interp_matrix(shape_f[0], ny, step) @ rho @ _interp_matrix(shape_f[1], nx, step).T

    margin = max(20.0, 0.03 * min(h_um, w_um))
    y, x = np.arange(shape_f[0]) + 0.5, np.arange(shape_f[1]) + 0.5
    inside = ((y > margin) & (y < h_um - margin))[:, None] & ((x > margin) & (x < w_um - margin))[None, :]
    target = int(rng.uniform(0.64, 0.72) * h_um * w_um)
    level = min(np.partition(fine.ravel(), target)[target], fine[~inside].min())
    mask = fine < level

    # One piece without holes, as a section on a slide.
    lbl, n = ndimage.label(mask)
    if n > 1:
        mask = lbl == (np.argmax(np.bincount(lbl.ravel())[1:]) + 1)
    return ndimage.binary_fill_holes(mask)


def _blob(dy: np.ndarray, dx: np.ndarray, radius: float, ecc: float, angle: float, harm: np.ndarray) -> np.ndarray:
    """Inside test of an elongated blob with a wavy edge: ``harm`` rows are (order, amplitude, phase)."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    rho = np.hypot(u / (1 + ecc), v / (1 - ecc))
    theta = np.arctan2(v, u)
    edge = np.ones_like(rho)
    for k, amp, phase in harm:
        edge = edge + amp * np.cos(k * theta + phase)
    return rho <= radius * edge


def _fits(lab: np.ndarray, cy: float, cx: float, reach: float, code: int) -> bool:
    """Whether the disk of ``reach`` µm around ``(cy, cx)`` lies in the map and holds only ``code``."""
    y0, y1 = int(np.floor(cy - reach)), int(np.ceil(cy + reach)) + 1
    x0, x1 = int(np.floor(cx - reach)), int(np.ceil(cx + reach)) + 1
    if y0 < 0 or x0 < 0 or y1 > lab.shape[0] or x1 > lab.shape[1]:
        return False
    dy = np.arange(y0, y1)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1)[None, :] + 0.5 - cx
    return bool(np.all(lab[y0:y1, x0:x1][dy**2 + dx**2 <= reach**2] == code))


def _stamp_blob(lab: np.ndarray, centre: tuple[float, float], blob: tuple, code: int, where: int = STR) -> None:
    """Set ``code`` on the cells of ``lab`` that hold ``where`` and lie inside the blob ``(radius, ecc, angle, harm)``
    (see :func:`_blob`) centred on ``centre`` ``(y, x)``.
    """
    radius, ecc, _, harm = blob
    reach = _blob_reach(radius, ecc, harm)
    cy, cx = centre
    y0, y1 = max(0, int(np.floor(cy - reach))), min(lab.shape[0], int(np.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(np.floor(cx - reach))), min(lab.shape[1], int(np.ceil(cx + reach)) + 1)
    dy = np.arange(y0, y1)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1)[None, :] + 0.5 - cx
    win = lab[y0:y1, x0:x1]
    win[_blob(dy, dx, *blob) & (win == where)] = code


def _blob_reach(radius: float, ecc: float, harm: np.ndarray) -> float:
    """Largest distance of a blob's edge from its centre."""
    return radius * (1 + ecc) * (1 + np.abs(harm[:, 1]).sum())


def _harmonics(rng: np.random.Generator, orders: Sequence[int], scale: float) -> np.ndarray:
    """Random ``(order, amplitude, phase)`` rows for a wavy edge; amplitudes fall as ``scale / order``."""
    return np.array([(k, rng.uniform(0, scale / k), rng.uniform(0, 2 * np.pi)) for k in orders])


def place_structures(lab: np.ndarray, h_um: float, w_um: float, rng: np.random.Generator) -> np.ndarray:
    """Paint tumour nests, glands and immune aggregates into the stroma of ``lab``; return the glands as rows of
    ``(cy, cx, outer radius, wall, eccentricity, angle)``.
    """
    section_mm2 = h_um * w_um / 1e6
    tissue_mm2 = np.count_nonzero(lab) / 1e6

    # Tumour nests alternate between the left (clone A) and right (clone B) halves, so both clones exist and the
    # clones are apart in space.
    n_nests = max(2, round(1.5 * section_mm2))
    r_max = min(130.0, 0.12 * min(h_um, w_um))
    for i in range(n_nests):
        left = i % 2 == 0
        radius = rng.uniform(0.6, 1.0) * r_max
        harm = _harmonics(rng, (2, 3, 4, 5), 0.35)
        for attempt in range(300):
            if attempt and attempt % 60 == 0:
                radius *= 0.8  # small sections: shrink until a nest fits
            ecc, angle = rng.uniform(0, 0.25), rng.uniform(0, np.pi)
            reach = _blob_reach(radius, ecc, harm)
            cy = rng.uniform(0, h_um)
            cx = rng.uniform(0, w_um / 2) if left else rng.uniform(w_um / 2, w_um)
            # 20 µm apart at least, so that no 8 µm bin holds two nests (nor both clones).
            if _fits(lab, cy, cx, reach + 20.0, STR):
                _stamp_blob(lab, (cy, cx), (radius, ecc, angle, harm), TUM_A if left else TUM_B)
                break

    # Glands and aggregates in random order, so that neither crowds the other out.
    n_glands = max(2, round(14 * tissue_mm2))
    n_immune = max(2, round(10 * tissue_mm2))
    kinds = rng.permutation(np.r_[np.zeros(n_glands, int), np.ones(n_immune, int)])
    glands = []
    for kind in kinds:
        if kind == 0:
            outer, wall = rng.uniform(20, 45), rng.uniform(8, 12)
            ecc, angle = rng.uniform(0, 0.2), rng.uniform(0, np.pi)
            harm = np.empty((0, 3))
        else:
            outer, wall = rng.uniform(15, 40), 0.0
            ecc, angle = rng.uniform(0, 0.25), rng.uniform(0, np.pi)
            harm = _harmonics(rng, (2, 3), 0.2)
        reach = _blob_reach(outer, ecc, harm)
        for _ in range(60):
            cy, cx = rng.uniform(0, h_um), rng.uniform(0, w_um)
            if _fits(lab, cy, cx, reach + 6.0, STR):
                break
        else:
            continue
        if kind == 0:
            _stamp_blob(lab, (cy, cx), (outer, ecc, angle, harm), EPI)
            _stamp_blob(lab, (cy, cx), (outer - wall, ecc, angle, harm), LUM, where=EPI)
            glands.append((cy, cx, outer, wall, ecc, angle))
        else:
            _stamp_blob(lab, (cy, cx), (outer, ecc, angle, harm), IMM)
    return np.array(glands).reshape(-1, 6)


def _lattice_points(
    lab: np.ndarray, pitch: float, jitter: float, codes: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """A jittered hexagonal lattice of ``(x, y)`` points in µm, kept where the label map holds one of ``codes``."""
    pts = hex_lattice(lab.shape[1], lab.shape[0], pitch=pitch, offset=tuple(rng.uniform(0, pitch, 2)))
    pts = pts + rng.uniform(-jitter, jitter, pts.shape)
    iy = np.clip(pts[:, 1].astype(int), 0, lab.shape[0] - 1)
    ix = np.clip(pts[:, 0].astype(int), 0, lab.shape[1] - 1)
    return pts[np.isin(lab[iy, ix], codes)]


def place_nuclei(lab: np.ndarray, glands: np.ndarray, rng: np.random.Generator) -> Nuclei:
    """Nuclei of every compartment, in µm: their sizes, shapes and classes are what tells compartments apart.

    Draws that once set the toy's own textures and nucleus shades are still made, so that a seed keeps its section
    (nuclei, spots and counts) now that :func:`histex.sim.paint_he` paints it.
    """
    fibres = rng.uniform(0, np.pi) + np.pi / 2  # along the stroma's fibres
    rng.uniform(size=20)
    parts = []

    def add(xy, a, b, angle, kind):
        rng.uniform(size=len(xy))
        parts.append((xy[:, 0], xy[:, 1], a, b, angle, np.full(len(xy), kind)))

    # Immune aggregates: packed small round very dark nuclei.
    xy = _lattice_points(lab, 6.4, 0.9, (IMM,), rng)
    a = rng.uniform(2.6, 3.3, len(xy))
    add(xy, a, a * rng.uniform(0.85, 1.0, len(xy)), rng.uniform(0, np.pi, len(xy)), "inflammatory")
    # Tumour: large pleomorphic nuclei, drawn the same way in both clones.
    xy = _lattice_points(lab, 12.5, 2.5, (TUM_A, TUM_B), rng)
    a = rng.uniform(4.0, 6.0, len(xy))
    add(xy, a, a * rng.uniform(0.6, 0.95, len(xy)), rng.uniform(0, np.pi, len(xy)), "neoplastic")
    # Glands: columnar nuclei near the outer (basal) side of the ring, pointing to the lumen.
    for cy, cx, outer, wall, ecc, angle in glands:
        n = max(6, round(2 * np.pi * (outer - wall / 2) / 6.0))
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.05, n)
        rho = outer - wall * rng.uniform(0.35, 0.5, n)
        u, v = rho * np.cos(theta) * (1 + ecc), rho * np.sin(theta) * (1 - ecc)
        c, s = np.cos(angle), np.sin(angle)
        xy = np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)
        add(xy, rng.uniform(3.0, 4.0, n), rng.uniform(1.8, 2.4, n), theta + angle, "epithelial")
    # Stroma: sparse elongated fibroblast nuclei.
    xy = rng.uniform(0, 1, (rng.poisson(350e-6 * lab.size), 2)) * np.array([lab.shape[1], lab.shape[0]])
    xy = xy[lab[xy[:, 1].astype(int), xy[:, 0].astype(int)] == STR]
    a, b = rng.uniform(4.0, 7.0, len(xy)), rng.uniform(1.0, 1.6, len(xy))
    add(xy, a, b, np.full(len(xy), fibres), "connective")
    return Nuclei(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def bin_fractions(lab: np.ndarray, bin_size_um: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Fraction of each label code among the 1 µm cells of every bin (cell centres decide), ``(n_bins, 7)``, on the
    largest grid of bins the map holds completely.
    """
    n_rows, n_cols = int(np.floor(lab.shape[0] / bin_size_um)), int(np.floor(lab.shape[1] / bin_size_um))
    rb = np.floor((np.arange(lab.shape[0]) + 0.5) / bin_size_um).astype(np.int64)
    cb = np.floor((np.arange(lab.shape[1]) + 0.5) / bin_size_um).astype(np.int64)
    rsel, csel = rb < n_rows, cb < n_cols
    flat = (rb[rsel, None] * n_cols + cb[None, csel]) * N_CODES + lab[np.ix_(rsel, csel)]
    counts = np.bincount(flat.ravel(), minlength=n_rows * n_cols * N_CODES).reshape(-1, N_CODES)
    return counts / counts.sum(axis=1, keepdims=True), (n_rows, n_cols)
