"""Thin adapters between SpatialData and plain arrays: finding elements, reading spots, inferring the pixel size.

Every function here only reads. Errors say what is wrong and how to fix it, and are raised before anything is
written, so that a failed call leaves the SpatialData as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from histex import geometry
from histex._validation import check_number, warn_user

logger = logging.getLogger(__name__)

FULL_IMAGE_SUFFIX = "_full_image"
FEATURES_SUFFIX = "_features"
REDUCED_IMAGE_SUFFIXES = ("_hires_image", "_lowres_image")
MIN_SPOTS = 10
SPACERANGER_DIAMETER_UM = 65.0  # what spot_diameter_fullres measures


def choices_text(keys) -> str:
    return ", ".join(repr(k) for k in keys) if len(keys) else "none"


def find_image_key(sdata, image_key: str | None = None) -> str:
    """The key of the full-resolution H&E image: given, or the only candidate.

    A ``*_full_image`` is preferred; hires/lowres images of Space Ranger are refused unless named explicitly,
    because 8 µm predictions need full resolution.
    """
    # Feature maps written by histex are images too, but never the H&E.
    keys = [k for k in sdata.images if not k.endswith(FEATURES_SUFFIX)]
    if image_key is not None:
        if image_key not in keys:
            raise KeyError(f"No image {image_key!r} in the SpatialData; images: {choices_text(keys)}.")
        return image_key
    if not keys:
        raise ValueError(
            "The SpatialData has no image. histex needs the full-resolution H&E image of the section: read it with "
            "spatialdata_io.visium(..., fullres_image_file=...) or add it with spatialdata.models.Image2DModel."
        )
    full = [k for k in keys if k.endswith(FULL_IMAGE_SUFFIX)]
    if len(full) == 1:
        return full[0]
    candidates = full or [k for k in keys if not k.endswith(REDUCED_IMAGE_SUFFIXES)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            f"Only downscaled images were found ({choices_text(keys)}); predictions at 8 µm need the full-resolution "
            "image. Read it with spatialdata_io.visium(..., fullres_image_file=...), or pass image_key=... (and "
            "mpp=...) to use a downscaled image anyway."
        )
    raise ValueError(f"Several images could be the H&E: {choices_text(candidates)}. Pass image_key=... to choose one.")


def _is_circles(gdf) -> bool:
    return "radius" in gdf.columns and len(gdf) > 0 and bool((gdf.geometry.geom_type == "Point").all())


def find_spots(sdata, spots_key: str | None = None, table_key: str | None = None) -> tuple[str, str]:
    """Keys of the spot circles and of the table of counts that annotates them."""
    from spatialdata.models import get_table_keys

    if spots_key is not None:
        if spots_key not in sdata.shapes:
            raise KeyError(f"No shapes {spots_key!r} in the SpatialData; shapes: {choices_text(list(sdata.shapes))}.")
        gdf = sdata.shapes[spots_key]
        if not (gdf.geometry.geom_type == "Point").all():
            raise ValueError(
                f"Shapes {spots_key!r} are not circles: histex needs the Visium spots as points with a 'radius' "
                "column (as spatialdata_io.visium writes them)."
            )
        if "radius" not in gdf.columns:
            raise ValueError(
                f"Shapes {spots_key!r} have no 'radius' column: add the spot radius in pixels, e.g. "
                f"sdata.shapes[{spots_key!r}]['radius'] = spot_diameter_fullres / 2."
            )
        candidates = [spots_key]
    else:
        candidates = [k for k, gdf in sdata.shapes.items() if _is_circles(gdf)]
        if not candidates:
            found = choices_text(list(sdata.shapes))
            raise ValueError(
                f"No spot circles found (shapes: {found}). histex needs the Visium spots as points with a 'radius' "
                "column, as spatialdata_io.visium writes them; pass spots_key=... to name them."
            )

    def annotates(tkey: str, skey: str) -> bool:
        table = sdata.tables[tkey]
        try:
            region, _, _ = get_table_keys(table)
        except (KeyError, ValueError, TypeError):
            return False
        regions = [region] if isinstance(region, str) else list(region)
        return skey in regions

    if table_key is not None:
        if table_key not in sdata.tables:
            raise KeyError(f"No table {table_key!r} in the SpatialData; tables: {choices_text(list(sdata.tables))}.")
        matches = [s for s in candidates if annotates(table_key, s)]
        if not matches:
            raise ValueError(
                f"Table {table_key!r} does not annotate the spots {choices_text(candidates)}: set its region "
                "(TableModel.parse(table, region=<spots key>, region_key='region', instance_key='spot_id'))."
            )
        pairs = [(s, table_key) for s in matches]
    else:
        pairs = [(s, t) for s in candidates for t in sdata.tables if annotates(t, s)]
        if not pairs:
            raise ValueError(
                f"No table annotates the spot circles {choices_text(candidates)}: the counts table must name them as its "
                "region (TableModel.parse(table, region=<spots key>, region_key=..., instance_key=...))."
            )
    if len(pairs) > 1:
        listed = ", ".join(f"(spots_key={s!r}, table_key={t!r})" for s, t in pairs)
        raise ValueError(f"Several spot sets with counts were found: {listed}. Pass spots_key and table_key.")
    return pairs[0]


def image_array(sdata, image_key: str):
    """The full-resolution level of an image element, as a ``(c, y, x)`` DataArray (lazy when the source is)."""
    return full_resolution(sdata.images[image_key])


def pyramid_levels(element) -> list:
    """The levels of an image or labels element as DataArrays, finest first: the element itself when it has one
    scale, the scales of a multiscale DataTree ordered by their size (whatever their names).
    """
    from xarray import DataTree

    if not isinstance(element, DataTree) or not len(element.children):
        return [element]
    levels = [next(iter(element[name].ds.data_vars.values())) for name in element.children]
    return sorted(levels, key=lambda a: -int(a.sizes["x"]) * int(a.sizes["y"]))


def full_resolution(element):
    """The full-resolution level of an image or labels element (a DataArray, or the finest scale of a DataTree)."""
    return pyramid_levels(element)[0]


def element_transformations(element) -> dict:
    from spatialdata.transformations import get_transformation

    return get_transformation(element, get_all=True)


def common_coordinate_system(sdata, image_key: str, spots_key: str, coordinate_system: str | None = None) -> str:
    """A coordinate system that both the image and the spots are placed in."""
    image_cs = element_transformations(sdata.images[image_key])
    spots_cs = element_transformations(sdata.shapes[spots_key])
    common = [cs for cs in image_cs if cs in spots_cs]
    if coordinate_system is not None:
        if coordinate_system not in common:
            raise ValueError(
                f"Coordinate system {coordinate_system!r} does not hold both the image ({choices_text(list(image_cs))}) "
                f"and the spots ({choices_text(list(spots_cs))})."
            )
        return coordinate_system
    if not common:
        raise ValueError(
            f"The image {image_key!r} (coordinate systems {choices_text(list(image_cs))}) and the spots {spots_key!r} "
            f"({choices_text(list(spots_cs))}) share no coordinate system, so histex cannot tell where the spots lie on "
            "the image. Register them (spatialdata.transformations.set_transformation) in one coordinate system."
        )
    return common[0]


def to_image_pixels(sdata, element, image_key: str, coordinate_system: str) -> np.ndarray:
    """3 x 3 affine (x, y) matrix from an element's intrinsic coordinates to the image's pixel coordinates."""
    from spatialdata.transformations import Sequence, get_transformation

    t_element = get_transformation(element, to_coordinate_system=coordinate_system)
    t_image = get_transformation(sdata.images[image_key], to_coordinate_system=coordinate_system)
    seq = Sequence([t_element, t_image.inverse()])
    return np.asarray(seq.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


@dataclass
class Spots:
    """The measured spots, in the image's pixel coordinates."""

    xy_px: np.ndarray  # (n, 2) centres (x, y)
    radius_px: float
    table: AnnData  # the rows of the counts table, in the order of xy_px (a view; never modified)


