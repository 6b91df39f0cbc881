"""A Visium section from the files Space Ranger writes (``outs/``) and its full-resolution H&E, checked before
anything is read: the count matrix, the spot positions (Space Ranger 1.x ``tissue_positions_list.csv`` or 2.x
``tissue_positions.csv``), the scale factors, and that the image is the one the positions are in pixels of.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MATRIX_FILE = "filtered_feature_bc_matrix.h5"
POSITIONS_FILES = ("tissue_positions_list.csv", "tissue_positions.csv")  # Space Ranger 1.x, 2.x and later
SCALEFACTORS_FILE = "scalefactors_json.json"
HIRES_FILE = "tissue_hires_image.png"
TIFF_SUFFIXES = (".tif", ".tiff", ".btf")
#: How far the image's size may be from the one the scale factors imply (Space Ranger rounds the hires image).
SIZE_TOLERANCE = 0.02


def check_outs(outs: str | Path, image: str | Path) -> dict:
    """Check a Space Ranger ``outs`` folder and a full-resolution image before any work; return what was found
    (``matrix``, ``positions``, ``scalefactors``, ``image_size`` as ``(width, height)``).

    Raises
    ------
    FileNotFoundError
        A folder without the matrix, the positions or the scale factors, or an image that is not there.
    ValueError
        An image whose size does not match the scale factors or that the spots fall outside of.
    """
    outs, image = Path(outs), Path(image)
    if not outs.is_dir():
        raise FileNotFoundError(f"No Space Ranger folder at {outs}: give the outs/ folder of `spaceranger count`.")
    matrices = sorted(outs.glob(f"*{MATRIX_FILE}"))
    if not matrices:
        raise FileNotFoundError(
            f"{outs} has no {MATRIX_FILE}: give the outs/ folder of `spaceranger count`, which holds it."
        )
    positions = [outs / "spatial" / name for name in POSITIONS_FILES if (outs / "spatial" / name).is_file()]
    if not positions:
        raise FileNotFoundError(
            f"{outs / 'spatial'} has no spot positions ({' or '.join(POSITIONS_FILES)}): give the outs/ folder of "
            "`spaceranger count` with its spatial/ folder."
        )
    scalefactors_path = outs / "spatial" / SCALEFACTORS_FILE
    if not scalefactors_path.is_file():
        raise FileNotFoundError(f"{outs / 'spatial'} has no {SCALEFACTORS_FILE}.")
    scalefactors = json.loads(scalefactors_path.read_text())
    if not image.is_file():
        raise FileNotFoundError(f"No image at {image}: give the full-resolution H&E passed to spaceranger --image.")

    width, height = image_size(image)
    hires = outs / "spatial" / HIRES_FILE
    if hires.is_file() and "tissue_hires_scalef" in scalefactors:
        hires_width, hires_height = image_size(hires)
        expected = np.array([hires_width, hires_height]) / float(scalefactors["tissue_hires_scalef"])
        if np.any(np.abs(np.array([width, height]) / expected - 1) > SIZE_TOLERANCE):
            raise ValueError(
                f"The image {image.name} is {width} x {height} px, but the scale factors say the image Space Ranger "
                f"aligned the spots to is about {expected[0]:.0f} x {expected[1]:.0f} px ({HIRES_FILE} divided by "
                f"tissue_hires_scalef={scalefactors['tissue_hires_scalef']}). Give the full-resolution image passed "
                "to `spaceranger count --image`, not a downscaled or cropped one."
            )
    xy = spot_pixels(positions[0])
    if len(xy) and (xy.min() < 0 or xy[:, 0].max() > width or xy[:, 1].max() > height):
        raise ValueError(
            f"The spots of {positions[0].name} reach {xy[:, 0].max():.0f} x {xy[:, 1].max():.0f} px, outside the "
            f"image {image.name} ({width} x {height} px): give the full-resolution image passed to `spaceranger "
            "count --image`."
        )
    return {
        "matrix": matrices[0],
        "positions": positions[0],
        "scalefactors": scalefactors,
        "image_size": (width, height),
    }


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header (TIFF, JPEG, PNG)."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # whole-slide H&E are larger than PIL's guard against decompression bombs
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError) as error:  # tifffile's TiffFileError is a ValueError, PIL's an OSError
        raise ValueError(f"Cannot read {path} as an image ({error}): give a TIFF, JPEG or PNG H&E.") from error


def spot_pixels(positions: Path) -> np.ndarray:
    """``(n, 2)`` ``(x, y)`` full-resolution pixels of the spots in a positions file of either layout."""
    import pandas as pd

    table = pd.read_csv(positions, header=None)
    if "in_tissue" in table.iloc[0].astype(str).tolist():  # 2.x, or 1.x written with a header
        table = pd.read_csv(positions)
        return table[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    return table.iloc[:, [5, 4]].to_numpy(float)


def read_visium(outs: str | Path, image: str | Path, *, dataset_id: str | None = None):
    """Read a Visium section with ``spatialdata_io.visium`` after :func:`check_outs`.

    Parameters
    ----------
    outs
        The ``outs/`` folder of ``spaceranger count``.
    image
        The full-resolution H&E passed to ``spaceranger count --image`` (TIFF, JPEG or PNG).
    dataset_id
        Names the elements (default: the library id of the matrix file, else the folder's name).

    Returns
    -------
    spatialdata.SpatialData
        As ``spatialdata_io.visium(outs, fullres_image_file=image)`` reads it.
    """
    import spatialdata_io

    found = check_outs(outs, image)
    outs = Path(outs)
    if dataset_id is None:
        library = found["matrix"].name.removesuffix(MATRIX_FILE).rstrip("_")
        dataset_id = library or (outs.parent.name if outs.name == "outs" else outs.name)
    sdata = spatialdata_io.visium(
        outs, dataset_id=dataset_id, counts_file=MATRIX_FILE, fullres_image_file=Path(image).resolve()
    )
    logger.info("Read %s: %d spots x %d genes.", outs, *sdata.tables["table"].shape)
    return sdata
