"""A simulated section written as the ``outs/`` folder of ``spaceranger count``, to run ``histex run`` and
``histex cohort`` on sections whose truth is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histex._sdata import image_array


def barcodes(n: int) -> list[str]:
    """``n`` distinct 16-base barcodes with Space Ranger's ``-1`` suffix."""
    bases = np.array(list("ACGT"))
    digits = (np.arange(n)[:, None] // 4 ** np.arange(16)[None, ::-1]) % 4
    return ["".join(bases[row]) + "-1" for row in digits]


def write_matrix(path: Path, counts, genes: list[str], cells: list[str]) -> None:
    """A 10x HDF5 feature-barcode matrix (the v3 layout of Space Ranger 1.x and later): CSC, genes x barcodes."""
    import h5py
    import scipy.sparse as sp

    m = sp.csc_matrix(np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts).T.astype(np.int32))
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(cells, dtype="S"))
        g.create_dataset("data", data=m.data)
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        feats = g.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(genes)))
        feats.create_dataset("genome", data=np.array([b"GRCh38"] * len(genes)))
        feats.create_dataset("id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S"))
        feats.create_dataset("name", data=np.array(genes, dtype="S"))


def write_spaceranger(sdata, folder: str | Path, *, version: int = 1, image_name: str = "he.tif") -> tuple[Path, Path]:
    """Write a simulated section as Space Ranger writes a Visium section.

    Parameters
    ----------
    sdata
        A section of :func:`histex.datasets.toy` or this module (``tables["table"]`` of spots, their circles and
        the full-resolution H&E).
    folder
        Gets ``outs/`` and the image.
    version
        ``1``: positions in ``tissue_positions_list.csv`` without a header (Space Ranger 1.x); ``2``:
        ``tissue_positions.csv`` with one (2.x and later).
    image_name
        The full-resolution H&E, written as an RGB TIFF.

    Returns
    -------
    tuple[pathlib.Path, pathlib.Path]
        ``(outs, image)``. ``outs`` holds ``filtered_feature_bc_matrix.h5`` (10x HDF5), the positions (three
        off-tissue spots beside the section's), ``scalefactors_json.json`` and ``tissue_hires_image.png``.
    """
    import pandas as pd
    import tifffile
    from PIL import Image

    table = sdata.tables["table"]
    region = table.obs["region"].iloc[0]
    circles = sdata.shapes[region].loc[table.obs["spot_id"].to_numpy()]
    image_key = next(k for k in sdata.images if k.endswith("_full_image"))
    rgb = np.asarray(image_array(sdata, image_key).values).transpose(1, 2, 0).astype(np.uint8)
    outs = Path(folder) / "outs"
    (outs / "spatial").mkdir(parents=True)

    names = barcodes(table.n_obs + 3)
    write_matrix(outs / "filtered_feature_bc_matrix.h5", table.X, list(table.var_names), names[: table.n_obs])
    positions = pd.DataFrame(
        {
            "barcode": names,
            "in_tissue": [1] * table.n_obs + [0] * 3,
            "array_row": np.r_[table.obs["array_row"].to_numpy(), [0, 0, 0]],
            "array_col": np.r_[table.obs["array_col"].to_numpy(), [0, 2, 4]],
            "pxl_row_in_fullres": np.r_[np.round(circles.geometry.y.to_numpy()).astype(int), [3, 3, 3]],
            "pxl_col_in_fullres": np.r_[np.round(circles.geometry.x.to_numpy()).astype(int), [3, 5, 7]],
        }
    )
    if version == 1:
        positions.to_csv(outs / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    else:
        positions.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    hires_scale = 0.5
    hires = Image.fromarray(rgb).resize((round(rgb.shape[1] * hires_scale), round(rgb.shape[0] * hires_scale)))
    hires.save(outs / "spatial" / "tissue_hires_image.png")
    scalefactors = {
        "spot_diameter_fullres": float(2 * circles["radius"].iloc[0]),
        "tissue_hires_scalef": hires_scale,
        "fiducial_diameter_fullres": float(3.2 * circles["radius"].iloc[0]),
        "tissue_lowres_scalef": hires_scale / 4,
    }
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    image = Path(folder) / image_name
    tifffile.imwrite(image, rgb, photometric="rgb")
    return outs, image