def read_spots(sdata, spots_key: str, table_key: str, image_key: str, coordinate_system: str) -> Spots:
    """Spot centres and radius in image pixels, matched to the rows of the counts table."""
    from spatialdata.models import get_table_keys

    gdf = sdata.shapes[spots_key]
    table = sdata.tables[table_key]
    _, region_key, instance_key = get_table_keys(table)
    rows = np.flatnonzero(np.asarray(table.obs[region_key] == spots_key))
    instance = table.obs[instance_key].to_numpy()[rows]
    position = pd.Index(gdf.index).get_indexer(instance)
    if (position < 0).any():
        raise ValueError(
            f"Table {table_key!r} annotates {int((position < 0).sum())} instances that are not in shapes "
            f"{spots_key!r} (column {instance_key!r}): the table does not annotate these spots."
        )
    if len(rows) < MIN_SPOTS:
        raise ValueError(
            f"Only {len(rows)} spots have counts; histex needs at least {MIN_SPOTS} to learn from (a Visium capture "
            "area has thousands)."
        )
    affine = to_image_pixels(sdata, gdf, image_key, coordinate_system)
    xy = np.stack([gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()], axis=1)[position]
    xy_px = geometry.apply_affine(affine, xy)
    scale = float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
    radius = gdf["radius"].to_numpy(dtype=float)[position] * scale
    if not np.all(np.isfinite(radius)) or (radius <= 0).any():
        raise ValueError(f"Spots {spots_key!r} have missing or non-positive radii; set the 'radius' column.")
    return Spots(xy_px=xy_px, radius_px=float(np.median(radius)), table=table[rows])


