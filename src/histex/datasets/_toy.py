"""A procedural Visium section with ground truth on the bin grid.

Everything about the tissue (compartments, structures, nuclei, expression) is drawn in microns on a 1 µm label map,
so that the ground truth does not depend on the image resolution; only the rendering of the picture and its pixel
noise depend on ``mpp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from histex._validation import check_int, check_key, check_number, check_seed
from histex.geometry import VISIUM_PITCH_UM, VISIUM_SPOT_DIAMETER_UM, BinGrid, hex_lattice
from histex.sim._hidden import gradient_field
from histex.sim._layout import visium_like
from histex.sim._pseudo import hex_spots, sum_into_spots
from histex.sim._stain import check_factor, vary_stain

if TYPE_CHECKING:
    from spatialdata import SpatialData

COMPARTMENTS: tuple[str, ...] = ("background", "stroma", "epithelium", "lumen", "immune", "tumour")

# Codes of the internal 1 µm label map. The two tumour clones are separate codes (they differ in expression) but
# one compartment, and they are drawn identically in the image.
_BG, _STR, _EPI, _LUM, _IMM, _TUM_A, _TUM_B = range(7)
_N_CODES = 7
_TISSUE_CODES = (_STR, _EPI, _LUM, _IMM, _TUM_A, _TUM_B)
_CODE_TO_COMPARTMENT = np.array([0, 1, 2, 3, 4, 5, 5])

# Gene groups: (prefix, share of the genes, codes where the group is a marker, summed rate per full bin there).
# "Hk" and "Grad" are expressed alike in every tissue code; clone genes only in their clone, with no leakage.
_GROUPS: tuple[tuple[str, float, tuple[int, ...], float], ...] = (
    ("Hk", 0.12, _TISSUE_CODES, 20.0),
    ("Str", 0.14, (_STR,), 40.0),
    ("Epi", 0.14, (_EPI,), 45.0),
    ("Lum", 0.08, (_LUM,), 12.0),
    ("Imm", 0.14, (_IMM,), 45.0),
    ("Tum", 0.14, (_TUM_A, _TUM_B), 45.0),
    ("CloneA", 0.08, (_TUM_A,), 20.0),
    ("CloneB", 0.08, (_TUM_B,), 20.0),
    ("Grad", 0.08, _TISSUE_CODES, 15.0),
)
_LEAK = (0.1, 0.2)  # marker rate in other tissue compartments, as a fraction of the rate in its own

# Base colours (RGB) of the codes and of the nuclei.
_PALETTE = np.array(
    [
        (240, 238, 242),  # background
        (230, 160, 190),  # stroma
        (205, 148, 200),  # epithelial cytoplasm
        (245, 235, 240),  # lumen
        (185, 135, 195),  # immune aggregate, between nuclei
        (188, 128, 192),  # tumour cytoplasm, clone A
        (188, 128, 192),  # tumour cytoplasm, clone B (identical on purpose)
    ],
    dtype=np.float32,
)
_FIBRE_DELTA = np.array([-22.0, -38.0, -18.0], dtype=np.float32)  # eosin-dense collagen fibres
_GRAIN_DELTA = np.array([-12.0, -12.0, -7.0], dtype=np.float32)  # granular cytoplasm
_NUC_EPI = (90.0, 50.0, 130.0)
_NUC_IMM = (60.0, 40.0, 120.0)
_NUC_TUM = (120.0, 70.0, 150.0)
_NUC_FIB = (100.0, 60.0, 140.0)

_BLUR_UM = 0.5  # optical blur (Gaussian sigma)
_NOISE_HALF_WIDTH = 8  # per-pixel noise: uniform integers in +-8 grey levels (sd about 5), cheap to draw
_NUC_EDGE_UM = 0.6  # width of the soft nuclear edge


@dataclass(frozen=True)
class _Texture:
    """Parameters of the stroma fibres and the cytoplasm grain, in microns (drawn once per section)."""

    fibre_k: float  # 2 pi / fibre spacing
    theta: tuple[float, float]  # direction across the fibres of the two fibre families
    wave_amp: float  # waviness of the fibres
    wave_period: tuple[float, float, float, float]  # x and y wave periods of family 1 and family 2
    wave_phase: tuple[float, float, float, float]
    mix_period: tuple[float, float]  # scale of the patches where one family dominates
    mix_phase: tuple[float, float]
    dash_k: float  # breaks fibres into dashes along their length
    grain: tuple[float, float, float, float]  # (kx, ky) of two grain waves


@dataclass
class _Nuclei:
    """Filled ellipses in microns: centres, semi-axes (a along ``angle``), colour and opacity."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    colour: np.ndarray  # (n, 3)
    opacity: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[_Nuclei]) -> _Nuclei:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


