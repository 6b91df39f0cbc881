"""The H&E under a map of bins: where the bins lie on the image, and the crop of it read at about their size."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from histex._sdata import pyramid_levels
from histex._tables import histex_record
from histex._validation import check_number

logger = logging.getLogger(__name__)

# Pixels across the drawn H&E at least (about a figure's width), so that a small section is not drawn blocky.
MIN_DRAWN_PX = 800
# Bins used to fit the grid -> image affine; a few thousand pin it down, and a million would cost seconds.
MAX_FIT_BINS = 20_000


def check_alpha(alpha: float) -> None:
    check_number("alpha", alpha, minimum=0, maximum=1)


def _histex_meta(table) -> dict:
    """Where :func:`histex.tl.super_resolve` laid its bins, or an empty dict for any other table."""
    data = histex_record(table, "data")
    return data if "bin_px" in data and "image_key" in data else {}


def image_to_draw(sdata, recorded: str | None, image_key: str | None, what: str) -> str | None:
    """The H&E to draw under ``what``: the one named (a KeyError that lists the images when it is missing), else
    the one histex read (``recorded``) where it is in the SpatialData, else the only one; None, with the reason
    logged, when there is none to choose.
    """
    from histex import _sdata

    if image_key is not None:
        return _sdata.find_image_key(sdata, image_key)
    if recorded is not None and str(recorded) in sdata.images:
        return str(recorded)
    try:
        return _sdata.find_image_key(sdata)
    except ValueError as err:
        logger.info("%s drawn without the H&E: %s", what, err)
        return None


def _locate_image(sdata, table, table_key: str, image_key: str | None):
    """The H&E to draw and the 3 x 3 affine from bin grid ``(col, row)`` to its pixels ``(x, y)``, or None."""
    meta = _histex_meta(table)
    key = image_to_draw(sdata, meta.get("image_key"), image_key, f"Bins of {table_key!r}")
    if key is None:
        return None
    try:
        if meta and str(meta["image_key"]) == key:
            b = float(meta["bin_px"])
            affine = np.array([[b, 0.0, b / 2], [0.0, b, b / 2], [0.0, 0.0, 1.0]])
        else:
            affine = fit_grid_affine(sdata, table, key)
    except ValueError as err:
        if image_key is not None:
            raise ValueError(f"Cannot place the bins of table {table_key!r} on image {key!r}: {err}") from err
        logger.warning("Bins of %r drawn without the H&E: cannot place them on %r: %s", table_key, key, err)
        return None
    return key, affine


def fit_grid_affine(sdata, table, image_key: str, *, max_bins: int = MAX_FIT_BINS) -> np.ndarray:
    """3 x 3 affine from bin grid coordinates ``(array_col, array_row)`` to image pixels ``(x, y)``, by least squares.

    The bins' centres are those of the shapes the table annotates (polygon centroids or points), placed in the
    image's pixel frame through a coordinate system both share. A bin ``(row, col)`` is then centred on
    ``affine @ (col, row, 1)``. Raises ValueError when the bins cannot be placed or do not lie on their grid.
    """
    import shapely
    from spatialdata.models import get_table_keys

    from histex import _sdata

    try:
        region, region_key, instance_key = get_table_keys(table)
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError("the table annotates no shapes (uns['spatialdata_attrs'] has no region)") from err
    regions = [region] if isinstance(region, str) else list(region)
    grid_xy, pixel_xy = [], []
    for name in (r for r in regions if r in sdata.shapes):
        gdf = sdata.shapes[name]
        rows = np.flatnonzero(table.obs[region_key].to_numpy() == name)
        if len(rows) > max_bins:  # evenly spread over the table, so the fit spans the section
            rows = rows[np.linspace(0, len(rows) - 1, max_bins).round().astype(np.int64)]
        position = pd.Index(gdf.index).get_indexer(table.obs[instance_key].to_numpy()[rows])
        rows, position = rows[position >= 0], position[position >= 0]
        if not len(rows):
            continue
        centres = shapely.centroid(gdf.geometry.to_numpy()[position])
        xy = np.stack([shapely.get_x(centres), shapely.get_y(centres)], axis=1)
        cs = _sdata.common_coordinate_system(sdata, image_key, name)
        to_px = _sdata.to_image_pixels(sdata, gdf, image_key, cs)
        pixel_xy.append(xy @ to_px[:2, :2].T + to_px[:2, 2])
        obs = table.obs.iloc[rows]
        grid_xy.append(np.stack([obs["array_col"].to_numpy(float), obs["array_row"].to_numpy(float)], axis=1))
    if not grid_xy:
        raise ValueError(f"none of the shapes the table annotates ({regions}) hold its bins")
    grid_xy, pixel_xy = np.concatenate(grid_xy), np.concatenate(pixel_xy)
    design = np.column_stack([grid_xy, np.ones(len(grid_xy))])
    coef, _, rank, _ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    if rank < 3:
        raise ValueError("the bins do not span two grid directions, so their grid cannot be placed")
    affine = np.vstack([coef.T, [0.0, 0.0, 1.0]])
    bin_px = float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
    residual = float(np.sqrt(np.mean(np.sum((design @ coef - pixel_xy) ** 2, axis=1))))
    if not bin_px > 0 or residual > 0.25 * bin_px:
        raise ValueError(
            f"the shape centres do not lie on the array_row/array_col grid (residual {residual:.3g} px for bins of "
            f"{bin_px:.3g} px)"
        )
    return affine


def read_crop(sdata, image_key: str, box_px: tuple[float, float, float, float], px_per_bin: float):
    """The part ``(x0, x1, y0, y1)`` (full-resolution pixels) of an image at about one pixel per bin, or less.

    Reads the coarsest level of the pyramid whose pixels are no larger than ``px_per_bin`` (nor so large that the
    crop falls under ``MIN_DRAWN_PX`` across), then strides through it to that size; only the crop is read. Returns
    ``(rgb, extent)``: a ``(y, x, 3)`` array (uint8, or float in [0, 1]) and the full-resolution pixel box
    ``(x0, x1, y0, y1)`` it covers, or None when the box misses the image.
    """
    levels = pyramid_levels(sdata.images[image_key])
    full_h, full_w = int(levels[0].sizes["y"]), int(levels[0].sizes["x"])
    x0, x1 = max(box_px[0], 0.0), min(box_px[1], float(full_w))
    y0, y1 = max(box_px[2], 0.0), min(box_px[3], float(full_h))
    if x1 <= x0 or y1 <= y0:
        return None
    target = max(1.0, min(px_per_bin, max(x1 - x0, y1 - y0) / MIN_DRAWN_PX))

    def factor(a) -> float:
        return max(full_w / int(a.sizes["x"]), full_h / int(a.sizes["y"]))

    level = max((a for a in levels if factor(a) <= target * 1.01), key=factor)  # the finest level always fits
    fx, fy = full_w / int(level.sizes["x"]), full_h / int(level.sizes["y"])
    lx0, lx1 = int(np.floor(x0 / fx)), min(int(np.ceil(x1 / fx)), int(level.sizes["x"]))
    ly0, ly1 = int(np.floor(y0 / fy)), min(int(np.ceil(y1 / fy)), int(level.sizes["y"]))
    step = max(1, min(int(target / max(fx, fy) + 1e-9), lx1 - lx0, ly1 - ly0))
    nx, ny = (lx1 - lx0) // step, (ly1 - ly0) // step
    # One sample from the middle of each step x step block.
    crop = level.isel(x=slice(lx0 + step // 2, lx0 + nx * step, step), y=slice(ly0 + step // 2, ly0 + ny * step, step))
    rgb = _as_rgb(np.asarray(crop.transpose("y", "x", "c").data))
    return rgb, (lx0 * fx, (lx0 + nx * step) * fx, ly0 * fy, (ly0 + ny * step) * fy)


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(y, x, c)`` pixels as something imshow draws in colour: the first three channels, or the first as grey."""
    pixels = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)
    if pixels.dtype == np.uint8:
        return pixels
    floating = np.issubdtype(pixels.dtype, np.floating)
    pixels = pixels.astype(np.float32)
    finite = pixels[np.isfinite(pixels)]
    top = float(np.percentile(finite, 99.9)) if finite.size else 1.0
    if floating and 0 < top <= 1:
        top = 1.0  # already in [0, 1]
    return np.clip(np.nan_to_num(pixels / (top if top > 0 else 1.0)), 0.0, 1.0)


