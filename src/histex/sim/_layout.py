"""A simulated section in the layout ``spatialdata_io.visium`` writes, with its ground truth on the bin grid."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histex._sdata import bin_elements
from histex.geometry import VISIUM_SPOT_DIAMETER_UM, BinGrid


def visium_like(
    *,
    dataset_id: str,
    image,
    mpp: float,
    grid: BinGrid,
    spot_xy_px: np.ndarray,
    array_rc: np.ndarray,
    spot_counts,
    var: pd.DataFrame,
    truth_rows: np.ndarray,
    truth_cols: np.ndarray,
    truth_counts,
    truth_obs: pd.DataFrame | None = None,
    transformations: dict | None = None,
    scalefactors: dict | None = None,
):
    """Wrap spots and ground-truth bins in SpatialData elements.

    Parameters
    ----------
    dataset_id
        Names the spots (``shapes[dataset_id]``), the image (``images[f"{dataset_id}_full_image"]``) and the
        coordinate system when ``transformations`` is not given.
    image
        The H&E as an image element (kept as it is) or a ``(3, y, x)`` uint8 array (parsed with a pyramid).
    mpp
        Microns per image pixel.
    grid
        The bin grid of the truth.
    spot_xy_px, array_rc, spot_counts
        Spot centres ``(x, y)`` in image pixels, Visium array coordinates, and ``(n_spots, n_genes)`` counts.
    var
        One row per gene, indexed by gene name.
    truth_rows, truth_cols, truth_counts
        The ground-truth bins: grid positions and ``(n_bins, n_genes)`` counts.
    truth_obs
        Extra per-bin columns of the truth table (``in_tissue`` at least, or all bins count as tissue).
    transformations
        Of the image, the spots and the truth bins; an ``Identity`` to ``dataset_id`` by default.
    scalefactors
        Entries that replace or add to the spot table's ``uns["spatial"][dataset_id]["scalefactors"]``; an entry
        set to ``None`` is left out (e.g. ``{"microns_per_pixel": None}``, as Space Ranger before 2.0 writes them).

    Returns
    -------
    spatialdata.SpatialData
        ``images[f"{dataset_id}_full_image"]``, ``shapes[dataset_id]`` (circles with ``radius``),
        ``tables["table"]`` (spots: ``obs`` ``in_tissue``, ``array_row``, ``array_col``, ``spot_id``, ``region``;
        ``obsm["spatial"]``; ``uns["spatial"][dataset_id]["scalefactors"]``), ``shapes["truth_bins"]`` and
        ``tables["truth"]`` (bins: ``obs`` ``array_row``, ``array_col``, ``in_tissue``, ...; ``obsm["spatial"]``).
    """
    import xarray as xr
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    def transforms():
        # Each element gets its own copies: transformations read from the input SpatialData must not be shared.
        return copy.deepcopy(dict(transformations)) if transformations is not None else {dataset_id: Identity()}

    if isinstance(image, np.ndarray):
        image = Image2DModel.parse(
            xr.DataArray(image, dims=("c", "y", "x")), c_coords=["r", "g", "b"], scale_factors=[2, 2],
            transformations=transforms(),
        )  # fmt: skip

    n_spots = len(spot_xy_px)
    spot_id = np.arange(n_spots)
    width = max(5, len(str(n_spots)))
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "array_row": np.asarray(array_rc)[:, 0],
            "array_col": np.asarray(array_rc)[:, 1],
            "spot_id": spot_id,
            "region": pd.Categorical([dataset_id] * n_spots),
        },
        index=pd.Index([f"spot_{i:0{width}d}" for i in spot_id]),
    )
    table = ad.AnnData(X=sp.csr_matrix(spot_counts, dtype=np.float32), obs=obs, var=var.copy())
    table.obsm["spatial"] = np.asarray(spot_xy_px, dtype=float)
    factors = {
        "spot_diameter_fullres": VISIUM_SPOT_DIAMETER_UM / mpp,
        "microns_per_pixel": float(mpp),
        "tissue_hires_scalef": 1.0,
        "tissue_lowres_scalef": 1.0,
        **(scalefactors or {}),
    }
    table.uns["spatial"] = {dataset_id: {"scalefactors": {k: v for k, v in factors.items() if v is not None}}}
    radius_px = VISIUM_SPOT_DIAMETER_UM / 2 / mpp
    circles = ShapesModel.parse(
        np.asarray(spot_xy_px, dtype=float), geometry=0, radius=radius_px, index=spot_id, transformations=transforms()
    )

    squares, bins_obs = bin_elements(grid, truth_rows, truth_cols, region="truth_bins", transformations=transforms())
    if truth_obs is not None:
        for column in truth_obs.columns:
            bins_obs[column] = truth_obs[column].array  # by position, dtype kept (categories stay categories)
    if "in_tissue" not in bins_obs:
        bins_obs["in_tissue"] = True
    truth = ad.AnnData(X=sp.csr_matrix(truth_counts, dtype=np.float32), obs=bins_obs, var=var.copy())
    truth.obsm["spatial"] = grid.centres_px(truth_rows, truth_cols)

    return SpatialData(
        images={f"{dataset_id}_full_image": image},
        shapes={dataset_id: circles, "truth_bins": squares},
        tables={
            "table": TableModel.parse(table, region=dataset_id, region_key="region", instance_key="spot_id"),
            "truth": TableModel.parse(truth, region="truth_bins", region_key="region", instance_key="instance_id"),
        },
    )


def add_truth_cells(sdata, polygons, counts, *, mpp: float, var: pd.DataFrame, obs: pd.DataFrame | None = None) -> None:
    """Add the truth per cell: ``shapes["truth_cells_boundaries"]`` (the cells' polygons in the H&E's pixels,
    placed as the truth bins are) and ``tables["truth_cells"]`` annotating them (``X`` the cell's counts,
    ``obs["area_um2"]``, ``obsm["spatial"]`` centroids, and the columns of ``obs``).
    """
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    polygons = np.asarray(polygons, dtype=object)
    transformations = copy.deepcopy(get_transformation(sdata.shapes["truth_bins"], get_all=True))
    cell_id = np.arange(len(polygons))
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=list(polygons), index=pd.Index(cell_id)), transformations=transformations
    )
    cells_obs = pd.DataFrame(
        {
            "region": pd.Categorical(["truth_cells_boundaries"] * len(polygons)),
            "cell_id": cell_id,
            "area_um2": shapely.area(polygons) * mpp**2,
        },
        index=pd.Index([f"cell_{i}" for i in cell_id]),
    )
    for column in [] if obs is None else obs.columns:
        cells_obs[column] = np.asarray(obs[column])
    table = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=cells_obs, var=var.copy())
    table.obsm["spatial"] = shapely.get_coordinates(shapely.centroid(polygons)).reshape(-1, 2)
    sdata.shapes["truth_cells_boundaries"] = shapes
    sdata.tables["truth_cells"] = TableModel.parse(
        table, region="truth_cells_boundaries", region_key="region", instance_key="cell_id"
    )