def toy(
    *,
    size_um: float | tuple[float, float] = 1600.0,
    n_genes: int = 200,
    mpp: float = 0.5,
    seed: int = 0,
    bin_size_um: float = 8.0,
    dataset_id: str = "toy",
    programme_seed: int | None = None,
    stain: tuple[float, float] = (1.0, 1.0),
) -> SpatialData:
    """A procedural Visium section with H&E-like image and ground truth on square bins.

    The section is laid out exactly as :func:`spatialdata_io.visium` reads a Space Ranger output (full-resolution
    image, spot circles, spot counts in one coordinate system), and it carries its own ground truth: the expression
    of every bin of ``bin_size_um``, from which the spot counts were summed (the pseudo-Visium protocol). The tissue
    is drawn so that super-resolution can be told apart from interpolation: glands, immune aggregates and their
    markers are smaller than a spot but visible in the image, while tumour clones and a smooth gradient are visible
    only in the expression.

    Parameters
    ----------
    size_um
        Edge of the square section in µm, or ``(height, width)``; at least 300 µm.
    n_genes
        Number of genes, at least 9 (one per gene group, see Notes).
    mpp
        Microns per pixel of the full-resolution image (Visium H&E scans are about 0.25-0.75).
    seed
        Seed of everything random. The same seed gives identical output; the tissue, the expression and the spot
        layout are the same at every ``mpp``.
    bin_size_um
        Edge of the ground-truth bins in µm.
    dataset_id
        Name of the coordinate system and prefix of the element names, as in :func:`spatialdata_io.visium`.
    programme_seed
        Seed of the expression programmes alone (the gene rates of every compartment, ``uns["programmes"]``), in
        place of ``seed``: sections of different ``seed`` and one ``programme_seed`` share their genes and
        programmes exactly, while tissue layout, spots, counts and image differ. ``None``: ``seed`` (the same as
        ``programme_seed=seed``).
    stain
        ``(haematoxylin, eosin)``: factors on the amount of each stain in the image (:func:`histex.sim.vary_stain`),
        positive; ``(1, 1)`` leaves it as rendered. Only the image changes, not the tissue or the counts.

    Returns
    -------
    :class:`spatialdata.SpatialData` with one coordinate system, ``dataset_id``, in which every element has an
    identity transformation (image pixels):

    ``images[f"{dataset_id}_full_image"]``
        RGB ``uint8`` image, ``("c", "y", "x")`` with channels ``r, g, b``, of ``round(size_um / mpp)`` pixels per
        side, multiscale (scale factors 2, 2).
    ``shapes[dataset_id]``
        Spot circles (points with ``radius`` = 27.5 µm in pixels) on a 100 µm hexagonal lattice, indexed by
        ``spot_id``: every lattice site whose centre lies in tissue and whose whole disk lies inside the area covered
        by complete bins.
    ``tables["table"]``
        Spot counts (``X``: CSR float32 of integer counts), annotating ``shapes[dataset_id]`` (``region``,
        ``spot_id``). ``obs``: ``in_tissue``, ``array_row``, ``array_col`` (Visium lattice indices: ``array_col``
        steps by 2, odd rows are offset by 1), ``spot_id``, ``region``. ``var``: ``gene_ids``, ``feature_types``,
        ``genome``. ``obsm["spatial"]``: spot centres in pixels ``(x, y)``. ``uns["spatial"][dataset_id]
        ["scalefactors"]``: ``spot_diameter_fullres``, ``fiducial_diameter_fullres``, ``tissue_hires_scalef`` and
        ``tissue_lowres_scalef`` (both 1). There is no ``microns_per_pixel``: as with real data, derive it from the
        lattice pitch.
    ``shapes["truth_bins"]``
        One square polygon in pixels per stored bin (every bin of
        ``BinGrid.for_image((H, W), mpp=mpp, bin_size_um=bin_size_um)`` that holds any tissue), indexed by
        ``instance_id``.
    ``tables["truth"]``
        Ground truth annotating ``shapes["truth_bins"]`` (``region``, ``instance_id``). ``X``: CSR float32 of the
        integer counts (Poisson draws); ``layers["expected"]``: dense float32 expected counts. ``obs``:
        ``array_row``, ``array_col`` (bin grid indices), ``instance_id``, ``region``, ``tissue_fraction``,
        ``in_tissue`` (``tissue_fraction >= 0.5``), ``compartment`` (dominant compartment), ``clone`` (``"A"``,
        ``"B"`` where tumour cells are present, else ``"none"``), ``gradient`` (the gradient field).
        ``obsm["spatial"]``: bin centres in pixels ``(x, y)``; ``obsm["compartment_fractions"]``: DataFrame of the
        fraction of each compartment in each bin. ``var`` adds ``group`` (the gene group).
        ``uns["programmes"]``: DataFrame compartments x genes of rates per fully covered bin;
        ``uns["toy"]``: the parameters (with ``programme_seed``, the seed the programmes came from, and ``stain``).

    Notes
    -----
    *Tissue.* A 1 µm label map (independent of ``mpp``) holds a smooth irregular tissue blob (about two thirds of the
    section, with a white margin) of stroma, in which are placed tumour nests (two or more irregular blobs 100-300 µm
    across; those left of the centre line are clone A, the others clone B), glands (an epithelial ring 8-12 µm thick
    around a lumen, outer radius 20-45 µm) and immune aggregates (ellipses of radius 15-40 µm). Glands and
    aggregates number several dozen at the default size and scale with the tissue area.

    *Expression.* Genes are split into groups named ``Hk_01`` (housekeeping, in all tissue), ``Str_01``,
    ``Epi_01``, ``Lum_01``, ``Imm_01``, ``Tum_01`` (markers of a compartment, expressed 5-10 times lower in the
    other tissue compartments), ``CloneA_01`` and ``CloneB_01`` (only in the tumour cells of that clone) and
    ``Grad_01`` (in all tissue, scaled by a smooth gradient field with mean about 1). A fully covered tissue bin
    expects about 70-130 UMIs. The expected counts of a bin are the sum over compartments of (fraction of its 1 µm
    cells in the compartment) x (programme rate), with the ``Grad`` genes multiplied by the field at the bin
    centre; the truth counts are Poisson draws of them. In ``uns["programmes"]`` the ``tumour`` row lists each
    clone gene at the rate of the clone that expresses it, and the ``Grad`` genes before the field.

    *Spots.* The count of a spot is the sum of the truth counts of the bins whose centres lie within 27.5 µm of the
    spot centre (:func:`histex.geometry.disk_masks` on the spot centres in bin coordinates), so spots and truth agree
    exactly.

    *Image.* Rendered at ``mpp`` from the label map (nearest 1 µm cell for each pixel centre) plus detail drawn at
    the image resolution: wavy eosin fibres in the stroma, granular cytoplasm, nuclei as filled ellipses (packed,
    small and very dark in immune aggregates; large and pleomorphic in tumour; basal along the gland rings; sparse
    and elongated in the stroma), a mild blur and pixel noise. Nuclei are placed and sized in microns, so the
    picture looks the same at every ``mpp``. The two tumour clones and the gradient are invisible in the image.

    Examples
    --------
    >>> from histex.datasets import toy
    >>> sdata = toy(size_um=800, n_genes=50)
    >>> sdata.coordinate_systems
    ['toy']
    >>> sdata["table"].n_vars, sdata["truth"].n_vars  # spots x genes, and 8 µm bins x genes (the truth)
    (50, 50)
    >>> list(sdata["truth"].obs["compartment"].cat.categories)
    ['background', 'stroma', 'epithelium', 'lumen', 'immune', 'tumour']
    """
    h_um, w_um = _size_hw(size_um)
    mpp = check_number("mpp", mpp, minimum=0, above=True)
    bin_size_um = check_number("bin_size_um", bin_size_um, minimum=0, above=True)
    seed = check_seed(seed)
    programme_seed = None if programme_seed is None else check_seed(programme_seed, name="programme_seed")
    n_genes = check_int("n_genes", n_genes, minimum=None)
    if n_genes < len(_GROUPS):
        raise ValueError(f"n_genes must be at least {len(_GROUPS)} (one per gene group), got {n_genes}.")
    check_key("dataset_id", dataset_id)
    if dataset_id == "truth_bins":
        raise ValueError(f"dataset_id must be a non-empty name other than 'truth_bins', got {dataset_id!r}.")
    if isinstance(stain, str) or np.ndim(stain) != 1 or len(stain) != 2:
        raise ValueError(f"stain must be (haematoxylin, eosin), two positive factors (1 keeps a stain), got {stain!r}.")
    check_factor("stain[0] (haematoxylin)", stain[0])
    check_factor("stain[1] (eosin)", stain[1])

    # Independent streams, so that the image noise (which depends on mpp) cannot change the tissue or the counts.
    rng_tissue, rng_genes, rng_counts, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    if programme_seed is not None:  # the same stream as seed=programme_seed would give, so the two agree
        rng_genes = np.random.default_rng(np.random.SeedSequence(programme_seed).spawn(4)[1])

    # Tissue on a 1 µm grid a little larger than the section, so that every complete bin lies inside it.
    shape_f = (int(np.ceil(h_um)) + 2, int(np.ceil(w_um)) + 2)
    lab = np.where(_tissue_mask(shape_f, h_um, w_um, rng_tissue), _STR, _BG).astype(np.int8)
    glands = _paint_structures(lab, h_um, w_um, rng_tissue)
    texture = _draw_texture(rng_tissue)
    nuclei = _place_nuclei(lab, glands, texture, rng_tissue)
    lattice_offset = (rng_tissue.uniform(0, VISIUM_PITCH_UM), rng_tissue.uniform(0, VISIUM_PITCH_UM * np.sqrt(3) / 2))
    grad_params = (rng_tissue.uniform(0, 2 * np.pi), rng_tissue.uniform(0.8, 1.6), rng_tissue.uniform(0, 2 * np.pi))

    # Ground truth on the largest bin grid the label map holds; the grid of this mpp is its top-left corner, so the
    # truth of a bin is the same at every mpp.
    names, groups, rates = _programmes(n_genes, rng_genes)
    fractions, master_shape = _bin_fractions(lab, bin_size_um)
    tissue_fraction = 1.0 - fractions[:, _BG]
    t_idx = np.flatnonzero(tissue_fraction > 0)
    t_rows, t_cols = np.divmod(t_idx, master_shape[1])
    centres_um = np.stack([(t_cols + 0.5) * bin_size_um, (t_rows + 0.5) * bin_size_um], axis=1)
    gradient = gradient_field(centres_um, h_um, w_um, *grad_params)
    expected = _expected_counts(fractions[t_idx], rates, groups == "Grad", gradient)
    counts = rng_counts.poisson(expected)

    shape_px = (round(h_um / mpp), round(w_um / mpp))
    grid = BinGrid.for_image(shape_px, mpp=mpp, bin_size_um=bin_size_um)
    if grid.n_rows > master_shape[0] or grid.n_cols > master_shape[1]:  # pragma: no cover - guarded by the margin
        raise RuntimeError("The bin grid exceeds the label map.")
    keep = (t_rows < grid.n_rows) & (t_cols < grid.n_cols)
    truth = _TruthBins(
        rows=t_rows[keep],
        cols=t_cols[keep],
        fractions=fractions[t_idx[keep]],
        gradient=gradient[keep],
        expected=expected[keep].astype(np.float32),
        counts=sparse.csr_matrix(counts[keep].astype(np.float32)),
    )

    def in_tissue(xy_um: np.ndarray) -> np.ndarray:  # the label at the site's centre, on the 1 µm map
        iy = np.clip(xy_um[:, 1].astype(int), 0, shape_f[0] - 1)
        ix = np.clip(xy_um[:, 0].astype(int), 0, shape_f[1] - 1)
        return lab[iy, ix] != _BG

    spot_xy_px, array_rc = hex_spots(in_tissue, grid, mpp, offset_um=lattice_offset)
    if len(spot_xy_px) == 0:
        raise ValueError(f"No spot fits in the tissue of a {h_um} x {w_um} µm section; make it larger.")
    spot_counts = sum_into_spots(
        spot_xy_px, grid, truth.rows, truth.cols, truth.counts, radius_px=VISIUM_SPOT_DIAMETER_UM / 2 / mpp
    )

    image = _render_image(lab, nuclei, texture, mpp, shape_px, rng_noise)
    if tuple(stain) != (1, 1):
        image = np.moveaxis(vary_stain(np.moveaxis(image, 0, -1), haematoxylin=stain[0], eosin=stain[1]), -1, 0)
        image = np.ascontiguousarray(image)
    params = {
        "size_um": float(size_um) if np.isscalar(size_um) else [h_um, w_um],
        "mpp": float(mpp),
        "seed": int(seed),
        "bin_size_um": float(bin_size_um),
        "n_genes": int(n_genes),
        "pitch_um": VISIUM_PITCH_UM,
        "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
        "dataset_id": dataset_id,
        "programme_seed": int(seed if programme_seed is None else programme_seed),
        "stain": [float(stain[0]), float(stain[1])],
    }
    return _assemble(
        dataset_id=dataset_id,
        image=image,
        grid=grid,
        mpp=mpp,
        spot_xy_px=spot_xy_px,
        array_rc=array_rc,
        spot_counts=spot_counts,
        truth=truth,
        names=names,
        groups=groups,
        rates=rates,
        params=params,
    )


