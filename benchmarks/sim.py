"""Time the pseudo-Visium simulators on Xenium-sized inputs: the area split of cells over bins and from_xenium.

    python benchmarks/sim.py [--cells 500000] [--mpp 0.5]

Builds synthetic cells (disks of 3-7 µm radius at random positions) over a square H&E sized so that the cells sit
about 10 µm apart, in the layout spatialdata_io.xenium writes (cell boundaries in morphology pixels of 0.2125 µm,
the cells x genes table, an H&E aligned by an affine), then prints the seconds and peak memory of
``histex.sim.cell_bin_weights`` on the cell polygons and of ``histex.sim.from_xenium`` on the whole SpatialData.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Affine, Scale

import histex as hx
from histex._memory import peak_rss_mb
from histex.geometry import BinGrid

MORPHOLOGY_UM = 0.2125  # µm per pixel of the 'global' coordinate system of a Xenium run


def xenium_like(n_cells: int, *, mpp: float, n_genes: int = 50, seed: int = 0) -> tuple[SpatialData, np.ndarray]:
    """A Xenium-layout SpatialData with ``n_cells`` disk cells over an aligned, blank H&E; also the cells in H&E px."""
    rng = np.random.default_rng(seed)
    side_um = np.sqrt(n_cells) * 10.0
    he_px = int(np.ceil(side_um / mpp)) + 64
    centres = rng.uniform(10, side_um - 10, size=(n_cells, 2))
    radii = rng.uniform(3.0, 7.0, size=n_cells)
    cells_um = shapely.buffer(shapely.points(centres), radii, quad_segs=4)
    cell_id = pd.Index([f"c{i:07d}-1" for i in range(n_cells)], name="cell_id")
    boundaries = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=cells_um, index=cell_id),
        transformations={"global": Scale([1 / MORPHOLOGY_UM] * 2, axes=("x", "y"))},
    )
    counts = sp.random(n_cells, n_genes, density=0.1, format="csr", random_state=seed, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    obs = pd.DataFrame({"cell_id": cell_id, "region": pd.Categorical(["cell_boundaries"] * n_cells)}, index=cell_id)
    table = TableModel.parse(
        ad.AnnData(
            counts, obs=obs.set_index(obs.index.astype(str)), var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
        ),
        region="cell_boundaries",
        region_key="region",
        instance_key="cell_id",
    )
    he = da.full((3, he_px, he_px), 200, dtype=np.uint8, chunks=(3, 4096, 4096))
    s = mpp / MORPHOLOGY_UM
    align = Affine(np.array([[s, 0, 0], [0, s, 0], [0, 0, 1]]), input_axes=("x", "y"), output_axes=("x", "y"))
    image = Image2DModel.parse(he, dims=("c", "y", "x"), c_coords=["r", "g", "b"], transformations={"global": align})
    sdata = SpatialData(images={"he_image": image}, shapes={"cell_boundaries": boundaries}, tables={"table": table})
    cells_px = shapely.transform(cells_um, lambda xy: xy / mpp)
    return sdata, cells_px


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=500_000)
    parser.add_argument("--mpp", type=float, default=0.5)
    args = parser.parse_args()

    start = time.perf_counter()
    sdata, cells_px = xenium_like(args.cells, mpp=args.mpp)
    print(f"built {args.cells:,} cells in {time.perf_counter() - start:.1f} s")

    grid = BinGrid.for_image(sdata.images["he_image"].shape[1:], mpp=args.mpp, bin_size_um=8.0)
    start = time.perf_counter()
    weights = hx.sim.cell_bin_weights(cells_px, grid)
    print(f"cell_bin_weights: {time.perf_counter() - start:.1f} s, {weights.nnz:,} cell-bin pairs, "
          f"peak RSS {peak_rss_mb():.0f} MiB")  # fmt: skip

    start = time.perf_counter()
    section = hx.sim.from_xenium(sdata)
    print(f"from_xenium: {time.perf_counter() - start:.1f} s, {section.tables['truth'].n_obs:,} bins, "
          f"{section.tables['table'].n_obs:,} spots, peak RSS {peak_rss_mb():.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
