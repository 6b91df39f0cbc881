"""An H&E-like image painted from segmented nuclei and tissue regions, for slides that come as polygons without pixels.

Stains are mixed in optical density (Beer-Lambert): each pixel holds concentrations of haematoxylin, eosin and
blood, set by its tissue class and nucleus class with seeded textures, and its colour is ``glass * exp(-OD)``. The
frame is painted in strips of rows, so memory is the output (3 bytes/px) plus about 100 MB of strip temporaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Optical density (natural log, R G B) of one unit of each stain. Haematoxylin is the median nucleus of the real
# H&E of the same source (hgsc_nest.jpg: neoplastic nuclei about (103, 49, 157), lymphocytes (47, 11, 108)), a
# purple that absorbs green most; eosin a pink; blood a red that absorbs green and blue.
_STAINS = {
    "haematoxylin": (0.86, 1.60, 0.45),
    "eosin": (0.08, 1.00, 0.50),
    "blood": (0.10, 1.30, 1.10),
}
_GLASS = np.array([243.0, 242.0, 246.0], dtype=np.float32)

# Tissue class: (haematoxylin, eosin, blood, texture amplitude, collagen fibres). Unknown classes, and tissue guessed
# from the nuclei, take _DEFAULT_TISSUE (a stroma-like pink).
_TISSUE = {
    "stroma": (0.04, 0.55, 0.0, 0.20, 1.0),
    "tumor": (0.28, 0.30, 0.0, 0.18, 0.0),  # cytoplasm purple-pink, as around the tumour nuclei of hgsc_nest
    "omental_fat": (0.0, 0.02, 0.0, 0.0, 0.0),  # vacuoles; their walls are added as a pattern
    "hemorragia": (0.02, 0.25, 0.30, 0.20, 0.0),  # red cells are added as a pattern
    "necrosis": (0.16, 0.22, 0.0, 0.35, 0.0),
    "serum": (0.01, 0.15, 0.0, 0.10, 0.0),
}
_DEFAULT_TISSUE = (0.06, 0.45, 0.0, 0.20, 0.0)
_PATTERNS = {"omental_fat": 2, "hemorragia": 3, "necrosis": 4}

# Nucleus class: (haematoxylin, eosin, chromatin speckle, rim, nucleolus probability). Lymphocytes are small,
# dense and dark; tumour nuclei large and vesicular (paler, coarse chromatin, a dark membrane, nucleoli);
# pyknotic nuclei almost black.
_NUCLEUS = {
    "inflammatory": (1.85, 0.05, 0.08, 0.10, 0.0),
    "neoplastic": (0.85, 0.05, 0.30, 0.60, 0.6),
    "connective": (1.30, 0.08, 0.12, 0.15, 0.0),
    "dead": (2.40, 0.30, 0.05, 0.0, 0.0),
    "macrophage_nucleus": (0.95, 0.10, 0.25, 0.35, 0.1),
    "macrophage_cell": (1.15, 0.15, 0.20, 0.20, 0.0),
}
_DEFAULT_NUCLEUS = (1.25, 0.08, 0.20, 0.20, 0.0)

# Sizes in µm, turned into pixels with the mpp.
_TEXTURE_UM = 2.0  # grain of the tissue texture
_FIBRE_UM = (12.0, 0.9)  # grain of the collagen noise along and across the fibres
_BEND_UM = 40.0  # scale over which fibres bend
_GRAIN_UM = 1.6  # grain of the nuclear dust in necrosis
_RED_CELL_UM = (7.5, 3.6)  # spacing and radius of red cells
_ADIPOCYTE_UM = 80.0
_WALL_UM = 0.9  # half thickness of an adipocyte wall
_NUCLEOLUS_UM = 0.9
_ROUND_UM = 1.0  # radius that rounds the corners of coarse nucleus outlines
_BLUR_UM = 0.35  # optical blur
_STRIP_PX = 2**19  # pixels per strip: bounds the temporaries (about 40 float planes of a strip)


@dataclass(frozen=True)
class TissueLabels:
    """Tissue regions as a label image, the ``tissue`` of :func:`paint_he` where regions come as a raster.

    Parameters
    ----------
    labels
        2-D integer array: 0 where there is no tissue, ``k`` where the class is ``classes[k - 1]``.
    classes
        Class names of the labels 1, 2, ...
    scale
        Painted pixels per label pixel along each axis: label pixel ``(i, j)`` covers the painted frame from
        ``(j * scale, i * scale)`` (a map at 1 µm under a frame at 0.5 µm/px: ``scale=2``).
    """

    labels: np.ndarray
    classes: tuple[str, ...]
    scale: float = 1.0

    def __post_init__(self):
        labels = np.asarray(self.labels)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} of shape {labels.shape}.")
        if labels.size and (labels.min() < 0 or labels.max() > len(self.classes)):
            raise ValueError(f"labels must lie in 0..{len(self.classes)} (one class per label), got {labels.max()}.")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}.")
        object.__setattr__(self, "labels", labels)  # the checked array, whatever array-like came in (frozen)

    def rows(self, y0: float, y1: float, x0: float, width: int) -> np.ndarray:
        """Labels (``int32``) at the centres of painted rows ``y0:y1`` and ``width`` columns from ``x0``."""
        n_rows, n_cols = self.labels.shape
        i = np.clip(np.floor((np.arange(y0, y1) + 0.5) / self.scale).astype(np.intp), 0, n_rows - 1)
        j = np.clip(np.floor((x0 + np.arange(width) + 0.5) / self.scale).astype(np.intp), 0, n_cols - 1)
        return self.labels[np.ix_(i, j)].astype(np.int32)


def paint_he(
    nuclei,
    tissue=None,
    *,
    bounds: tuple[float, float, float, float] | None = None,
    mpp: float = 0.5,
    seed: int = 0,
    class_key: str = "class_name",
    tissue_shades: Mapping[str, Sequence[float]] | None = None,
    nucleus_shades: Mapping[str, Sequence[float]] | None = None,
    stains: Mapping[str, Sequence[float]] | None = None,
) -> np.ndarray:
    """Paint an H&E-like image from nucleus and tissue-region polygons.

    Tissue regions are filled with eosin shades per class (stroma pink with collagen fibres, tumour a purpler
    pink, ``omental_fat`` white vacuoles with thin pink walls, ``hemorragia`` red cells, ``necrosis`` a pale
    purple-grey with nuclear dust, ``serum`` very pale pink; other classes stroma-like) on white glass; nuclei
    with haematoxylin shades per class (``inflammatory`` small and dark, ``neoplastic`` paler with coarse
    chromatin, a dark rim and nucleoli, ``dead`` almost black; other classes a medium purple). A slight blur
    makes edges optical. Pixel ``(row, col)`` samples the point ``(xmin + col + 0.5, ymin + row + 0.5)``.

    Parameters
    ----------
    nuclei
        A GeoDataFrame of nucleus polygons in pixels, with a ``class_key`` column.
    tissue
        A GeoDataFrame of tissue-region polygons with a ``class_key`` column; where regions overlap, the smaller
        one is painted on top. Or a :class:`TissueLabels` label image (a simulated or annotated map of the
        regions). ``None``: tissue is where the nuclei are (their surroundings, closed and filled).
    bounds
        ``(xmin, ymin, xmax, ymax)`` of the painted frame in the polygons' pixel coordinates; the image is
        ``ceil(ymax - ymin) x ceil(xmax - xmin)`` px. Default: the nuclei's bounds.
    mpp
        Microns per pixel: sets the size of textures, fibres, fat cells and blur.
    seed
        Seeds every texture and the shade of each nucleus; the same inputs and seed give the same image.
    class_key
        Column with the class of each polygon, in ``nuclei`` and ``tissue``.
    tissue_shades
        Looks of tissue classes, added to the built-in ones or replacing them: class name ->
        ``(haematoxylin, eosin, blood, texture, collagen)``, the amounts of the stains (optical density in units of
        each stain's), the amplitude of the tissue texture (0: flat) and the contrast of collagen fibres (0: none,
        1: the built-in stroma's).
    nucleus_shades
        Looks of nucleus classes, added or replacing: class name -> ``(haematoxylin, eosin, chromatin, rim,
        nucleolus)``, the amounts of the stains, the contrast of the chromatin speckle, the darkening of the
        nuclear membrane and the probability of a nucleolus.
    stains
        Hues of the stains, replacing the built-in ones: ``"haematoxylin"``, ``"eosin"`` or ``"blood"`` -> the
        optical density (natural log; red, green, blue) of one unit of it. Built in: haematoxylin
        ``(0.86, 1.60, 0.45)``, the median nucleus of a real H&E; eosin ``(0.08, 1.00, 0.50)``; blood
        ``(0.10, 1.30, 1.10)``. Labs and scanners differ: a bluer haematoxylin has less green.

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` uint8 RGB.

    Notes
    -----
    Polygons are filled by a vectorised scanline rule (a pixel belongs to a polygon when its centre does; holes
    stay empty), so the image lines up with the polygons to the pixel. The corners of coarse nucleus outlines are
    rounded (opening by 1 µm) for painting only. Memory beyond the output is a strip's temporaries, whatever the
    size of the crop.
    """
    import shapely

    for name, frame in (("nuclei", nuclei), ("tissue", tissue)):
        if frame is not None and not isinstance(frame, TissueLabels) and class_key not in frame.columns:
            raise ValueError(f"{name} have no {class_key!r} column; columns: {list(frame.columns)}.")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}.")
    tissue_table = _shades("tissue_shades", _TISSUE, tissue_shades)
    nucleus_table = _shades("nucleus_shades", _NUCLEUS, nucleus_shades)
    stain_od = _stain_hues(stains)
    geoms = np.asarray(nuclei.geometry.values, dtype=object)
    if len(geoms) == 0:
        raise ValueError("No nuclei given.")
    if bounds is None:
        bounds = shapely.total_bounds(geoms)
    x0, y0, x1, y1 = (float(v) for v in bounds)
    if not (np.isfinite([x0, y0, x1, y1]).all() and x1 > x0 and y1 > y0):
        raise ValueError(f"bounds must be finite (xmin, ymin, xmax, ymax) with xmax > xmin, ymax > ymin; got {bounds}.")
    height, width = int(np.ceil(y1 - y0)), int(np.ceil(x1 - x0))
    origin = np.array([x0, y0])

    box = shapely.bounds(geoms)
    meets = (box[:, 0] < x0 + width) & (box[:, 2] > x0) & (box[:, 1] < y0 + height) & (box[:, 3] > y0)
    if not meets.any():
        span = tuple(float(v) for v in shapely.total_bounds(geoms))
        raise ValueError(f"No nuclei within bounds {tuple(bounds)}; the nuclei span {span}.")
    geoms = geoms[meets]
    classes = nuclei[class_key].astype(str).to_numpy()[meets]
    nucleus_params = np.array(
        [_DEFAULT_NUCLEUS, *(nucleus_table.get(c, _DEFAULT_NUCLEUS) for c in classes)], dtype=np.float32
    )  # row 0: no nucleus
    rng = np.random.default_rng([seed, 0])
    n = len(geoms)
    shade = np.concatenate([[1.0], np.clip(rng.normal(1.0, 0.12, n), 0.6, 1.4)]).astype(np.float32)
    # One nucleolus per nucleus that has one, near its centre.
    centre = shapely.get_coordinates(shapely.centroid(geoms)) - origin
    area = shapely.area(geoms)
    jitter = rng.normal(0, 0.2, (n, 2)) * np.sqrt(area / np.pi)[:, None]
    nucleolus = np.concatenate([[[np.nan, np.nan]], centre + jitter]).astype(np.float32)
    nucleolus[1:][rng.uniform(size=n) >= nucleus_params[1:, 4]] = np.nan
    # Segmentations often come as coarse polygons (a few vertices): an opening rounds their corners.
    rounded = shapely.buffer(shapely.buffer(geoms, -_ROUND_UM / mpp, quad_segs=2), _ROUND_UM / mpp, quad_segs=2)
    nucleus_edges = _edges(np.where(shapely.is_empty(rounded), geoms, rounded), origin)

    if tissue is None:
        tclasses = np.array([None])
        tissue_edges = None
        soft, soft_step = _tissue_from_nuclei(centre, (height, width), mpp)
    elif isinstance(tissue, TissueLabels):
        tclasses = np.array(tissue.classes, dtype=object)
        tissue_edges = None
    else:
        tgeoms = np.asarray(tissue.geometry.values, dtype=object)
        tbox = shapely.bounds(tgeoms) if len(tgeoms) else np.empty((0, 4))
        tmeets = (tbox[:, 0] < x0 + width) & (tbox[:, 2] > x0) & (tbox[:, 1] < y0 + height) & (tbox[:, 3] > y0)
        tclasses = tissue[class_key].astype(str).to_numpy()[tmeets]
        tgeoms = tgeoms[tmeets]
        order = np.argsort(-shapely.area(tgeoms), kind="stable")  # small regions drawn last, on top
        tgeoms, tclasses = tgeoms[order], tclasses[order]
        tissue_edges = _edges(tgeoms, origin)
    region_params = np.array(
        [[0] * 5, *(tissue_table.get(c, _DEFAULT_TISSUE) for c in tclasses)], dtype=np.float32
    )  # row 0: no tissue
    patterns = np.array([0, *(_PATTERNS.get(c, 0) for c in tclasses)], dtype=np.int8)

    fields = _texture_fields(rng, (height, width), mpp, fat=(patterns == 2).any(), blood=(patterns == 3).any())
    image = np.empty((height, width, 3), dtype=np.uint8)
    strip = int(np.clip(_STRIP_PX // max(width, 1), 32, max(height, 32)))
    margin = int(np.ceil(4 * _BLUR_UM / mpp)) + 2
    for i, r0 in enumerate(range(0, height, strip)):
        r1 = min(r0 + strip, height)
        a, b = max(r0 - margin, 0), min(r1 + margin, height)
        srng = np.random.default_rng([seed, 1, i])
        if isinstance(tissue, TissueLabels):
            region = tissue.rows(a + y0, b + y0, x0, width)
        elif tissue_edges is None:
            region = (_sample(soft, soft_step, a, b, width) > 0.5).astype(np.int32)
        else:
            region = np.zeros((b - a, width), np.int32)
            _fill(tissue_edges, region, a)
        label = np.zeros((b - a, width), np.int32)
        _fill(nucleus_edges, label, a)
        rgb = _paint_strip(
            region, label, a, region_params, patterns, nucleus_params, shade, nucleolus, fields, srng, mpp, stain_od
        )
        image[r0:r1] = rgb[r0 - a : r0 - a + (r1 - r0)]
    return image


def _shades(name: str, builtin: dict, given: Mapping[str, Sequence[float]] | None) -> dict:
    """The built-in looks of a class table updated with the given ones, checked: five finite non-negative numbers."""
    table = dict(builtin)
    for cls, values in (given or {}).items():
        values = np.asarray(values, dtype=float)
        if values.shape != (5,) or not np.isfinite(values).all() or (values < 0).any():
            raise ValueError(f"{name}[{cls!r}] must be five finite numbers >= 0, got {given[cls]!r}.")
        table[str(cls)] = tuple(values)
    return table


def _stain_hues(given: Mapping[str, Sequence[float]] | None) -> np.ndarray:
    """The ``(3, 3)`` optical densities of haematoxylin, eosin and blood (rows), the given ones replacing the
    built-in ones, checked: three finite numbers >= 0, not all 0.
    """
    given = dict(given or {})
    unknown = set(given) - set(_STAINS)
    if unknown:
        raise ValueError(f"stains has no {sorted(unknown)}; the stains are {list(_STAINS)}.")
    rows = []
    for name, builtin in _STAINS.items():
        values = np.asarray(given.get(name, builtin), dtype=float)
        if values.shape != (3,) or not np.isfinite(values).all() or (values < 0).any() or not values.any():
            raise ValueError(f"stains[{name!r}] must be three finite numbers >= 0, not all 0, got {given[name]!r}.")
        rows.append(values)
    return np.array(rows, dtype=np.float32)


def _paint_strip(
    region, label, row0, region_params, patterns, nucleus_params, shade, nucleolus, fields, rng, mpp, stain_od
):
    """Colours of one strip of rows from its region and nucleus labels; blurred, as uint8 RGB."""
    rows, width = region.shape
    ys = (np.arange(row0, row0 + rows, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]

    h, e, blood, amp, collagen = (region_params[region, k] for k in range(5))
    pattern = patterns[region]
    texture = _sample(fields["texture"], fields["texture_step"], row0, row0 + rows, width)
    e *= 1 + amp * texture
    h *= 1 + 0.5 * amp * texture

    fibrous = collagen > 0
    if fibrous.any():
        fibre = _fibres(fields, xs, ys, row0, width)
        e = np.where(fibrous, e * (1 + collagen * (1.1 * fibre - 0.65)), e)  # 1: from 0.35 e to 1.45 e
    fat = pattern == 2
    if fat.any():
        # Adipocytes: the Voronoi cells of jittered seeds. The distance to the wall between the nearest two seeds
        # a and b is (d_b^2 - d_a^2) / (2 |ab|).
        r, c = np.nonzero(fat)
        tree = fields["adipocytes"]
        dist, near = tree.query(np.stack([c + 0.5, row0 + r + 0.5], 1), k=2)
        apart = np.linalg.norm(tree.data[near[:, 1]] - tree.data[near[:, 0]], axis=1)
        to_wall = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2 * apart)
        wall = np.clip(1.0 - to_wall / (_WALL_UM / mpp), 0.0, 1.0).astype(np.float32)
        e[r, c] += 0.6 * wall
        h[r, c] += 0.05 * wall
    bloody = pattern == 3
    if bloody.any():
        # Red cells: discs around jittered seeds, paler in the middle (biconcave), in pale plasma.
        r, c = np.nonzero(bloody)
        dist, _ = fields["red_cells"].query(np.stack([c + 0.5, row0 + r + 0.5], 1), k=1)
        radius = _RED_CELL_UM[1] / mpp
        disc = np.clip(radius - dist, 0.0, 1.0) * (0.75 + 0.25 * np.minimum(dist / radius, 1.0) ** 2)
        blood[r, c] *= (0.3 + 3.2 * disc).astype(np.float32)
    dusty = pattern == 4
    if dusty.any():
        grain = _sample(fields["grain"], fields["grain_step"], row0, row0 + rows, width)
        h = np.where(dusty & (grain > 1.7), h + 1.0, h)  # nuclear dust: small dark fragments

    r, c = np.nonzero(label)
    if len(r):
        # Nuclei: computed on their pixels only.
        lab = label[r, c]
        p = nucleus_params[lab]
        speckle = ndimage.gaussian_filter(rng.standard_normal((rows, width), dtype=np.float32), 0.5 / mpp)
        speckle = speckle[r, c] / (speckle.std() + 1e-6)
        # The nuclear membrane: nucleus pixels next to another label.
        edge = np.zeros(label.shape, bool)
        edge[:-1] |= label[:-1] != label[1:]
        edge[1:] |= label[1:] != label[:-1]
        edge[:, :-1] |= label[:, :-1] != label[:, 1:]
        edge[:, 1:] |= label[:, 1:] != label[:, :-1]
        rim = edge[r, c]
        dist2 = (c + 0.5 - nucleolus[lab, 0]) ** 2 + (row0 + r + 0.5 - nucleolus[lab, 1]) ** 2
        spot = np.nan_to_num(dist2, nan=np.inf) < (_NUCLEOLUS_UM / mpp) ** 2
        nh = p[:, 0] * shade[lab] * np.clip(1 + p[:, 2] * speckle, 0.3, None) + p[:, 3] * rim + 0.7 * spot
        h[r, c] = 0.2 * h[r, c] + nh
        e[r, c] = 0.2 * e[r, c] + p[:, 1] + 0.2 * spot
        blood[r, c] = 0.0

    od = h[..., None] * stain_od[0] + e[..., None] * stain_od[1] + blood[..., None] * stain_od[2]
    rgb = _GLASS * np.exp(-np.maximum(od, 0))
    rgb += rng.normal(0, 0.8, (rows, width, 1)).astype(np.float32)  # sensor noise
    rgb = ndimage.gaussian_filter(rgb, (_BLUR_UM / mpp, _BLUR_UM / mpp, 0))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _fibres(fields, xs, ys, row0, width):
    """Collagen in [0, 1]: noise that is long along a direction (bent by a slow field) and fine across it."""
    theta, step_u, step_v, u0, v0 = fields["fibre_frame"]
    bend = _sample(fields["bend"], fields["bend_step"], row0, row0 + len(ys), width)
    u = -xs * np.sin(theta) + ys * np.cos(theta)
    v = xs * np.cos(theta) + ys * np.sin(theta) + fields["bend_px"] * bend
    coords = np.stack([np.broadcast_to((u - u0) / step_u, v.shape), (v - v0) / step_v])
    noise = ndimage.map_coordinates(fields["fibres"], coords, order=1, mode="nearest")
    return 1.0 / (1.0 + np.exp(-1.8 * noise))


def _texture_fields(rng, shape, mpp, *, fat, blood):
    """Smooth, seeded noise on coarse grids over the frame (zero mean, unit variance), sampled strip by strip."""
    fields = {}
    for name, size_um in (("texture", _TEXTURE_UM), ("bend", _BEND_UM), ("grain", _GRAIN_UM)):
        step = max(1, round(size_um / mpp))
        fields[name] = _smooth_noise(rng, shape, step, 1.0 if name != "grain" else 1.2)
        fields[f"{name}_step"] = step
    # Collagen noise lives on a grid in rotated coordinates (u along the fibres, v across), wide enough for any
    # pixel of the frame after bending.
    theta = float(rng.uniform(0, np.pi))
    step_u, step_v = (max(size_um / mpp, 0.5) for size_um in _FIBRE_UM)
    bend_px = 0.4 * _BEND_UM / mpp
    corners = np.array([[0, 0], [shape[1], 0], [0, shape[0]], [shape[1], shape[0]]], float)
    u = -corners[:, 0] * np.sin(theta) + corners[:, 1] * np.cos(theta)
    v = corners[:, 0] * np.cos(theta) + corners[:, 1] * np.sin(theta)
    u0, v0 = u.min(), v.min() - 5 * bend_px
    extent = (int(np.ceil((u.max() - u0) / step_u)) + 2, int(np.ceil((v.max() + 5 * bend_px - v0) / step_v)) + 2)
    noise = ndimage.gaussian_filter(rng.standard_normal(extent, dtype=np.float32), 1.0)
    fields["fibres"] = (noise - noise.mean()) / (noise.std() + 1e-6)
    fields["fibre_frame"] = (theta, step_u, step_v, u0, v0)
    fields["bend_px"] = bend_px
    if fat:
        fields["adipocytes"] = _seeds(rng, shape, _ADIPOCYTE_UM / mpp)
    if blood:
        fields["red_cells"] = _seeds(rng, shape, _RED_CELL_UM[0] / mpp)
    return fields


def _smooth_noise(rng, shape, step, sigma):
    """White noise on a grid of ``step`` px blocks, Gaussian-smoothed over ``sigma`` blocks and standardised."""
    grid = (int(np.ceil(shape[0] / step)) + 1, int(np.ceil(shape[1] / step)) + 1)
    noise = ndimage.gaussian_filter(rng.standard_normal(grid, dtype=np.float32), sigma, mode="wrap")
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _seeds(rng, shape, cell_px):
    """A KD-tree of jittered grid points, one per ``cell_px`` square, over the frame and one cell around it."""
    from scipy.spatial import cKDTree

    ny, nx = int(np.ceil(shape[0] / cell_px)) + 2, int(np.ceil(shape[1] / cell_px)) + 2
    gy, gx = np.mgrid[-1 : ny - 1, -1 : nx - 1]
    seeds = (np.stack([gx.ravel(), gy.ravel()], 1) + 0.5 + rng.uniform(-0.4, 0.4, (gx.size, 2))) * cell_px
    return cKDTree(seeds)


def _tissue_from_nuclei(centres, shape, mpp):
    """A soft tissue mask on a grid of 8 µm blocks (and its step in px): blocks with nuclei, grown by 15 µm, holes
    filled, smoothed so that its 0.5 level is a smooth outline.
    """
    step = max(1, round(8.0 / mpp))
    grid = (int(np.ceil(shape[0] / step)) + 1, int(np.ceil(shape[1] / step)) + 1)
    occupied = np.zeros(grid, bool)
    ij = np.floor(centres[:, ::-1] / step).astype(np.intp)
    ok = (ij >= 0).all(1) & (ij[:, 0] < grid[0]) & (ij[:, 1] < grid[1])
    occupied[ij[ok, 0], ij[ok, 1]] = True
    radius = max(1, round(15.0 / mpp / step))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = xx**2 + yy**2 <= radius**2
    mask = ndimage.binary_fill_holes(ndimage.binary_dilation(occupied, disk))
    return ndimage.gaussian_filter(mask.astype(np.float32), 1.0), step


def _sample(field, step, row0, row1, width):
    """Bilinear samples of a coarse field (values at the centres of ``step`` px blocks) at pixel centres of rows
    ``row0:row1`` and every column.
    """

    def axis(start, stop, size):
        t = np.clip((np.arange(start, stop) + 0.5) / step - 0.5, 0, size - 1)
        i = np.minimum(np.floor(t).astype(np.intp), max(size - 2, 0))
        return i, np.minimum(i + 1, size - 1), (t - i).astype(np.float32)

    i0, i1, wy = axis(row0, row1, field.shape[0])
    j0, j1, wx = axis(0, width, field.shape[1])
    band = field[i0] * (1 - wy)[:, None] + field[i1] * wy[:, None]
    return np.ascontiguousarray(band[:, j0] * (1 - wx) + band[:, j1] * wx)


def _edges(geoms, origin):
    """Every non-horizontal edge of every ring (exteriors and holes) of the polygons, in frame coordinates.

    Returns ``(xa, ya, xb, yb, owner)`` arrays; ``owner`` is the index of the polygon (label ``owner + 1``).
    """
    import shapely

    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    xy, vertex_ring = shapely.get_coordinates(rings, return_index=True)
    xy = xy - origin
    same = vertex_ring[1:] == vertex_ring[:-1]  # consecutive vertices of one (closed) ring
    a, b = xy[:-1][same], xy[1:][same]
    owner = part_of[ring_of[vertex_ring[:-1][same]]]
    keep = a[:, 1] != b[:, 1]
    return a[keep, 0], a[keep, 1], b[keep, 0], b[keep, 1], owner[keep]


def _fill(edges, out, row0):
    """Scanline fill: ``out[r, c] = owner + 1`` where the centre of pixel ``(row0 + r, c)`` is inside a polygon.

    Even-odd rule per polygon (holes stay empty); where polygons overlap the one with the higher index wins.
    """
    xa, ya, xb, yb, owner = edges
    n_rows, n_cols = out.shape
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    # Row r's centre line y = r + 0.5 crosses an edge when lo <= y < hi (half-open, so a vertex counts once).
    first = np.maximum(np.ceil(lo - 0.5), row0).astype(np.int64)
    stop = np.minimum(np.ceil(hi - 0.5), row0 + n_rows).astype(np.int64)
    count = np.maximum(stop - first, 0)
    if not count.any():
        return
    crossed = np.flatnonzero(count)
    count = count[crossed]
    edge = np.repeat(crossed, count)
    row = np.repeat(first[crossed] - (np.cumsum(count) - count), count) + np.arange(len(edge))
    y = row + 0.5
    x = xa[edge] + (y - ya[edge]) * (xb[edge] - xa[edge]) / (yb[edge] - ya[edge])
    who = owner[edge]
    order = np.lexsort((x, row, who))  # each (polygon, row) has an even number of crossings: pair them in order
    x, row, who = x[order], row[order], who[order]
    c0 = np.clip(np.ceil(x[0::2] - 0.5), 0, n_cols).astype(np.int64)
    c1 = np.clip(np.ceil(x[1::2] - 0.5), 0, n_cols).astype(np.int64)
    span = np.maximum(c1 - c0, 0)
    start = (row[0::2] - row0) * n_cols + c0
    flat = np.repeat(start - (np.cumsum(span) - span), span) + np.arange(span.sum())
    np.put(out, flat, np.repeat(who[0::2] + 1, span))  # spans in polygon order: later polygons win