# --- sizes and genes -------------------------------------------------------------------------------------------------


def _size_hw(size_um: float | Sequence[float]) -> tuple[float, float]:
    """``(height, width)`` in µm from a scalar or a pair, checked."""
    if np.isscalar(size_um):
        h = w = float(size_um)
    else:
        if len(size_um) != 2:
            raise ValueError(f"size_um must be a number or (height, width), got {size_um!r}.")
        h, w = (float(v) for v in size_um)
    if min(h, w) < 300:
        raise ValueError(f"size_um must be at least 300 µm per side, got {size_um!r}.")
    return h, w


def _allocate(n: int, shares: np.ndarray) -> np.ndarray:
    """Split ``n`` items over groups in proportion to ``shares``, at least one each (largest remainders)."""
    k = len(shares)
    raw = np.asarray(shares, dtype=float) / np.sum(shares) * (n - k)
    sizes = np.floor(raw).astype(int)
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[: n - k - sizes.sum()]] += 1
    return sizes + 1


def _programmes(n_genes: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Gene names, their group, and the rate of every gene in every label code per fully covered bin ``(7, G)``."""
    sizes = _allocate(n_genes, np.array([g[1] for g in _GROUPS]))
    names: list[str] = []
    groups: list[str] = []
    rates = np.zeros((_N_CODES, n_genes))
    start = 0
    for (prefix, _, own, budget), size in zip(_GROUPS, sizes, strict=True):
        cols = slice(start, start + size)
        width = max(2, len(str(size)))
        names += [f"{prefix}_{j + 1:0{width}d}" for j in range(size)]
        groups += [prefix] * size
        # A few strong markers and a tail of weaker ones, summing to the group's budget.
        profile = (np.arange(size) + 1.0) ** -0.7 * rng.lognormal(0.0, 0.3, size)
        level = budget * profile / profile.sum()
        for code in own:
            rates[code, cols] = level
        if len(own) < len(_TISSUE_CODES) and not prefix.startswith("Clone"):
            # One leak per compartment, so that both tumour clones get the same one.
            own_comps = set(_CODE_TO_COMPARTMENT[list(own)])
            for comp in sorted(set(_CODE_TO_COMPARTMENT[list(_TISSUE_CODES)]) - own_comps):
                rates[_CODE_TO_COMPARTMENT == comp, cols] = level * rng.uniform(*_LEAK, size)
        start += size
    return names, np.array(groups), rates


# --- tissue ----------------------------------------------------------------------------------------------------------


def _interp_matrix(n_fine: int, n_coarse: int, step: float) -> np.ndarray:
    """Linear interpolation from coarse nodes at ``k * step`` to fine cell centres ``i + 0.5``, as a matrix."""
    p = (np.arange(n_fine) + 0.5) / step
    i0 = np.minimum(np.floor(p).astype(int), n_coarse - 2)
    t = p - i0
    m = np.zeros((n_fine, n_coarse))
    m[np.arange(n_fine), i0] = 1 - t
    m[np.arange(n_fine), i0 + 1] = t
    return m


def _tissue_mask(shape_f: tuple[int, int], h_um: float, w_um: float, rng: np.random.Generator) -> np.ndarray:
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


def _stamp_blob(lab: np.ndarray, centre: tuple[float, float], blob: tuple, code: int, where: int = _STR) -> None:
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


def _paint_structures(lab: np.ndarray, h_um: float, w_um: float, rng: np.random.Generator) -> np.ndarray:
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
            if _fits(lab, cy, cx, reach + 20.0, _STR):
                _stamp_blob(lab, (cy, cx), (radius, ecc, angle, harm), _TUM_A if left else _TUM_B)
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
            if _fits(lab, cy, cx, reach + 6.0, _STR):
                break
        else:
            continue
        if kind == 0:
            _stamp_blob(lab, (cy, cx), (outer, ecc, angle, harm), _EPI)
            _stamp_blob(lab, (cy, cx), (outer - wall, ecc, angle, harm), _LUM, where=_EPI)
            glands.append((cy, cx, outer, wall, ecc, angle))
        else:
            _stamp_blob(lab, (cy, cx), (outer, ecc, angle, harm), _IMM)
    return np.array(glands).reshape(-1, 6)


# --- image detail, in microns ----------------------------------------------------------------------------------------


def _draw_texture(rng: np.random.Generator) -> _Texture:
    """Random fibre and grain parameters: fibres 5-7 µm apart in two families at least 45° apart."""
    th1 = rng.uniform(0, np.pi)
    th2 = th1 + rng.uniform(np.pi / 4, 3 * np.pi / 4)
    g1, g2 = rng.uniform(0, 2 * np.pi, 2)
    kg = 2 * np.pi / rng.uniform(2.5, 4.0, 2)
    return _Texture(
        fibre_k=2 * np.pi / rng.uniform(5.0, 7.0),
        theta=(th1, th2),
        wave_amp=rng.uniform(3.0, 8.0),
        wave_period=tuple(rng.uniform(60, 140, 4)),
        wave_phase=tuple(rng.uniform(0, 2 * np.pi, 4)),
        mix_period=tuple(rng.uniform(300, 600, 2)),
        mix_phase=tuple(rng.uniform(0, 2 * np.pi, 2)),
        dash_k=2 * np.pi / rng.uniform(15, 30),
        grain=(kg[0] * np.cos(g1), kg[0] * np.sin(g1), kg[1] * np.cos(g2), kg[1] * np.sin(g2)),
    )


def _fibre_phase(t: _Texture, family: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The phase of a fibre family as separable ``(f(x), g(y))`` terms: fibres are the level lines of ``f + g``."""
    th, k, amp = t.theta[family], t.fibre_k, t.wave_amp
    px, py = t.wave_period[2 * family : 2 * family + 2]
    qx, qy = t.wave_phase[2 * family : 2 * family + 2]
    fx = k * np.cos(th) * x + k * amp * np.sin(2 * np.pi * x / px + qx)
    gy = k * np.sin(th) * y + k * amp * np.sin(2 * np.pi * y / py + qy)
    return fx, gy


def _fibre_mix(t: _Texture, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Separable terms ``(m(x), n(y))`` of the weight of fibre family 0, ``clip(0.5 + m + n, 0, 1)``: patches of
    either orientation a few hundred µm across, with narrow crossings between them.
    """
    return (
        3 * np.sin(2 * np.pi * x / t.mix_period[0] + t.mix_phase[0]),
        3 * np.sin(2 * np.pi * y / t.mix_period[1] + t.mix_phase[1]),
    )


def _fibre_angle(t: _Texture, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Direction along the locally dominant fibre family at points ``(x, y)``."""
    mx, my = _fibre_mix(t, x, y)
    family = np.where(mx + my > 0, 0, 1)
    th = np.asarray(t.theta)[family]
    px = np.asarray(t.wave_period)[2 * family]
    py = np.asarray(t.wave_period)[2 * family + 1]
    qx = np.asarray(t.wave_phase)[2 * family]
    qy = np.asarray(t.wave_phase)[2 * family + 1]
    gx = np.cos(th) + t.wave_amp * 2 * np.pi / px * np.cos(2 * np.pi * x / px + qx)
    gy = np.sin(th) + t.wave_amp * 2 * np.pi / py * np.cos(2 * np.pi * y / py + qy)
    return np.arctan2(gy, gx) + np.pi / 2


def _lattice_points(
    lab: np.ndarray, pitch: float, jitter: float, codes: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """A jittered hexagonal lattice of ``(x, y)`` points in µm, kept where the label map holds one of ``codes``."""
    pts = hex_lattice(lab.shape[1], lab.shape[0], pitch=pitch, offset=tuple(rng.uniform(0, pitch, 2)))
    pts = pts + rng.uniform(-jitter, jitter, pts.shape)
    iy = np.clip(pts[:, 1].astype(int), 0, lab.shape[0] - 1)
    ix = np.clip(pts[:, 0].astype(int), 0, lab.shape[1] - 1)
    return pts[np.isin(lab[iy, ix], codes)]


def _nuclei(
    xy: np.ndarray, a: np.ndarray, b: np.ndarray, angle: np.ndarray, colour, opacity: float, rng: np.random.Generator
) -> _Nuclei:
    shade = rng.uniform(0.9, 1.1, (len(xy), 1))  # nucleus-to-nucleus variation of the haematoxylin
    rgb = np.asarray(colour)[None, :] * shade
    return _Nuclei(xy[:, 0], xy[:, 1], a, b, angle, rgb, np.full(len(xy), opacity))


def _place_nuclei(lab: np.ndarray, glands: np.ndarray, tex: _Texture, rng: np.random.Generator) -> _Nuclei:
    """Nuclei of every compartment, in µm."""
    parts = []
    # Immune aggregates: packed small round very dark nuclei.
    xy = _lattice_points(lab, 6.4, 0.9, (_IMM,), rng)
    a = rng.uniform(2.6, 3.3, len(xy))
    b = a * rng.uniform(0.85, 1.0, len(xy))
    parts.append(_nuclei(xy, a, b, rng.uniform(0, np.pi, len(xy)), _NUC_IMM, 0.95, rng))
    # Tumour: large pleomorphic nuclei, drawn the same way in both clones.
    xy = _lattice_points(lab, 12.5, 2.5, (_TUM_A, _TUM_B), rng)
    a = rng.uniform(4.0, 6.0, len(xy))
    b = a * rng.uniform(0.6, 0.95, len(xy))
    parts.append(_nuclei(xy, a, b, rng.uniform(0, np.pi, len(xy)), _NUC_TUM, 0.9, rng))
    # Glands: columnar nuclei near the outer (basal) side of the ring, pointing to the lumen.
    for cy, cx, outer, wall, ecc, angle in glands:
        n = max(6, round(2 * np.pi * (outer - wall / 2) / 6.0))
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.05, n)
        rho = outer - wall * rng.uniform(0.35, 0.5, n)
        u, v = rho * np.cos(theta) * (1 + ecc), rho * np.sin(theta) * (1 - ecc)
        c, s = np.cos(angle), np.sin(angle)
        xy = np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)
        a, b = rng.uniform(3.0, 4.0, n), rng.uniform(1.8, 2.4, n)
        parts.append(_nuclei(xy, a, b, theta + angle, _NUC_EPI, 0.9, rng))
    # Stroma: sparse elongated fibroblast nuclei along the fibres.
    xy = rng.uniform(0, 1, (rng.poisson(350e-6 * lab.size), 2)) * np.array([lab.shape[1], lab.shape[0]])
    xy = xy[lab[xy[:, 1].astype(int), xy[:, 0].astype(int)] == _STR]
    a, b = rng.uniform(4.0, 7.0, len(xy)), rng.uniform(1.0, 1.6, len(xy))
    parts.append(_nuclei(xy, a, b, _fibre_angle(tex, xy[:, 0], xy[:, 1]), _NUC_FIB, 0.85, rng))
    return _Nuclei.concat(parts)


# --- expression on bins ----------------------------------------------------------------------------------------------


def _bin_fractions(lab: np.ndarray, bin_size_um: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Fraction of each label code among the 1 µm cells of every bin (cell centres decide), ``(n_bins, 7)``, on the
    largest grid of bins the map holds completely.
    """
    n_rows, n_cols = int(np.floor(lab.shape[0] / bin_size_um)), int(np.floor(lab.shape[1] / bin_size_um))
    rb = np.floor((np.arange(lab.shape[0]) + 0.5) / bin_size_um).astype(np.int64)
    cb = np.floor((np.arange(lab.shape[1]) + 0.5) / bin_size_um).astype(np.int64)
    rsel, csel = rb < n_rows, cb < n_cols
    flat = (rb[rsel, None] * n_cols + cb[None, csel]) * _N_CODES + lab[np.ix_(rsel, csel)]
    counts = np.bincount(flat.ravel(), minlength=n_rows * n_cols * _N_CODES).reshape(-1, _N_CODES)
    return counts / counts.sum(axis=1, keepdims=True), (n_rows, n_cols)


def _expected_counts(fractions: np.ndarray, rates: np.ndarray, is_grad: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Expected counts per bin: compartment fractions times programmes, gradient genes scaled by the field."""
    expected = fractions @ rates
    expected[:, is_grad] *= gradient[:, None]
    return expected


@dataclass
class _TruthBins:
    """The stored truth bins (those with tissue) of the bin grid of the image, in row-major order."""

    rows: np.ndarray
    cols: np.ndarray
    fractions: np.ndarray  # (n, 7) over label codes
    gradient: np.ndarray
    expected: np.ndarray
    counts: sparse.csr_matrix


# --- spots -----------------------------------------------------------------------------------------------------------


# --- image -----------------------------------------------------------------------------------------------------------


def _render_image(
    lab: np.ndarray, nuc: _Nuclei, tex: _Texture, mpp: float, shape_px: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """The H&E-like ``(3, H, W)`` uint8 image, rendered in strips of rows to keep memory small."""
    height, width = shape_px
    out = np.empty((3, height, width), dtype=np.uint8)
    sigma = _BLUR_UM / mpp
    halo = int(np.ceil(3 * sigma)) + 1
    palette = _PALETTE.T.copy()  # (3, codes)
    x = (np.arange(width) + 0.5) * mpp
    ix = np.clip(x.astype(int), 0, lab.shape[1] - 1)
    xs = _texture_terms(tex, x)
    reach = np.maximum(nuc.a, nuc.b) + _NUC_EDGE_UM
    step = max(64, 2_000_000 // max(width, 1))
    for r0 in range(0, height, step):
        r1 = min(height, r0 + step)
        e0, e1 = max(0, r0 - halo), min(height, r1 + halo)
        y = (np.arange(e0, e1) + 0.5) * mpp
        lbl = lab[np.clip(y.astype(int), 0, lab.shape[0] - 1)][:, ix]
        fibre, grain = _texture(xs, _texture_terms(tex, y))
        fibre *= lbl == _STR
        grain *= (lbl == _EPI) | (lbl == _IMM) | (lbl == _TUM_A) | (lbl == _TUM_B)
        img = np.empty((3, e1 - e0, width), dtype=np.float32)
        for c in range(3):
            np.take(palette[c], lbl, out=img[c])
            img[c] += fibre * _FIBRE_DELTA[c] + grain * _GRAIN_DELTA[c]

        lo, hi = e0 * mpp, e1 * mpp
        for k in np.flatnonzero((nuc.cy + reach > lo) & (nuc.cy - reach < hi)):
            _stamp_nucleus(img, e0, nuc, k, reach[k], mpp)

        img = ndimage.gaussian_filter(img, sigma=(0, sigma, sigma), mode="nearest", truncate=3.0)
        core = img[:, r0 - e0 : r1 - e0]
        core += rng.integers(-_NOISE_HALF_WIDTH, _NOISE_HALF_WIDTH + 1, core.shape, dtype=np.int8)
        np.clip(core, 0, 255, out=core)
        out[:, r0:r1] = np.rint(core)
    return out


def _texture_terms(tex: _Texture, v: np.ndarray) -> dict[str, np.ndarray]:
    """Per-axis factors of the texture along one axis (``v`` in µm); :func:`_texture` combines an x and a y set.

    Every texture is a sine of a sum ``f(x) + g(y)``; expanding ``sin(f + g) = sin f cos g + cos f sin g`` leaves
    only products of vectors for the 2-D work, which is several times cheaper than a 2-D sine.
    """
    th0, th1 = tex.theta
    kx0, ky0, kx1, ky1 = tex.grain
    phases = {
        "f0": _fibre_phase(tex, 0, v, v),
        "f1": _fibre_phase(tex, 1, v, v),
        "d0": (-np.sin(th0) * tex.dash_k * v, np.cos(th0) * tex.dash_k * v),
        "d1": (-np.sin(th1) * tex.dash_k * v, np.cos(th1) * tex.dash_k * v),
        "g0": (kx0 * v, ky0 * v),
        "g1": (kx1 * v, ky1 * v),
    }
    terms = {key: tuple(_sin_cos(p) for p in pair) for key, pair in phases.items()}
    terms["mix"] = tuple(np.asarray(m, dtype=np.float32) for m in _fibre_mix(tex, v, v))
    return terms


def _sin_cos(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.sin(p).astype(np.float32), np.cos(p).astype(np.float32)


def _sin_sum(xt: tuple, yt: tuple) -> np.ndarray:
    """``sin(f(x) + g(y))`` on the grid, from ``(sin f, cos f)`` of x and ``(sin g, cos g)`` of y."""
    (sx, cx), (sy, cy) = xt[0], yt[1]
    return sx[None, :] * cy[:, None] + cx[None, :] * sy[:, None]


def _texture(xs: dict, ys: dict) -> tuple[np.ndarray, np.ndarray]:
    """Stroma fibre and cytoplasm grain intensities (about -1..1) on the ``(y, x)`` grid."""
    # Two families of wavy fibres, each dominating in patches, broken into dashes along their length.
    w = np.clip(0.5 + xs["mix"][0][None, :] + ys["mix"][1][:, None], 0.0, 1.0)
    f0 = _sin_sum(xs["f0"], ys["f0"]) * (0.65 + 0.35 * _sin_sum(xs["d0"], ys["d0"]))
    f1 = _sin_sum(xs["f1"], ys["f1"]) * (0.65 + 0.35 * _sin_sum(xs["d1"], ys["d1"]))
    fibre = f1 + w * (f0 - f1)
    grain = _sin_sum(xs["g0"], ys["g0"]) * _sin_sum(xs["g1"], ys["g1"])
    return fibre, grain


def _stamp_nucleus(img: np.ndarray, row0: int, nuc: _Nuclei, k: int, reach: float, mpp: float) -> None:
    """Blend one soft-edged filled ellipse into a ``(3, rows, W)`` strip whose first row is image row ``row0``."""
    cy, cx = nuc.cy[k], nuc.cx[k]
    y0 = max(row0, int(np.floor((cy - reach) / mpp)))
    y1 = min(row0 + img.shape[1], int(np.ceil((cy + reach) / mpp)) + 1)
    x0 = max(0, int(np.floor((cx - reach) / mpp)))
    x1 = min(img.shape[2], int(np.ceil((cx + reach) / mpp)) + 1)
    if y1 <= y0 or x1 <= x0:
        return
    dy = (np.arange(y0, y1)[:, None] + 0.5) * mpp - cy
    dx = (np.arange(x0, x1)[None, :] + 0.5) * mpp - cx
    c, s = np.cos(nuc.angle[k]), np.sin(nuc.angle[k])
    rn = np.hypot((dx * c + dy * s) / nuc.a[k], (-dx * s + dy * c) / nuc.b[k])
    alpha = (np.clip((1 - rn) * nuc.b[k] / _NUC_EDGE_UM + 0.5, 0, 1) * nuc.opacity[k]).astype(np.float32)
    sub = img[:, y0 - row0 : y1 - row0, x0:x1]
    sub += alpha[None] * (nuc.colour[k].astype(np.float32)[:, None, None] - sub)


# --- SpatialData -----------------------------------------------------------------------------------------------------


def _assemble(
    *,
    dataset_id: str,
    image: np.ndarray,
    grid: BinGrid,
    mpp: float,
    spot_xy_px: np.ndarray,
    array_rc: np.ndarray,
    spot_counts: sparse.csr_matrix,
    truth: _TruthBins,
    names: list[str],
    groups: np.ndarray,
    rates: np.ndarray,
    params: dict,
) -> SpatialData:
    """The section as :func:`histex.sim.visium_like` lays it out, with the toy's own record of its truth."""
    var = pd.DataFrame(
        {"gene_ids": [f"TOYG{i:05d}" for i in range(len(names))], "feature_types": "Gene Expression", "genome": "toy"},
        index=pd.Index(names),
    )
    comp = np.zeros((len(truth.rows), len(COMPARTMENTS)))
    np.add.at(comp.T, _CODE_TO_COMPARTMENT, truth.fractions.T)
    tumour_a, tumour_b = truth.fractions[:, _TUM_A], truth.fractions[:, _TUM_B]
    clone = np.where(tumour_a + tumour_b == 0, "none", np.where(tumour_a >= tumour_b, "A", "B"))
    tissue_fraction = 1.0 - comp[:, 0]
    truth_obs = pd.DataFrame(
        {
            "tissue_fraction": tissue_fraction,
            "in_tissue": tissue_fraction >= 0.5,
            "compartment": pd.Categorical.from_codes(np.argmax(comp, axis=1), categories=list(COMPARTMENTS)),
            "clone": pd.Categorical(clone, categories=["none", "A", "B"]),
            "gradient": truth.gradient,
        }
    )
    sdata = visium_like(
        dataset_id=dataset_id, image=image, mpp=mpp, grid=grid, spot_xy_px=spot_xy_px, array_rc=array_rc,
        spot_counts=spot_counts, var=var, truth_rows=truth.rows, truth_cols=truth.cols, truth_counts=truth.counts,
        truth_obs=truth_obs,
        # as Space Ranger before 2.0 writes them: no pixel size, so that histex derives it from the spot lattice
        scalefactors={"microns_per_pixel": None, "fiducial_diameter_fullres": VISIUM_SPOT_DIAMETER_UM / mpp * 1.6153846},
    )  # fmt: skip
    table = sdata.tables["truth"]
    table.var["group"] = pd.Categorical(groups, categories=[g[0] for g in _GROUPS])
    table.layers["expected"] = truth.expected
    table.obsm["compartment_fractions"] = pd.DataFrame(comp, index=table.obs_names, columns=list(COMPARTMENTS))
    programmes = rates[[_BG, _STR, _EPI, _LUM, _IMM, _TUM_A]].copy()
    programmes[-1] = np.maximum(rates[_TUM_A], rates[_TUM_B])
    table.uns["programmes"] = pd.DataFrame(programmes, index=list(COMPARTMENTS), columns=names)
    table.uns["toy"] = params
    return sdata
