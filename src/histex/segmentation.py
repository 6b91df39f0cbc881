"""Nuclei from H&E without learned weights, on plain arrays: haematoxylin by colour deconvolution, a threshold,
and a watershed on the distance transform; label images to polygons; whole slides in overlapping blocks.

This is the offline default of :func:`histex.pp.segment_nuclei`. A learned model (StarDist, CellPose) segments
better; it plugs into the same block streaming as a callable ``(rgb, mpp) -> labels``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: The threshold on haematoxylin is this factor times Otsu's: Otsu's own cut also takes the haematoxylin-tinted
#: cytoplasm of dense tumour (CHANGELOG and the benchmark page give the F1 of each).
OTSU_FACTOR = 1.25


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin optical density of an ``(y, x, 3)`` RGB image (Ruifrok and Johnston's deconvolution)."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., 0].astype(np.float32)


def nucleus_threshold(rgb_sample: np.ndarray, *, factor: float = OTSU_FACTOR) -> float:
    """The haematoxylin level above which a pixel is nucleus: ``factor`` times Otsu's threshold over a sample of
    the slide (an overview), so that every block of a slide is cut at the same level.
    """
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(haematoxylin(rgb_sample)) * factor)


def watershed_nuclei(
    rgb: np.ndarray, mpp: float, *, threshold: float, min_area_um2: float = 12.0, min_distance_um: float = 3.0
) -> np.ndarray:
    """Label image of the nuclei of an RGB image: haematoxylin smoothed over 0.5 µm and cut at ``threshold``,
    opened, cleared of holes and of objects under ``min_area_um2``, and split by a watershed from the maxima of
    its distance transform at least ``min_distance_um`` apart.
    """
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, morphology, segmentation

    h = filters.gaussian(haematoxylin(rgb), sigma=0.5 / mpp)
    min_px = max(1, int(min_area_um2 / mpp**2))
    mask = morphology.remove_small_holes(h > threshold, max_size=min_px)
    mask = morphology.opening(mask, morphology.disk(max(1, round(0.75 / mpp))))
    mask = morphology.remove_small_objects(mask, max_size=min_px)
    distance = filters.gaussian(ndi.distance_transform_edt(mask), sigma=1.0)
    peaks = feature.peak_local_max(
        distance, min_distance=max(1, int(min_distance_um / mpp)), labels=measure.label(mask), exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-distance, markers, mask=mask).astype(np.int32)


def label_polygons(labels: np.ndarray, offset_xy: tuple[float, float] = (0.0, 0.0)):
    """Each label's outline as a shapely polygon in pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), shifted by
    ``offset_xy``, with the label's centroid ``(n, 2)`` ``(x, y)`` in those coordinates.
    """
    import shapely
    from skimage.measure import find_contours, regionprops

    polygons, centroids = [], []
    for region in regionprops(labels):
        y0, x0, _, _ = region.bbox
        contour = max(find_contours(np.pad(region.image, 1).astype(np.float32), 0.5), key=len)
        # contour points are pixel indices of the padded crop; +0.5 to pixel-corner coordinates
        xy = np.stack([contour[:, 1] + x0 - 0.5, contour[:, 0] + y0 - 0.5], axis=1) + offset_xy
        polygon = shapely.Polygon(xy)
        polygons.append(polygon if polygon.is_valid else shapely.make_valid(polygon))
        cy, cx = region.centroid
        centroids.append((cx + 0.5 + offset_xy[0], cy + 0.5 + offset_xy[1]))
    return np.asarray(polygons, dtype=object), np.asarray(centroids, dtype=float).reshape(-1, 2)


def blocks(shape_yx: tuple[int, int], block_px: int, margin_px: int):
    """Core tiles of ``block_px`` over an image, each with the window read around it (the tile grown by
    ``margin_px``, cut at the image): ``((y0, y1, x0, x1) core, (y0, y1, x0, x1) window)``.
    """
    rows, cols = shape_yx
    for y0 in range(0, rows, block_px):
        for x0 in range(0, cols, block_px):
            core = (y0, min(y0 + block_px, rows), x0, min(x0 + block_px, cols))
            window = (
                max(0, y0 - margin_px),
                min(rows, core[1] + margin_px),
                max(0, x0 - margin_px),
                min(cols, core[3] + margin_px),
            )
            yield core, window


def segment_blocks(read: Callable, shape_yx, segment: Callable, *, block_px: int, margin_px: int, progress=None):
    """Nuclei of a whole slide, block by block, without seams: every window is segmented and only the nuclei
    whose centroid lies in its core tile are kept, so a nucleus cut by a tile border (narrower than the margin) is
    found whole in the window of the tile that holds its centre, and only there.

    ``read(y0, y1, x0, x1) -> (y, x, 3)`` uint8 RGB; ``segment(rgb) -> labels``. Returns the polygons and the
    centroids in image pixels.
    """
    polygons, centroids = [], []
    for core, window in blocks(shape_yx, block_px, margin_px):
        labels = segment(read(*window))
        found, centre = label_polygons(labels, offset_xy=(window[2], window[0]))
        if len(found):
            keep = (
                (centre[:, 1] >= core[0])
                & (centre[:, 1] < core[1])
                & (centre[:, 0] >= core[2])
                & (centre[:, 0] < core[3])
            )
            polygons.append(found[keep])
            centroids.append(centre[keep])
        if progress is not None:
            progress.update(1)
    if not polygons:
        return np.zeros(0, dtype=object), np.zeros((0, 2))
    return np.concatenate(polygons), np.concatenate(centroids)
