"""A procedural Visium section with ground truth on the bin grid, built from the simulator's parts.

The tissue (compartments, structures, nuclei, expression) is drawn in microns on a 1 µm label map (``_tissue``), so
that the ground truth does not depend on the image resolution; :func:`histex.sim.paint_he` paints the picture at
``mpp``, :func:`histex.sim.hex_spots` and :func:`histex.sim.sum_into_spots` make the spots and
:func:`histex.sim.visium_like` lays the section out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from histex._validation import check_int, check_key, check_number, check_seed
from histex.datasets import _tissue as tissue
from histex.datasets._tissue import BG, EPI, IMM, LUM, N_CODES, STR, TISSUE_CODES, TUM_A, TUM_B
from histex.geometry import VISIUM_PITCH_UM, VISIUM_SPOT_DIAMETER_UM, BinGrid
from histex.sim import TissueLabels, hex_spots, paint_he, sum_into_spots, vary_stain, visium_like
from histex.sim._hidden import gradient_field
from histex.sim._stain import check_factor

if TYPE_CHECKING:
    from spatialdata import SpatialData

COMPARTMENTS: tuple[str, ...] = ("background", "stroma", "epithelium", "lumen", "immune", "tumour")
_CODE_TO_COMPARTMENT = np.array([0, 1, 2, 3, 4, 5, 5], dtype=np.int8)  # int8 like the label map it indexes by

# Gene groups: (prefix, share of the genes, codes where the group is a marker, summed rate per full bin there).
# "Hk" and "Grad" are expressed alike in every tissue code; clone genes only in their clone, with no leakage.
_GROUPS: tuple[tuple[str, float, tuple[int, ...], float], ...] = (
    ("Hk", 0.12, TISSUE_CODES, 20.0),
    ("Str", 0.14, (STR,), 40.0),
    ("Epi", 0.14, (EPI,), 45.0),
    ("Lum", 0.08, (LUM,), 12.0),
    ("Imm", 0.14, (IMM,), 45.0),
    ("Tum", 0.14, (TUM_A, TUM_B), 45.0),
    ("CloneA", 0.08, (TUM_A,), 20.0),
    ("CloneB", 0.08, (TUM_B,), 20.0),
    ("Grad", 0.08, TISSUE_CODES, 15.0),
)
_LEAK = (0.1, 0.2)  # marker rate in other tissue compartments, as a fraction of the rate in its own

# The toy's looks for paint_he. Its nuclei are the blue-purple of the Ruifrok-Johnston haematoxylin (the one the
# texture encoder unmixes with), as the toy's nuclei always were, not paint_he's redder purple of real nuclei: with
# that one the encoder reads part of every nucleus as eosin, and the demo's domains spill from the glands into the
# stroma. The shades are the stain amounts that best give (least squares in optical density) the toy's colours:
# stroma (230, 160, 190), epithelial cytoplasm (205, 148, 200), lumen (245, 235, 240), immune (185, 135, 195),
# tumour (188, 128, 192), and its nuclei (epithelial (90, 50, 130), immune (60, 40, 120), tumour (120, 70, 150),
# fibroblast (100, 60, 140), 85-95% over their cytoplasm); flat and without collagen fibres, so that 8 µm bins of
# one compartment look alike.
_STAINS = {"haematoxylin": (0.86, 0.93, 0.38)}
_TISSUE_SHADES = {
    "stroma": (0.02, 0.42, 0.0, 0.05, 0.0),
    "epithelium": (0.17, 0.32, 0.0, 0.05, 0.0),
    "lumen": (0.0, 0.03, 0.0, 0.05, 0.0),
    "immune": (0.29, 0.30, 0.0, 0.05, 0.0),
    "tumour": (0.27, 0.37, 0.0, 0.05, 0.0),
}
_NUCLEUS_SHADES = {
    "epithelial": (0.94, 0.42, 0.0, 0.0, 0.0),
    "inflammatory": (1.43, 0.23, 0.0, 0.0, 0.0),
    "neoplastic": (0.66, 0.40, 0.0, 0.0, 0.0),
    "connective": (0.78, 0.36, 0.0, 0.0, 0.0),
}


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

    *Image.* Painted at ``mpp`` by :func:`histex.sim.paint_he` from the label map (a :class:`histex.sim.TissueLabels`
    at 1 µm) and the nuclei as polygons, in the toy's own shades: stroma pink, epithelial cytoplasm a purpler pink,
    lumen near white, both tumour clones alike; nuclei a blue-purple (the Ruifrok-Johnston haematoxylin), packed,
    small and very dark in immune aggregates, large and paler in tumour, basal along the gland rings, sparse and
    elongated in the stroma. Nuclei are placed and sized in microns, so the picture looks the same at every ``mpp``.
    The two tumour clones and the gradient are invisible in the image.

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
    lab = np.where(tissue.tissue_mask(shape_f, h_um, w_um, rng_tissue), STR, BG).astype(np.int8)
    glands = tissue.place_structures(lab, h_um, w_um, rng_tissue)
    nuclei = tissue.place_nuclei(lab, glands, rng_tissue)
    lattice_offset = (rng_tissue.uniform(0, VISIUM_PITCH_UM), rng_tissue.uniform(0, VISIUM_PITCH_UM * np.sqrt(3) / 2))
    grad_params = (rng_tissue.uniform(0, 2 * np.pi), rng_tissue.uniform(0.8, 1.6), rng_tissue.uniform(0, 2 * np.pi))

    # Ground truth on the largest bin grid the label map holds; the grid of this mpp is its top-left corner, so the
    # truth of a bin is the same at every mpp.
    names, groups, rates = _programmes(n_genes, rng_genes)
    fractions, master_shape = tissue.bin_fractions(lab, bin_size_um)
    shape_px = (round(h_um / mpp), round(w_um / mpp))
    grid = BinGrid.for_image(shape_px, mpp=mpp, bin_size_um=bin_size_um)
    if grid.n_rows > master_shape[0] or grid.n_cols > master_shape[1]:  # pragma: no cover - guarded by the margin
        raise RuntimeError("The bin grid exceeds the label map.")
    t_idx = np.flatnonzero(fractions[:, BG] < 1)
    t_rows, t_cols = np.divmod(t_idx, master_shape[1])
    gradient = gradient_field(np.stack([t_cols + 0.5, t_rows + 0.5], axis=1) * bin_size_um, h_um, w_um, *grad_params)
    expected = fractions[t_idx] @ rates
    expected[:, groups == "Grad"] *= gradient[:, None]
    counts = rng_counts.poisson(expected)  # drawn on every bin of the map, so that the counts do not depend on mpp
    keep = (t_rows < grid.n_rows) & (t_cols < grid.n_cols)
    rows, cols, fractions = t_rows[keep], t_cols[keep], fractions[t_idx[keep]]
    truth_counts = sparse.csr_matrix(counts[keep].astype(np.float32))

    def in_tissue(xy_um: np.ndarray) -> np.ndarray:  # the label at the site's centre, on the 1 µm map
        iy = np.clip(xy_um[:, 1].astype(int), 0, shape_f[0] - 1)
        ix = np.clip(xy_um[:, 0].astype(int), 0, shape_f[1] - 1)
        return lab[iy, ix] != BG

    spot_xy_px, array_rc = hex_spots(in_tissue, grid, mpp, offset_um=lattice_offset)
    if len(spot_xy_px) == 0:
        raise ValueError(f"No spot fits in the tissue of a {h_um} x {w_um} µm section; make it larger.")
    radius_px = VISIUM_SPOT_DIAMETER_UM / 2 / mpp
    spot_counts = sum_into_spots(spot_xy_px, grid, rows, cols, truth_counts, radius_px=radius_px)

    image = _paint(lab, nuclei, mpp, shape_px, seed=int(rng_noise.integers(2**31)))
    if tuple(stain) != (1, 1):
        image = vary_stain(image, haematoxylin=stain[0], eosin=stain[1])
    var = pd.DataFrame(
        {"gene_ids": [f"TOYG{i:05d}" for i in range(n_genes)], "feature_types": "Gene Expression", "genome": "toy"},
        index=pd.Index(names),
    )
    comp = np.zeros((len(rows), len(COMPARTMENTS)))
    np.add.at(comp.T, _CODE_TO_COMPARTMENT, fractions.T)
    tumour_a, tumour_b = fractions[:, TUM_A], fractions[:, TUM_B]
    clone = np.where(tumour_a + tumour_b == 0, "none", np.where(tumour_a >= tumour_b, "A", "B"))
    truth_obs = pd.DataFrame(
        {
            "tissue_fraction": 1.0 - comp[:, 0],
            "in_tissue": 1.0 - comp[:, 0] >= 0.5,
            "compartment": pd.Categorical.from_codes(np.argmax(comp, axis=1), categories=list(COMPARTMENTS)),
            "clone": pd.Categorical(clone, categories=["none", "A", "B"]),
            "gradient": gradient[keep],
        }
    )
    sdata = visium_like(
        dataset_id=dataset_id, image=np.ascontiguousarray(np.moveaxis(image, -1, 0)), mpp=mpp, grid=grid,
        spot_xy_px=spot_xy_px, array_rc=array_rc, spot_counts=spot_counts, var=var, truth_rows=rows,
        truth_cols=cols, truth_counts=truth_counts, truth_obs=truth_obs,
        # as Space Ranger before 2.0 writes them: no pixel size, so that histex derives it from the spot lattice
        scalefactors={"microns_per_pixel": None, "fiducial_diameter_fullres": VISIUM_SPOT_DIAMETER_UM / mpp * 1.6153846},
    )  # fmt: skip
    table = sdata.tables["truth"]
    table.var["group"] = pd.Categorical(groups, categories=[g[0] for g in _GROUPS])
    table.layers["expected"] = expected[keep].astype(np.float32)
    table.obsm["compartment_fractions"] = pd.DataFrame(comp, index=table.obs_names, columns=list(COMPARTMENTS))
    programmes = rates[[BG, STR, EPI, LUM, IMM, TUM_A]].copy()
    programmes[-1] = np.maximum(rates[TUM_A], rates[TUM_B])
    table.uns["programmes"] = pd.DataFrame(programmes, index=list(COMPARTMENTS), columns=names)
    table.uns["toy"] = {
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
    return sdata


def _paint(lab: np.ndarray, nuclei: tissue.Nuclei, mpp: float, shape_px: tuple[int, int], seed: int) -> np.ndarray:
    """The H&E image ``(H, W, 3)`` of the label map and its nuclei, painted by :func:`histex.sim.paint_he`."""
    import geopandas as gpd

    regions = TissueLabels(_CODE_TO_COMPARTMENT[lab], COMPARTMENTS[1:], scale=1 / mpp)  # both clones: tumour
    polygons = gpd.GeoDataFrame({"class_name": nuclei.kind}, geometry=nuclei.polygons(mpp))
    height, width = shape_px
    return paint_he(
        polygons, regions, bounds=(0, 0, width, height), mpp=mpp, seed=seed,
        tissue_shades=_TISSUE_SHADES, nucleus_shades=_NUCLEUS_SHADES, stains=_STAINS,
    )  # fmt: skip


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
    rates = np.zeros((N_CODES, n_genes))
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
        if len(own) < len(TISSUE_CODES) and not prefix.startswith("Clone"):
            # One leak per compartment, so that both tumour clones get the same one.
            own_comps = set(_CODE_TO_COMPARTMENT[list(own)])
            for comp in sorted(set(_CODE_TO_COMPARTMENT[list(TISSUE_CODES)]) - own_comps):
                rates[_CODE_TO_COMPARTMENT == comp, cols] = level * rng.uniform(*_LEAK, size)
        start += size
    return names, np.array(groups), rates
