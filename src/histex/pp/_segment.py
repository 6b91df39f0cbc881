"""``segment_nuclei``: nucleus polygons from the H&E, offline, streamed over the slide."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from histex import _sdata
from histex import segmentation as seg
from histex._backing import drop_element, quiet_zarr_notices, wants_store
from histex._validation import check_bool, check_int, check_key, check_number

logger = logging.getLogger(__name__)

#: Margin read around every block: wider than any nucleus, so that one cut by a block border is whole in the
#: window of the block that holds its centre.
MARGIN_UM = 20.0


def segment_nuclei(
    sdata,
    *,
    image_key: str | None = None,
    mpp: float | None = None,
    method: Callable[[np.ndarray, float], np.ndarray] | None = None,
    threshold: float | None = None,
    min_area_um2: float = 12.0,
    block_px: int = 4096,
    key_added: str = "nuclei",
    to_store: bool | None = None,
    show_progress: bool = True,
) -> str:
    """Segment the nuclei of the H&E into polygons, without learned weights, or with a model you bring.

    The default finds nuclei by their haematoxylin (colour deconvolution), cut at one level for the whole slide and
    split by a watershed on the distance transform (scikit-image). The slide is read in blocks that overlap by
    20 µm, and a nucleus is kept by the block that holds its centre: one cut by a block border comes out once, and
    whole. It is a baseline without learned weights (the benchmark page gives its F1 against annotated nuclei); a
    learned model segments better (``method``).

    Parameters
    ----------
    sdata
        A SpatialData with the full-resolution H&E.
    image_key
        The H&E; found when unambiguous.
    mpp
        Microns per pixel of the H&E. ``None``: derived from the Visium spot lattice, as
        :func:`histex.pp.extract_features` does (an H&E-only slide needs it given).
    method
        Any segmentation as a callable ``method(rgb, mpp) -> labels``: ``rgb`` a ``(y, x, 3)`` uint8 block, the
        result an integer label image of its shape (0 background). StarDist, CellPose or your own model, run on the
        same blocks, without histex depending on them. ``None``: the built-in watershed.
    threshold
        Haematoxylin optical density above which a pixel is nucleus (built-in method). ``None``: 1.25 times Otsu's
        threshold over an overview of the slide.
    min_area_um2
        Smaller objects are not nuclei (built-in method).
    block_px
        Edge of the blocks the slide is read in.
    key_added
        Name of the shapes element of nucleus polygons.
    to_store
        Also write the polygons into the SpatialData's zarr store. ``None``: where it is backed by one.
    show_progress
        A progress bar over the blocks.

    Returns
    -------
    str
        ``key_added``: ``shapes[key_added]``, one polygon per nucleus in the H&E's pixels, with its
        transformations, and columns ``area_um2``.
    """
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from tqdm.auto import tqdm

    start = time.perf_counter()
    check_key("key_added", key_added)
    to_store = wants_store(sdata, to_store)
    check_bool("show_progress", show_progress)
    min_area_um2 = check_number("min_area_um2", min_area_um2, minimum=0)
    block_px = check_int("block_px", block_px, minimum=64)
    if method is not None and not callable(method):
        raise TypeError(
            f"method must be None (the built-in watershed) or a callable method(rgb, mpp) -> labels, got {method!r}."
        )
    if threshold is not None:
        threshold = check_number("threshold", threshold, minimum=0, above=True)
    if mpp is None:
        section = _sdata.read_section(sdata, image_key=image_key)
        image_key, mpp = section.image_key, section.mpp
    else:
        image_key, mpp = _sdata.find_image_key(sdata, image_key), _sdata.check_mpp(mpp)
    if any(key_added in getattr(sdata, kind) for kind in ("images", "labels", "points", "tables")):
        # spatialdata keeps one namespace for all its elements
        raise ValueError(f"key_added={key_added!r} names another element; choose another key_added.")
    if key_added in sdata.shapes and "area_um2" not in sdata.shapes[key_added].columns:
        raise ValueError(f"key_added={key_added!r} names shapes that segment_nuclei did not write; choose another.")
    image = _sdata.image_array(sdata, image_key)
    if image.shape[0] < 3:
        raise ValueError(f"The image {image_key!r} has {image.shape[0]} channels; an H&E has 3 (RGB).")

    def read(y0, y1, x0, x1) -> np.ndarray:
        block = np.asarray(image.data[:3, y0:y1, x0:x1]).transpose(1, 2, 0)
        return block if block.dtype == np.uint8 else np.clip(block, 0, 255).astype(np.uint8)

    rows, cols = image.shape[1:]
    if method is None:
        if threshold is None:
            step = max(1, math.ceil(max(rows, cols) / 2048))
            threshold = seg.nucleus_threshold(
                np.asarray(image.data[:3, ::step, ::step]).transpose(1, 2, 0).astype(np.uint8)
            )

        def segment(rgb):
            return seg.watershed_nuclei(rgb, mpp, threshold=threshold, min_area_um2=min_area_um2)
    else:

        def segment(rgb):
            labels = np.asarray(method(rgb, mpp))
            if labels.shape != rgb.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"method must return an integer label image of the block's shape {rgb.shape[:2]}, got "
                    f"{labels.dtype} {labels.shape}."
                )
            return labels

    n_blocks = math.ceil(rows / block_px) * math.ceil(cols / block_px)
    with tqdm(total=n_blocks, desc="segmenting", disable=not show_progress, leave=False) as bar:
        polygons, _ = seg.segment_blocks(
            read, (rows, cols), segment, block_px=block_px, margin_px=math.ceil(MARGIN_UM / mpp), progress=bar
        )
    if len(polygons) == 0:
        hint = f"threshold={threshold:.3g} may be too high; " if method is None else ""
        raise ValueError(f"No nucleus found on {image_key!r}: {hint}nothing was written.")
    frame = gpd.GeoDataFrame({"area_um2": shapely.area(polygons) * mpp**2}, geometry=list(polygons))
    shapes = ShapesModel.parse(frame, transformations=dict(_sdata.element_transformations(sdata.images[image_key])))
    drop_element(sdata, "shapes", key_added, from_store=to_store)
    sdata.shapes[key_added] = shapes
    if to_store:
        with quiet_zarr_notices():
            sdata.write_element(key_added)
    seconds = time.perf_counter() - start
    area_mm2 = rows * cols * (mpp / 1000) ** 2
    logger.info(
        "Segmented %d nuclei on %r in %.1f s (%.2f mm² per minute); shapes %r.",
        len(shapes), image_key, seconds, area_mm2 / seconds * 60, key_added,
    )  # fmt: skip
    return key_added
