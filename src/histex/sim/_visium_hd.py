"""Ground truth from a Visium HD section: its 2 µm squares summed onto histex's bins and into pseudo-Visium spots."""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

from histex._sdata import (
    check_mpp,
    choices_text,
    common_coordinate_system,
    element_transformations,
    find_image_key,
    image_array,
    to_image_pixels,
)
from histex._validation import check_number, warn_user
from histex.geometry import BinGrid, cell_bin_weights
from histex.sim._layout import visium_like
from histex.sim._pseudo import pseudo_visium

logger = logging.getLogger(__name__)

SQUARE_PATTERN = re.compile(r"square_(\d{3})um$")
CYTASSIST_SUFFIX = "_cytassist_image"
CHUNK = 500_000  # squares split over bins at a time (bounds the memory of the pairs)


def _square_sources(sdata) -> dict[str, str]:
    """``square_NNNum`` name -> key of the table holding those squares' counts."""
    found = {}
    for key in sdata.tables:
        match = SQUARE_PATTERN.search(str(key))
        if match:
            found.setdefault(match.group(0), key)
    return found


def _resolve_source(sdata, source: str | int) -> tuple[str, str, float]:
    name = f"square_{int(source):03d}um" if isinstance(source, int | np.integer) else str(source)
    match = SQUARE_PATTERN.search(name)
    if match is None:
        raise ValueError(f"source must name a Visium HD bin size such as 'square_002um' or 2, got {source!r}.")
    name = match.group(0)
    found = _square_sources(sdata)
    if name not in found:
        raise ValueError(
            f"No Visium HD table {name!r} in the SpatialData; square sizes available: {choices_text(sorted(found))} "
            f"(tables: {choices_text(list(sdata.tables))}). Read it with spatialdata_io.visium_hd(..., bin_size=...) or "
            "pass source=... naming one that is there (2 µm squares give the most exact truth)."
        )
    return name, found[name], float(match.group(1))


def _squares(sdata, table_key: str, name: str):
    """The polygons of the squares in the table's row order, the shapes key, and the table rows they annotate."""
    import shapely
    from spatialdata.models import get_table_keys

    table = sdata.tables[table_key]
    try:
        region, region_key, instance_key = get_table_keys(table)
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(
            f"Table {table_key!r} does not annotate any element (no spatialdata_attrs): it must annotate the "
            f"{name} squares, as spatialdata_io.visium_hd writes it."
        ) from error
    regions = [region] if isinstance(region, str) else list(region)
    shape_keys = [r for r in regions if r in sdata.shapes]
    if len(shape_keys) != 1:
        hint = (
            " It annotates labels: read with spatialdata_io.visium_hd(..., annotate_table_by_labels=False)."
            if any(r in sdata.labels for r in regions)
            else ""
        )
        raise ValueError(
            f"Table {table_key!r} annotates {choices_text(regions)}, not one shapes element of {name} squares "
            f"(shapes: {choices_text(list(sdata.shapes))}).{hint}"
        )
    shapes_key = shape_keys[0]
    rows = np.flatnonzero(np.asarray(table.obs[region_key] == shapes_key))
    gdf = sdata.shapes[shapes_key]
    position = pd.Index(gdf.index).get_indexer(table.obs[instance_key].to_numpy()[rows])
    if (position < 0).any():
        raise ValueError(
            f"Table {table_key!r} annotates {int((position < 0).sum())} instances that are not in shapes "
            f"{shapes_key!r} (column {instance_key!r})."
        )
    geometry = np.asarray(gdf.geometry.values, dtype=object)[position]
    kinds = set(shapely.get_type_id(geometry).tolist())
    if kinds == {0} and "radius" in gdf.columns:  # bins_as_squares=False: circles; squares as the reader makes them
        radius = gdf["radius"].to_numpy(dtype=float)[position]
        geometry = shapely.buffer(geometry, radius, cap_style="square")
    elif not kinds <= {3, 6}:
        raise ValueError(f"Shapes {shapes_key!r} are neither squares (polygons) nor circles with a 'radius' column.")
    return geometry, shapes_key, rows