def fitted_layer(bins: AnnData) -> str | None:
    """The layer of the spot table that :func:`histex.tl.super_resolve` fitted the bin table ``bins`` on; ``None``
    for ``X``. Whatever shows or compares the spots beside the bins must read the same values.
    """
    layer = bins.uns["histex"].get("params", {}).get("layer", "X")
    return None if layer in (None, "X") else layer


def check_spots_in_image(spots: Spots, shape_yx: tuple[int, int], image_key: str) -> None:
    x, y = spots.xy_px[:, 0], spots.xy_px[:, 1]
    outside = (x < 0) | (y < 0) | (x >= shape_yx[1]) | (y >= shape_yx[0])
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} of {len(x)} spot centres lie outside the image {image_key!r} "
            f"({shape_yx[1]} x {shape_yx[0]} px). Is this the image the spots were registered to (the full-resolution "
            "one), and are the transformations right?"
        )


def check_mpp(mpp: float, name: str = "mpp") -> float:
    """A pixel size in microns per pixel, validated: a finite number above 0."""
    return check_number(name, mpp, minimum=0, above=True)


def infer_mpp(
    spots: Spots,
    lattice: tuple[float, float],
    *,
    mpp: float | None = None,
    pitch_um: float = geometry.VISIUM_PITCH_UM,
) -> tuple[float, str]:
    """Microns per pixel of the full-resolution image: given, from the reader's metadata, or from the spot lattice.

    ``lattice`` is :func:`histex.geometry.lattice_pitch` of the spot centres. Returns the value and a short
    description of where it came from. The lattice pitch (100 µm on Visium) is the
    reference: Space Ranger's ``spot_diameter_fullres`` describes a 65 µm spot, not the 55 µm capture area, so
    the circles' radius cannot give the pixel size. A given or stored value that disagrees with the lattice is
    logged.
    """
    pitch_px, regular = lattice
    on_lattice = np.isfinite(pitch_px) and pitch_px > 0 and regular >= 0.5
    mpp_lattice = pitch_um / pitch_px if on_lattice else float("nan")
    if mpp is not None:
        value, source = check_mpp(mpp), "given"
    elif "microns_per_pixel" in (scalefactors := _scalefactors(spots.table)):
        source = "scalefactors['microns_per_pixel']"
        value = check_mpp(float(scalefactors["microns_per_pixel"]), name=source)
    elif on_lattice:
        return float(mpp_lattice), f"spot lattice pitch ({pitch_px:.2f} px = {pitch_um:g} µm)"
    else:
        raise ValueError(
            "The pixel size (mpp) is unknown and cannot be derived: the spots do not lie on a regular lattice "
            f"(only {regular:.0%} of nearest-neighbour distances agree). Pass mpp=<microns per pixel of the "
            "full-resolution image>."
        )
    if on_lattice and abs(value / mpp_lattice - 1) > 0.05:
        warn_user(
            f"mpp {source} ({value:.4f} µm/px) disagrees with the {pitch_um:g} µm spot lattice ({mpp_lattice:.4f} "
            f"µm/px); using the {source} value. Pass the right mpp= if it is wrong."
        )
    return value, source