def underlay(sdata, table, table_key: str, image_key: str | None):
    """The crop of the H&E under the bins, the full-resolution pixel box it covers and the 3 x 3 affine from those
    pixels to bin coordinates; None when the bins are drawn alone.
    """
    placed = _locate_image(sdata, table, table_key, image_key)
    if placed is None:
        return None
    key, affine = placed
    rows = table.obs["array_row"].to_numpy()
    cols = table.obs["array_col"].to_numpy()
    # The bins' outer edges in grid coordinates (bin centres are integers), then in image pixels.
    r0, r1, c0, c1 = rows.min() - 0.5, rows.max() + 0.5, cols.min() - 0.5, cols.max() + 0.5
    corners = np.array([[c0, r0], [c1, r0], [c0, r1], [c1, r1]]) @ affine[:2, :2].T + affine[:2, 2]
    box = (corners[:, 0].min(), corners[:, 0].max(), corners[:, 1].min(), corners[:, 1].max())
    px_per_bin = float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
    crop = read_crop(sdata, key, box, px_per_bin)
    if crop is None:
        if image_key is not None:
            raise ValueError(f"The bins of table {table_key!r} lie outside image {key!r}.")
        logger.warning("The bins of %r lie outside image %r; they are drawn without it.", table_key, key)
        return None
    return crop[0], crop[1], np.linalg.inv(affine)


def draw_underlay(ax, rgb: np.ndarray, box_px: tuple[float, float, float, float], inverse: np.ndarray) -> None:
    """Draw the H&E crop under the domains, in a child axes of ``ax`` that shares its limits (bin coordinates)."""
    from matplotlib.transforms import Affine2D

    x0, x1, y0, y1 = box_px
    limits = ax.get_xlim(), ax.get_ylim()
    # A child axes drawn before the domain images (zorder) keeps ax.get_images() to the domain layers.
    he_ax = ax.inset_axes([0, 0, 1, 1], sharex=ax, sharey=ax, zorder=-1)
    he_ax.set_axis_off()
    diagonal = abs(inverse[0, 0]) + abs(inverse[1, 1])
    if abs(inverse[0, 1]) + abs(inverse[1, 0]) <= 1e-6 * diagonal:  # axis-aligned: an extent in bin coordinates
        gx0, gx1 = inverse[0, 0] * np.array([x0, x1]) + inverse[0, 2]
        gy0, gy1 = inverse[1, 1] * np.array([y0, y1]) + inverse[1, 2]
        he_ax.imshow(rgb, extent=(gx0, gx1, gy1, gy0), aspect="auto", interpolation="antialiased")
    else:  # rotated or sheared: the pixel box, mapped into bin coordinates
        he_ax.imshow(
            rgb,
            extent=(x0, x1, y1, y0),
            aspect="auto",
            interpolation="antialiased",
            transform=Affine2D(inverse) + he_ax.transData,
        )
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
