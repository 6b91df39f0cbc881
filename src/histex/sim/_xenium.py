"""Ground truth from a Xenium run: its cells (or transcripts) on the aligned H&E, summed into pseudo-Visium spots.

The input is laid out as ``spatialdata_io.xenium`` (0.7) writes it:

* ``shapes["cell_boundaries"]`` (index ``cell_id``) and ``shapes["nucleus_boundaries"]`` (a ``cell_id`` column;
  a cell may have several nuclei), ``shapes["cell_circles"]`` (points with ``radius``) when read as circles;
* ``tables["table"]``: cells x genes counts, ``obs["cell_id"]``, ``obs["region"]`` (``"cell_labels"`` or
  ``"cell_circles"``) as region key;
* ``points["transcripts"]``: ``x``, ``y``, ``z``, ``feature_name``, ``cell_id``, ``qv``;
* ``images["morphology_focus"]`` / ``images["morphology_mip"]``: DAPI and stains, not H&E;
* ``images["he_image"]``: the post-Xenium H&E, with its alignment as an ``Affine`` to ``"global"``.

Shapes and points hold Xenium's coordinates in µm; their transformation to ``"global"`` is
``Scale(1 / pixel_size)``, so ``"global"`` is the morphology image's pixel grid. The H&E's pixel size is read off
the chain cells (µm) -> ``"global"`` -> H&E pixels.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

from histex._sdata import check_mpp, choices_text, element_transformations, image_array, to_image_pixels
from histex._validation import warn_user
from histex.cells import cell_polygons
from histex.geometry import BinGrid, apply_affine, cell_bin_weights, points_to_bins
from histex.sim._layout import add_truth_cells, visium_like
from histex.sim._pseudo import pseudo_visium

logger = logging.getLogger(__name__)

CELL_ID = "cell_id"
MORPHOLOGY_PREFIX = "morphology"
_TOL = 1e-6


def _n_channels(sdata, key: str) -> int:
    image = image_array(sdata, key)
    return int(image.sizes["c"]) if "c" in image.dims else 1


def _rgb_images(sdata) -> list[str]:
    return [
        k
        for k in sdata.images
        if not k.startswith(MORPHOLOGY_PREFIX) and not k.endswith("_features") and _n_channels(sdata, k) == 3
    ]


def _he_image_key(sdata, image_key: str | None) -> str:
    rgb = _rgb_images(sdata)
    hint = (
        "Read the post-Xenium H&E with spatialdata_io.xenium(..., aligned_images=True) (a '*he_image.ome.tif' with "
        "its '*he_imagealignment.csv' becomes images['he_image'], aligned to 'global') or add it with "
        "spatialdata_io.xenium_aligned_image(he_path, alignment_csv)."
    )
    if image_key is not None:
        if image_key not in sdata.images:
            raise KeyError(f"No image {image_key!r} in the SpatialData; images: {choices_text(list(sdata.images))}.")
        if image_key not in rgb:
            n = _n_channels(sdata, image_key)
            what = "a Xenium morphology (DAPI/stain) image" if image_key.startswith(MORPHOLOGY_PREFIX) else ""
            raise ValueError(
                f"Image {image_key!r} is {what or f'not RGB ({n} channels)'}, not an H&E: histex needs an RGB H&E "
                f"aligned to the Xenium run. RGB images: {choices_text(rgb)}." + ("" if rgb else " " + hint)
            )
        return image_key
    if not rgb:
        raise ValueError(
            f"The SpatialData has no RGB H&E image (images: {choices_text(list(sdata.images))}); the Xenium morphology "
            f"images are fluorescence, not H&E. {hint}"
        )
    if len(rgb) > 1:
        preferred = [k for k in rgb if "he_image" in k]
        if len(preferred) == 1:
            return preferred[0]
        raise ValueError(f"Several RGB images could be the H&E: {choices_text(rgb)}. Pass image_key=... to choose one.")
    return rgb[0]


def _shared_cs(sdata, image_key: str, element, element_name: str) -> str:
    image_cs = element_transformations(sdata.images[image_key])
    element_cs = element_transformations(element)
    common = [cs for cs in image_cs if cs in element_cs]
    if not common:
        raise ValueError(
            f"The H&E {image_key!r} (coordinate systems {choices_text(list(image_cs))}) and {element_name} "
            f"({choices_text(list(element_cs))}) share no coordinate system: the H&E is not aligned to the Xenium run. "
            "Give the H&E its alignment to 'global' (spatialdata.transformations.set_transformation(image, "
            "Affine(alignment_matrix, ('x', 'y'), ('x', 'y')), 'global'), as spatialdata_io.xenium_aligned_image does)."
        )
    return "global" if "global" in common else common[0]


def _mpp_from(affine: np.ndarray, mpp: float | None) -> float:
    """µm per H&E pixel: given, or from the affine µm -> H&E pixels."""
    singular = np.linalg.svd(affine[:2, :2], compute_uv=False)
    derived = 1.0 / float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
    if mpp is not None:
        mpp = check_mpp(mpp)
        if abs(mpp / derived - 1) > 0.05:
            warn_user(
                f"mpp={mpp:.4f} given, but the transformations give {derived:.4f} µm per H&E pixel (if the cells are "
                f"in µm); using {mpp:.4f}. Leave mpp=None to use the transformations'."
            )
        return float(mpp)
    if singular[0] / singular[1] - 1 > 0.01:
        logger.warning("The H&E's pixels are not square in µm (scales %s); using their mean size.", 1 / singular)
    return derived


def _polygons_px(gdf, affine: np.ndarray, name: str) -> np.ndarray:
    import shapely

    return shapely.transform(cell_polygons(gdf, name), lambda xy: apply_affine(affine, xy))


def _cell_ids(table) -> np.ndarray:
    from spatialdata.models import get_table_keys

    if CELL_ID in table.obs:
        return table.obs[CELL_ID].astype(str).to_numpy()
    try:
        _, _, instance_key = get_table_keys(table)
    except (KeyError, ValueError, TypeError):
        return table.obs_names.astype(str).to_numpy()
    return table.obs[instance_key].astype(str).to_numpy()


def from_xenium(
    sdata,
    *,
    image_key: str | None = None,
    table_key: str = "table",
    shapes_key: str | None = None,
    use_transcripts: bool = False,
    points_key: str = "transcripts",
    min_qv: float | None = 20.0,
    mpp: float | None = None,
    bin_size_um: float = 8.0,
    max_outside: float = 0.01,
    dataset_id: str = "xenium",
    seed: int = 0,
):
    """A pseudo-Visium section with 8 µm ground truth, from a Xenium run and its aligned H&E.

    The truth of a bin is the counts of the cells in it, each cell's counts split over the bins it overlaps in
    proportion to area (or, with ``use_transcripts``, the transcripts that fall in it). Bins are laid on the H&E's
    pixel grid (:class:`histex.geometry.BinGrid`); the tissue is the bins the cells cover, closed and with holes
    filled. 55 µm spots on a 100 µm hexagonal lattice over the tissue sum the truth bins in their disks.

    Cells not wholly on the bin grid (outside the H&E, or in its last partial row or column of bins) are dropped
    with a logged warning when they are at most ``max_outside`` of the cells; more raise, since the H&E then does
    not cover the run (crop the run first, e.g. with :func:`spatialdata.bounding_box_query`). Transcripts are
    counted when they lie in a tissue bin, pass ``min_qv`` and name a gene of the table; the rest are logged.

    Parameters
    ----------
    sdata
        A SpatialData in the layout of :func:`spatialdata_io.xenium`, with an aligned RGB H&E.
    image_key
        The H&E; the only RGB image by default (``"he_image"`` when the reader found it). Morphology (DAPI)
        images are refused.
    table_key
        The cells x genes counts table; its ``obs["cell_id"]`` (or instance key) names the cells.
    shapes_key
        Cell polygons: ``"cell_boundaries"`` by default, ``"nucleus_boundaries"`` (several nuclei of a cell share
        its counts by area) or ``"cell_circles"``.
    use_transcripts
        Count the transcripts of ``points_key`` per bin instead of splitting cell counts by area.
    points_key
        The transcripts (``x``, ``y`` and the feature key, ``feature_name``).
    min_qv
        Transcripts below this quality (``qv``) are not counted (20, as Xenium's cell-feature matrix); ``None``
        counts all.
    mpp
        Microns per H&E pixel; by default from the transformations, taking the cells' own coordinates as µm (as
        the reader stores them).
    bin_size_um
        Edge of the truth bins.
    max_outside
        Largest fraction of cells off the bin grid that is dropped rather than refused.
    dataset_id
        Names the elements (see :func:`histex.sim.visium_like`).
    seed
        Seeds the position of the spot lattice.

    Returns
    -------
    spatialdata.SpatialData
        The layout of :func:`histex.sim.visium_like`: the H&E (``images[f"{dataset_id}_full_image"]``, with its
        transformations, as are the spots and bins), ``tables["table"]`` (spots) and ``tables["truth"]`` (bins:
        ``obs`` ``in_tissue``, ``n_cells``: the cells' area share in the bin); ``tables["truth"].uns["xenium"]``
        records the source and what was dropped. The truth per cell: ``shapes["truth_cells_boundaries"]`` and
        ``tables["truth_cells"]`` (the run's counts of each cell kept, ``obs["xenium_cell_id"]``; with
        ``use_transcripts`` too, where the bins count the transcripts instead).
    """
    import shapely

    image_key = _he_image_key(sdata, image_key)
    if shapes_key is None:
        shapes_key = "cell_boundaries"
    if shapes_key not in sdata.shapes:
        raise KeyError(
            f"No shapes {shapes_key!r} in the SpatialData; shapes: {choices_text(list(sdata.shapes))}. Read the run with "
            "spatialdata_io.xenium(..., cells_boundaries=True) or pass shapes_key=..."
        )
    if table_key not in sdata.tables:
        raise KeyError(f"No table {table_key!r} in the SpatialData; tables: {choices_text(list(sdata.tables))}.")
    gdf = sdata.shapes[shapes_key]
    table = sdata.tables[table_key]
    cs = _shared_cs(sdata, image_key, gdf, f"the cells {shapes_key!r}")
    affine = to_image_pixels(sdata, gdf, image_key, cs)  # cells' coordinates (µm) -> H&E pixels
    mpp = _mpp_from(affine, mpp)
    he = image_array(sdata, image_key)
    shape_yx = (int(he.sizes["y"]), int(he.sizes["x"]))
    grid = BinGrid.for_image(shape_yx, mpp=mpp, bin_size_um=bin_size_um)
    if grid.n_rows == 0 or grid.n_cols == 0:
        raise ValueError(f"The H&E {image_key!r} ({shape_yx[1]} x {shape_yx[0]} px) holds no {bin_size_um} µm bin.")

    # polygons -> table rows: a cell's polygons share its counts by area
    cell_ids = _cell_ids(table)
    if pd.Index(cell_ids).has_duplicates:
        raise ValueError(f"Table {table_key!r} names some cells twice; cell ids must be unique.")
    poly_ids = (gdf[CELL_ID] if CELL_ID in gdf.columns else pd.Series(gdf.index)).astype(str).to_numpy()
    row_of_poly = pd.Index(cell_ids).get_indexer(poly_ids)
    polygons = _polygons_px(gdf, affine, shapes_key)
    area = shapely.area(polygons)
    usable = (row_of_poly >= 0) & (area > 0)
    if not usable.any():
        raise ValueError(
            f"No polygon of {shapes_key!r} names a cell of table {table_key!r} (by {CELL_ID!r}); is this the table "
            "of these cells?"
        )
    polygons, area, row_of_poly = polygons[usable], area[usable], row_of_poly[usable]
    cells, cell_of_poly = np.unique(row_of_poly, return_inverse=True)  # table rows with polygons
    cell_area = np.bincount(cell_of_poly, weights=area)
    poly_to_cell = sp.csr_matrix(
        (area / cell_area[cell_of_poly], (cell_of_poly, np.arange(len(polygons)))), shape=(len(cells), len(polygons))
    )
    weights = (poly_to_cell @ cell_bin_weights(polygons, grid)).tocsr()  # (cells, bins)
    on_grid = np.asarray(weights.sum(axis=1)).ravel() >= 1 - _TOL
    n_out = int((~on_grid).sum())
    if n_out > max_outside * len(cells):
        x0, y0, x1, y1 = shapely.total_bounds(polygons)
        raise ValueError(
            f"{n_out} of {len(cells)} cells lie (partly) outside the H&E {image_key!r} ({shape_yx[1]} x {shape_yx[0]} "
            f"px, {grid.n_cols} x {grid.n_rows} bins of {bin_size_um} µm): the cells span ({x0:.0f}, {y0:.0f}) - "
            f"({x1:.0f}, {y1:.0f}) in H&E pixels. Is the H&E aligned to the run, and does it cover it? Crop the run "
            "to the H&E first (spatialdata.bounding_box_query) or raise max_outside to drop them."
        )
    if n_out:
        logger.warning("Dropped %d of %d cells that lie (partly) off the H&E's bin grid.", n_out, len(cells))
    n_unmatched = int(len(table) - len(cells))
    if n_unmatched:
        logger.warning("%d cells of table %r have no polygon in %r and are left out.", n_unmatched, table_key,
                       shapes_key)  # fmt: skip
    cell_polygons = _union_per_cell(polygons, cell_of_poly, len(cells))[on_grid]
    cells, weights = cells[on_grid], weights[on_grid]
    genes = pd.Index(table.var_names.astype(str))

    covered = np.asarray(weights.sum(axis=0)).ravel().reshape(grid.shape) > 0
    tissue = ndimage.binary_fill_holes(ndimage.binary_closing(covered, np.ones((3, 3)), iterations=2) | covered)
    rows, cols = np.nonzero(tissue)
    flat = rows * grid.n_cols + cols
    n_cells_bin = np.asarray(weights.sum(axis=0)).ravel()[flat]
    info = {
        "source": "transcripts" if use_transcripts else "cells",
        "image_key": image_key,
        "shapes_key": shapes_key,
        "mpp": float(mpp),
        "n_cells": len(cells),
        "n_cells_dropped": n_out,
        "n_cells_without_polygon": n_unmatched,
    }

    if use_transcripts:
        bin_counts = _transcripts_per_bin(sdata, points_key, image_key, genes, grid, min_qv, info)
        truth_counts = bin_counts[flat]
        info["n_transcripts_off_tissue"] = int(bin_counts.sum() - truth_counts.sum())
        if info["n_transcripts_off_tissue"]:
            logger.info("%d transcripts lie off the tissue bins and are left out.", info["n_transcripts_off_tissue"])
    else:
        counts = sp.csr_matrix(table.X[cells], dtype=np.float64)
        truth_counts = (weights.T @ counts).tocsr()[flat]

    rng = np.random.default_rng(seed)
    spot_xy, array_rc, spot_counts = pseudo_visium(tissue, grid, mpp, rows, cols, truth_counts, rng=rng)
    logger.info(
        "Xenium -> pseudo-Visium from %s: %d cells, %d genes, %.4f µm/px: %d tissue bins, %d spots.",
        info["source"], len(cells), len(genes), mpp, len(rows), len(spot_xy),
    )  # fmt: skip
    truth_obs = pd.DataFrame({"in_tissue": np.ones(len(rows), bool), "n_cells": n_cells_bin})
    sdata_out = visium_like(
        dataset_id=dataset_id,
        image=sdata.images[image_key],
        mpp=mpp,
        grid=grid,
        spot_xy_px=spot_xy,
        array_rc=array_rc,
        spot_counts=spot_counts,
        var=pd.DataFrame(index=genes),
        truth_rows=rows,
        truth_cols=cols,
        truth_counts=truth_counts,
        truth_obs=truth_obs,
        transformations=element_transformations(sdata.images[image_key]),
    )
    sdata_out.tables["truth"].uns["xenium"] = info
    cell_counts = sp.csr_matrix(table.X[cells], dtype=np.float32)
    add_truth_cells(sdata_out, cell_polygons, cell_counts, mpp=mpp, var=pd.DataFrame(index=genes),
                    obs=pd.DataFrame({"xenium_cell_id": np.asarray(cell_ids)[cells]}))  # fmt: skip
    return sdata_out


def _union_per_cell(polygons: np.ndarray, cell_of_poly: np.ndarray, n_cells: int) -> np.ndarray:
    """One geometry per cell: its polygon, or the union of its polygons."""
    import shapely

    out = np.empty(n_cells, dtype=object)
    counts = np.bincount(cell_of_poly, minlength=n_cells)
    single = counts[cell_of_poly] == 1
    out[cell_of_poly[single]] = polygons[single]
    for cell in np.flatnonzero(counts > 1):
        out[cell] = shapely.union_all(polygons[cell_of_poly == cell])
    return out


def _transcripts_per_bin(sdata, points_key: str, image_key: str, genes: pd.Index, grid: BinGrid, min_qv, info: dict):
    """``(n_bins, n_genes)`` counts of the transcripts in each bin of the grid."""
    if points_key not in sdata.points:
        raise KeyError(
            f"No points {points_key!r} in the SpatialData; points: {choices_text(list(sdata.points))}. Read the run with "
            "spatialdata_io.xenium(..., transcripts=True)."
        )
    points = sdata.points[points_key]
    feature_key = points.attrs.get("spatialdata_attrs", {}).get("feature_key") or "feature_name"
    cs = _shared_cs(sdata, image_key, points, f"the transcripts {points_key!r}")
    affine = to_image_pixels(sdata, points, image_key, cs)
    columns = ["x", "y", feature_key] + (["qv"] if min_qv is not None and "qv" in points.columns else [])
    df = points[columns].compute() if hasattr(points, "compute") else points[columns]
    n_all = len(df)
    keep = np.ones(n_all, bool)
    if "qv" in columns:
        keep &= df["qv"].to_numpy(float) >= min_qv
    gene = genes.get_indexer(df[feature_key].astype(str).to_numpy())
    keep_gene = keep & (gene >= 0)
    xy = apply_affine(affine, df[["x", "y"]].to_numpy(float))
    flat = points_to_bins(xy, grid)
    on = keep_gene & (flat >= 0)
    info.update(
        n_transcripts=int(n_all),
        n_transcripts_low_qv=int((~keep).sum()),
        n_transcripts_other_features=int((keep & (gene < 0)).sum()),
        n_transcripts_off_grid=int((keep_gene & (flat < 0)).sum()),
    )
    logger.info(
        "Transcripts: %d in all, %d below qv %s, %d of features not in the table, %d off the bin grid.",
        n_all, info["n_transcripts_low_qv"], min_qv, info["n_transcripts_other_features"],
        info["n_transcripts_off_grid"],
    )  # fmt: skip
    n_bins = grid.n_rows * grid.n_cols
    return sp.csr_matrix(
        (np.ones(int(on.sum())), (flat[on], gene[on])), shape=(n_bins, len(genes)), dtype=np.float64
    )  # duplicates are summed
