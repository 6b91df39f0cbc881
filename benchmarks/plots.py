"""How long it takes to draw one gene of a whole slide's bins over its H&E: histex's own plot against spatialdata-plot.

A section of ``--bins`` 8 µm bins (a square of them, every bin in tissue) with an H&E pyramid at 2 µm/px is built in
memory, with one gene, and drawn three ways, each saved as a PNG at 120 dpi:

- ``histex``: :func:`histex.pl.genes` (the bins as one raster in bin coordinates, the H&E read from the pyramid
  level that matches a bin, beneath);
- ``render_shapes``: spatialdata-plot's ``render_images`` of the H&E and ``render_shapes`` of the bins coloured by
  the gene (datashader, its default above 10,000 shapes);
- ``rasterize_bins``: :func:`spatialdata.rasterize_bins` of the table, then two ``render_images``.

Writes ``plots.json``: ``{"n_bins": ..., "seconds": {"histex": ..., "render_shapes": ..., "rasterize_bins": ...}}``.

Example
-------
    python benchmarks/plots.py --bins 1000000 --out /tmp/plots
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

MPP = 2.0  # µm per H&E pixel: a bin is 4 px, so that a million bins need a 4000 px image, not 16,000
BIN_UM = 8.0


def section(n_bins: int):
    """A square section of ``n_bins`` bins with a smooth H&E pyramid and one gene, as histex writes its output."""
    import anndata as ad
    from scipy import ndimage
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, TableModel
    from spatialdata.transformations import Identity

    from histex import _sdata, geometry

    side = math.isqrt(n_bins)
    px = int(side * BIN_UM / MPP)
    rng = np.random.default_rng(0)
    field = ndimage.zoom(rng.random((3, px // 100 + 1, px // 100 + 1)), (1, 100, 100), order=1)[:, :px, :px]
    rgb = (150 + 80 * field).astype(np.uint8)
    cs = "slide"
    image = Image2DModel.parse(rgb, dims=("c", "y", "x"), scale_factors=[2, 2, 2], transformations={cs: Identity()})
    grid = geometry.BinGrid.for_image((px, px), mpp=MPP, bin_size_um=BIN_UM)
    rows, cols = np.divmod(np.arange(side * side), side)
    shapes, obs = _sdata.bin_elements(grid, rows, cols, region="bins", transformations={cs: Identity()})
    gene = np.sin(rows / 40.0) * np.cos(cols / 55.0) + 1.0
    table = ad.AnnData(X=gene.astype(np.float32)[:, None], obs=obs)
    table.var_names = ["GENE"]
    table.uns["histex"] = {
        "data": {"image_key": "he", "bin_px": grid.bin_px, "grid_shape": [side, side], "spots_key": "None",
                 "coordinate_system": cs},
    }  # fmt: skip
    table = TableModel.parse(table, region="bins", region_key="region", instance_key="instance_id")
    return SpatialData(images={"he": image}, shapes={"bins": shapes}, tables={"histex": table}), cs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bins", type=int, default=1_000_000, help="number of bins (a square of them)")
    parser.add_argument("--out", type=Path, required=True, help="folder for plots.json and the PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401 - registers sdata.pl
    from spatialdata import rasterize_bins

    import histex as hx

    t = time.perf_counter()
    sdata, cs = section(args.bins)
    n_bins = sdata.tables["histex"].n_obs
    print(f"built {n_bins:,} bins in {time.perf_counter() - t:.1f} s")
    seconds = {}

    def timed(name, draw):
        start = time.perf_counter()
        fig = draw()
        fig.savefig(args.out / f"{name}.png", dpi=120)
        plt.close(fig)
        seconds[name] = round(time.perf_counter() - start, 2)
        print(f"{name:16s} {seconds[name]:8.2f} s")

    timed("histex", lambda: hx.pl.genes(sdata, ["GENE"], spots=False, panel_size=6, show=False).flat[0].figure)

    def render_shapes():
        fig, ax = plt.subplots(figsize=(6, 6))
        sdata.pl.render_images("he").pl.render_shapes("bins", color="GENE", table_name="histex").pl.show(
            coordinate_systems=cs, ax=ax
        )
        return fig

    timed("render_shapes", render_shapes)

    def rasterized():
        fig, ax = plt.subplots(figsize=(6, 6))
        sdata["raster"] = rasterize_bins(sdata, "bins", "histex", "array_col", "array_row")
        sdata.pl.render_images("he").pl.render_images("raster", channel="GENE", alpha=0.8).pl.show(
            coordinate_systems=cs, ax=ax
        )
        return fig

    timed("rasterize_bins", rasterized)
    result = {"n_bins": int(n_bins), "seconds": seconds}
    (args.out / "plots.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