def from_visium_hd(
    sdata,
    *,
    bin_size_um: float = 8.0,
    source: str | int = "square_002um",
    image_key: str | None = None,
    coordinate_system: str | None = None,
    mpp: float | None = None,
    dataset_id: str = "visium_hd",
    seed: int = 0,
):
    """A pseudo-Visium section with measured 8 µm truth, from a Visium HD section read by ``spatialdata_io``.

    The counts of each Visium HD square (``source``, 2 µm by default) are split over the bins of histex's grid
    (aligned to the H&E's pixel origin) in proportion to the area of the square in each bin: the HD lattice sits
    at its own offset and slight rotation on the image, and 2 µm squares make the split nearly exact. Tissue is
    the bins touched by in-tissue squares, closed and with holes filled. 55 µm spots on a 100 µm hexagonal
    lattice over the tissue sum the truth bins in their disks, as in :func:`histex.sim.from_nuclei`.

    Parameters
    ----------
    sdata
        A SpatialData in the layout of ``spatialdata_io.visium_hd`` (binned outputs, ``bins_as_squares`` and
        ``annotate_table_by_labels=False``): ``tables["square_002um"]`` annotating the squares
        ``shapes[f"{dataset_id}_square_002um"]``, and the full-resolution H&E ``images[f"{dataset_id}_full_image"]``.
    bin_size_um
        Edge of the truth bins.
    source
        The Visium HD squares to start from: ``"square_002um"``, ``"square_008um"``, ... or the size in µm.
        Squares larger than the bins are refused; squares as large as the bins blur the truth by the
        misalignment of the two grids.
    image_key
        The H&E image; the ``*_full_image`` by default. Downscaled (hires/lowres) images are refused unless named.
    coordinate_system
        One that holds both the image and the squares; the first shared one by default.
    mpp
        Microns per pixel of the H&E. By default from the squares: their side in image pixels is ``source``'s
        size in µm (Space Ranger's ``spot_diameter_fullres`` of the bins, which spatialdata_io draws them with).
    dataset_id
        Names the elements of the result (see :func:`histex.sim.visium_like`).
    seed
        Seeds the position of the spot lattice.

    Returns
    -------
    spatialdata.SpatialData
        Ready for :func:`histex.pp.extract_features` and :func:`histex.tl.super_resolve`: the H&E element (shared,
        not copied) with its transformations, the spots and ``tables["truth"]`` (``obs["in_tissue"]``,
        ``obs["coverage"]``: the share of the bin covered by squares; ``uns["visium_hd"]``: source, mpp and the
        share of counts that fell on tissue bins).
    """
    import shapely

    bin_size_um = check_number("bin_size_um", bin_size_um, minimum=0, above=True)
    name, table_key, square_um = _resolve_source(sdata, source)
    if square_um > bin_size_um:
        raise ValueError(
            f"{name} squares are larger than the {bin_size_um:g} µm bins: they cannot give truth at that size. Use "
            f"source='square_002um' (available: {choices_text(sorted(_square_sources(sdata)))})."
        )
    explicit = image_key is not None
    image_key = find_image_key(sdata, image_key)
    if not explicit and image_key.endswith(CYTASSIST_SUFFIX):
        raise ValueError(
            f"Only the CytAssist image {image_key!r} and downscaled images were found; the truth needs the "
            "full-resolution H&E. Read it with spatialdata_io.visium_hd(..., fullres_image_file=...)."
        )
    polygons, shapes_key, rows = _squares(sdata, table_key, name)
    if len(rows) == 0:
        raise ValueError(f"Table {table_key!r} holds no {name} squares.")
    cs = common_coordinate_system(sdata, image_key, shapes_key, coordinate_system)
    affine = to_image_pixels(sdata, sdata.shapes[shapes_key], image_key, cs)
    linear, shift = affine[:2, :2], affine[:2, 2]
    polygons = shapely.transform(polygons, lambda xy: xy @ linear.T + shift)

    area_px = shapely.area(polygons)
    side_px = float(np.sqrt(np.median(area_px)))
    mpp_squares = square_um / side_px if side_px > 0 else float("nan")
    if mpp is None:
        if not np.isfinite(mpp_squares):
            raise ValueError(f"The {name} squares have no area on the image; pass mpp=<microns per pixel>.")
        mpp, mpp_source = mpp_squares, f"{name} side ({side_px:.3f} px = {square_um:g} µm)"
    else:
        mpp, mpp_source = check_mpp(mpp), "given"
        if abs(mpp / mpp_squares - 1) > 0.05:
            warn_user(
                f"mpp {mpp:.4f} µm/px disagrees with the {name} squares ({mpp_squares:.4f} µm/px); using the given "
                "value. Leave mpp=None to use the squares'."
            )

    image = image_array(sdata, image_key)
    grid = BinGrid.for_image((int(image.sizes["y"]), int(image.sizes["x"])), mpp=mpp, bin_size_um=bin_size_um)
    if grid.n_rows == 0 or grid.n_cols == 0:
        raise ValueError(f"The image {image_key!r} is smaller than one {bin_size_um:g} µm bin at {mpp:.4f} µm/px.")

    table = sdata.tables[table_key]
    counts = sp.csr_matrix(table.X[rows] if len(rows) < table.n_obs else table.X, dtype=np.float64)
    if "in_tissue" in table.obs:
        in_tissue = np.asarray(table.obs["in_tissue"].to_numpy()[rows]).astype(bool)
    else:
        in_tissue = np.ones(len(rows), bool)
    n_bins = grid.n_rows * grid.n_cols
    bin_counts = sp.csr_matrix((n_bins, counts.shape[1]))
    covered = np.zeros(n_bins)  # area of each bin under squares, pixels²
    covered_tissue = np.zeros(n_bins)
    for start in range(0, len(rows), CHUNK):
        part = slice(start, start + CHUNK)
        weights = cell_bin_weights(polygons[part], grid).T.tocsr()  # (bins, squares)
        bin_counts = bin_counts + weights @ counts[part]
        covered += weights @ area_px[part]
        covered_tissue += weights @ (area_px[part] * in_tissue[part])

    touched = (covered_tissue > 1e-9 * grid.bin_px**2).reshape(grid.shape)
    if not touched.any():
        raise ValueError(
            f"No in-tissue {name} square lies on the image {image_key!r} ({int(in_tissue.sum())} of {len(rows)} "
            "squares are in tissue): is this the image the squares were registered to, and are the "
            "transformations right?"
        )
    tissue = ndimage.binary_fill_holes(ndimage.binary_closing(touched, np.ones((3, 3)), iterations=2) | touched)
    t_rows, t_cols = np.nonzero(tissue)
    flat = t_rows * grid.n_cols + t_cols
    truth_counts = sp.csr_matrix(bin_counts[flat], dtype=np.float32)
    total = float(counts.sum())
    kept = float(truth_counts.sum()) / total if total > 0 else 1.0
    if kept < 0.99:
        logger.warning(
            "%.1f%% of the counts of the %s squares fall outside the tissue bins (off the image's whole bins or on "
            "bins without in-tissue squares).", 100 * (1 - kept), name,
        )  # fmt: skip
    truth_obs = pd.DataFrame(
        {"in_tissue": np.ones(len(flat), bool), "coverage": np.clip(covered[flat] / grid.bin_px**2, 0, 1)}
    )

    rng = np.random.default_rng(seed)
    spot_xy, array_rc, spot_counts = pseudo_visium(tissue, grid, mpp, t_rows, t_cols, truth_counts, rng=rng)
    logger.info(
        "Visium HD %s: %d squares, %d genes onto %d tissue bins of %g µm (mpp %.4f from %s), %d spots.",
        name, len(rows), counts.shape[1], len(flat), bin_size_um, mpp, mpp_source, len(spot_xy),
    )  # fmt: skip
    var = table.var.copy()
    var.index = var.index.astype(str)
    result = visium_like(
        dataset_id=dataset_id,
        image=sdata.images[image_key],
        mpp=mpp,
        grid=grid,
        spot_xy_px=spot_xy,
        array_rc=array_rc,
        spot_counts=spot_counts,
        var=var,
        truth_rows=t_rows,
        truth_cols=t_cols,
        truth_counts=truth_counts,
        truth_obs=truth_obs,
        transformations=element_transformations(sdata.images[image_key]),
    )
    result.tables["truth"].uns["visium_hd"] = {
        "source": name,
        "table_key": str(table_key),
        "image_key": image_key,
        "coordinate_system": cs,
        "mpp": float(mpp),
        "mpp_source": mpp_source,
        "counts_in_truth": kept,
    }
    return result