def check_spot_radius(spots: Spots, mpp: float, spot_diameter_um: float) -> float:
    """Diameter in µm of the spot circles as drawn, with a log line when it is not the spot diameter in use."""
    drawn_um = 2 * spots.radius_px * mpp
    if abs(drawn_um / SPACERANGER_DIAMETER_UM - 1) < 0.05:
        logger.info(
            "Spot circles are %.1f µm across (Space Ranger's spot_diameter_fullres describes a %g µm spot); the "
            "disk loss uses %g µm spots.",
            drawn_um,
            SPACERANGER_DIAMETER_UM,
            spot_diameter_um,
        )
    elif abs(drawn_um / spot_diameter_um - 1) > 0.05:
        warn_user(
            f"Spot circles are {drawn_um:.1f} µm across at {mpp:.4f} µm/px, not the {spot_diameter_um:g} µm spots the "
            "disk loss uses; check mpp and spot_diameter_um."
        )
    return float(drawn_um)


def _scalefactors(table: AnnData) -> dict:
    spatial = table.uns.get("spatial", {})
    for library in spatial.values() if isinstance(spatial, dict) else []:
        if isinstance(library, dict) and isinstance(library.get("scalefactors"), dict):
            return library["scalefactors"]
    return {}


def bin_elements(grid: geometry.BinGrid, rows: np.ndarray, cols: np.ndarray, *, region: str, transformations: dict):
    """The square polygons of bins and the start of the table that annotates them, as Visium HD bins are laid out.

    Returns the shapes element (one square per bin in image pixels, index ``instance_id``) and an ``obs`` frame
    with ``array_row``, ``array_col`` (for :func:`spatialdata.rasterize_bins`), ``instance_id`` and ``region``.
    """
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    instance_id = np.arange(len(rows))
    boxes = grid.boxes_px(rows, cols)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=shapely.box(*boxes.T), index=pd.Index(instance_id)),
        transformations=dict(transformations),
    )
    obs = pd.DataFrame(
        {
            "array_row": rows,
            "array_col": cols,
            "instance_id": instance_id,
            "region": pd.Categorical([region] * len(rows)),
        },
        index=pd.Index([f"bin_{r:05d}_{c:05d}" for r, c in zip(rows, cols, strict=True)]),
    )
    return shapes, obs


@dataclass
class Section:
    """The elements of one Visium section that histex works on, resolved and checked."""

    image_key: str
    spots_key: str
    table_key: str
    coordinate_system: str
    shape_yx: tuple[int, int]  # full-resolution image, pixels
    spots: Spots
    pitch_px: float  # median nearest-neighbour distance of the spots, in image pixels
    mpp: float
    mpp_source: str


def read_section(
    sdata,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    mpp: float | None = None,
) -> Section:
    """Find the image, the spots and their counts, place the spots on the image and infer the pixel size."""
    image_key = find_image_key(sdata, image_key)
    spots_key, table_key = find_spots(sdata, spots_key, table_key)
    cs = common_coordinate_system(sdata, image_key, spots_key, coordinate_system)
    spots = read_spots(sdata, spots_key, table_key, image_key, cs)
    image = image_array(sdata, image_key)
    shape_yx = (int(image.sizes["y"]), int(image.sizes["x"]))
    check_spots_in_image(spots, shape_yx, image_key)
    lattice = geometry.lattice_pitch(spots.xy_px)
    mpp, mpp_source = infer_mpp(spots, lattice, mpp=mpp)
    return Section(image_key, spots_key, table_key, cs, shape_yx, spots, lattice[0], mpp, mpp_source)
