"""Expression per cell: ``hx.tl.to_cells`` and ``hx.pp.segment_nuclei``, time, memory and accuracy against the truth.

    python benchmarks/cells.py --out DIR [--data-dir ../shared/data] [--cells 1000000] [--genes 100]
                               [--segment-px 20000] [--epochs 60] [--states 3] [--sections hgsc_nest hgsc_wsi]

- ``to_cells``: a slide of bins in a zarr store (``--cells`` nuclei on a jittered 10 µm lattice, 16-gon circles of
  3 µm radius, over a square of 8 µm bins with ``--genes`` genes, read lazily from the store as from a backed
  SpatialData) summed into the nuclei; seconds and peak RSS counted from just before the call.
- ``segmentation``: F1 at IoU 0.5 and median IoU (each annotated nucleus's best) of ``segment_nuclei`` against the
  1,295 annotated nuclei of the real HGSC nest; speed in mm² per minute over a ``--segment-px`` square slide tiled
  from the nest's real H&E, read lazily (its peak RSS is printed).
- ``accuracy``: on the HGSC nest and the HGSC whole-slide square (``histex._bench.load_dataset``), mean per-gene
  Pearson over cells between the truth per cell (``tables["truth_cells"]``) and: ``histex`` (``super_resolve``,
  then ``to_cells`` on the true nuclei), ``histex_own_segmentation`` (``to_cells`` on the nuclei of
  ``segment_nuclei``, each true nucleus compared with the found one that overlaps it best at IoU >= 0.5),
  ``image_only`` (the image-only variant, true nuclei) and ``nearest_spot`` (each cell the mean counts per area of
  its nearest spot, times its area). Beside them, like for like on the own segmentation's cells:
  ``image_only_own_segmentation`` and ``nearest_spot_own_segmentation``.

Writes ``DIR/cells.json``: ``{"to_cells": {"cells": .., "seconds": .., "peak_rss_mb": ..}, "segmentation": {"f1":
.., "median_iou": .., "mm2_per_min": ..}, "accuracy": {section: {"histex": .., "histex_own_segmentation": ..,
"image_only": .., "nearest_spot": .., "image_only_own_segmentation": .., "nearest_spot_own_segmentation":
..}}}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import histex as hx
from histex._memory import peak_rss_mb, reset_peak_rss

PITCH_UM, RADIUS_UM, MPP, BIN_UM = 10.0, 3.0, 0.5, 8.0


def slide(folder: Path, n_cells: int, n_genes: int, seed: int = 0):
    """A backed SpatialData: a small stand-in H&E (only its placement is read), the bins table in the store, and
    ``n_cells`` nucleus polygons in H&E pixels.
    """
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import shapely
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_cells)))
    extent_px = side * PITCH_UM / MPP
    bin_px = BIN_UM / MPP
    n_bins_side = int(np.floor(extent_px / bin_px))
    iy, ix = np.divmod(np.arange(n_cells), side)
    centres = (np.stack([ix, iy], axis=1) + 0.5 + rng.uniform(-0.2, 0.2, (n_cells, 2))) * PITCH_UM / MPP
    nuclei = shapely.buffer(shapely.points(centres), RADIUS_UM / MPP, quad_segs=4)
    rows, cols = np.divmod(np.arange(n_bins_side**2), n_bins_side)
    obs = pd.DataFrame(
        {
            "array_row": rows,
            "array_col": cols,
            "region": pd.Categorical(["bins"] * len(rows)),
            "instance_id": rows * 0 + np.arange(len(rows)),
        },
        index=pd.Index([f"bin_{i}" for i in range(len(rows))]),
    )
    x = rng.gamma(1.0, 1.0, (len(rows), n_genes)).astype(np.float32)
    table = ad.AnnData(X=x, obs=obs, layers={"ensemble_sd": (0.3 * x).astype(np.float32)})
    table.var_names = [f"G{i:03d}" for i in range(n_genes)]
    table.uns["histex"] = {"data": {"image_key": "he", "coordinate_system": "global", "mpp": MPP, "bin_px": bin_px,
                                    "grid_shape": [n_bins_side, n_bins_side]}}  # fmt: skip
    sdata = sd.SpatialData(
        images={
            "he": Image2DModel.parse(
                np.zeros((3, 8, 8), np.uint8), dims=("c", "y", "x"), transformations={"global": Identity()}
            )
        },
        shapes={"nuclei": ShapesModel.parse(gpd.GeoDataFrame(geometry=nuclei), transformations={"global": Identity()})},
        tables={"histex": TableModel.parse(table, region="bins", region_key="region", instance_key="instance_id")},
    )
    sdata.write(folder / "slide.zarr", overwrite=True)
    return sd.read_zarr(folder / "slide.zarr")


def bench_to_cells(args) -> dict:
    sdata = slide(args.out, args.cells, args.genes)
    reset_peak_rss()
    start = time.perf_counter()
    key = hx.tl.to_cells(sdata, cells_key="nuclei")
    seconds = time.perf_counter() - start
    return {
        "cells": int(sdata.tables[key].n_obs),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def match_nuclei(found: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each true nucleus, the found one that overlaps it best (-1 for none) and their IoU."""
    import shapely

    t, f = shapely.STRtree(found).query(truth, predicate="intersects")
    inter = shapely.area(shapely.intersection(truth[t], found[f]))
    iou = inter / (shapely.area(truth[t]) + shapely.area(found[f]) - inter)
    best, match = np.zeros(len(truth)), np.full(len(truth), -1)
    order = np.argsort(iou)  # the largest IoU of each true nucleus written last
    best[t[order]], match[t[order]] = iou[order], f[order]
    return match, best


def bench_segmentation(args) -> dict:
    import dask.array as da
    import geopandas as gpd
    import spatialdata as sd
    from PIL import Image
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    rgb = np.asarray(Image.open(args.data_dir / "hgsc_nest.jpg").convert("RGB"))
    truth = np.asarray(gpd.read_parquet(args.data_dir / "hgsc_nest.parquet").geometry.values, dtype=object)
    nest = sd.SpatialData(images={"he": Image2DModel.parse(rgb.transpose(2, 0, 1), dims=("c", "y", "x"))})
    hx.pp.segment_nuclei(nest, mpp=0.5, show_progress=False)
    found = np.asarray(nest.shapes["nuclei"].geometry.values, dtype=object)
    _, best = match_nuclei(found, truth)
    f1 = 2 * (best >= 0.5).sum() / (len(truth) + len(found))

    reps = -(-args.segment_px // rgb.shape[0])
    tiled = da.tile(da.from_array(rgb.transpose(2, 0, 1), chunks=(3, 1500, 1500)), (1, reps, reps))
    tiled = tiled[:, : args.segment_px, : args.segment_px].rechunk((3, 4096, 4096))
    slide_sdata = sd.SpatialData(
        images={"he": Image2DModel.parse(tiled, dims=("c", "y", "x"), transformations={"global": Identity()})}
    )
    reset_peak_rss()
    start = time.perf_counter()
    hx.pp.segment_nuclei(slide_sdata, mpp=0.5, show_progress=False)
    seconds = time.perf_counter() - start
    area_mm2 = (args.segment_px * 0.5 / 1000) ** 2
    print(f"segmentation: {len(slide_sdata.shapes['nuclei'])} nuclei on {area_mm2:.0f} mm² in {seconds:.0f} s, "
          f"peak RSS {peak_rss_mb():.0f} MiB", flush=True)  # fmt: skip
    return {"f1": round(float(f1), 4), "median_iou": round(float(np.median(best)), 4),
            "mm2_per_min": round(area_mm2 / seconds * 60, 2)}  # fmt: skip


def mean_gene_pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over genes of the Pearson correlation across cells (genes constant in either left out)."""
    pred, truth = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    pc, tc = pred - pred.mean(0), truth - truth.mean(0)
    denom = np.sqrt((pc**2).sum(0) * (tc**2).sum(0))
    ok = denom > 0
    return round(float(((pc * tc).sum(0)[ok] / denom[ok]).mean()), 4)


def nearest_spot(sdata, cells_table, cells_key: str = "truth_cells_boundaries") -> np.ndarray:
    """Each cell: the counts per area of its nearest spot, times the cell's area (cells in the table's order)."""
    from scipy.spatial import cKDTree

    spots = sdata.tables["table"]
    circles = sdata.shapes[spots.obs["region"].iloc[0]].loc[spots.obs["spot_id"].to_numpy()]
    xy = np.stack([circles.geometry.x, circles.geometry.y], axis=1)
    area_px = np.pi * circles["radius"].to_numpy(float) ** 2
    per_area = np.asarray(spots.X.toarray() if hasattr(spots.X, "toarray") else spots.X) / area_px[:, None]
    _, nearest = cKDTree(xy).query(cells_table.obsm["spatial"])
    cell_area_px = sdata.shapes[cells_key].geometry.area.loc[cells_table.obs["cell_id"].to_numpy()].to_numpy()
    return per_area[nearest] * cell_area_px[:, None]


def bench_accuracy(args, name: str) -> dict:
    import warnings

    from histex._bench import load_dataset

    sdata = load_dataset(name, data_dir=args.data_dir, n_genes=60, seed=0, hidden_genes=(0, 0))
    hx.pp.extract_features(sdata, show_progress=False)
    truth = sdata.tables["truth_cells"]
    genes = list(truth.var_names)
    x_true = truth.X.toarray()
    run = {"epochs": args.epochs, "n_states": args.states, "genes": genes, "show_progress": False}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nuclei on glass or off the bins
        for variant in ("histex", "image_only"):
            hx.tl.super_resolve(sdata, variant=variant, key_added=variant, **run)
            key = hx.tl.to_cells(sdata, cells_key="truth_cells_boundaries", table_key=variant)
            out[variant] = mean_gene_pearson(sdata.tables[key][:, genes].X, x_true)
        hx.pp.segment_nuclei(sdata, key_added="own_nuclei", show_progress=False)
        found = np.asarray(sdata.shapes["own_nuclei"].geometry.values, dtype=object)
        match, best = match_nuclei(
            found, np.asarray(sdata.shapes["truth_cells_boundaries"].geometry.values, dtype=object)
        )
        matched = best >= 0.5
        # every method on the own segmentation's cells, against the true nuclei they match
        for variant in ("histex", "image_only"):
            key = hx.tl.to_cells(sdata, cells_key="own_nuclei", table_key=variant, key_added=f"{variant}_own_cells")
            own = sdata.tables[key][:, genes].X[match[matched]]
            out[f"{variant}_own_segmentation"] = mean_gene_pearson(own, x_true[matched])
        spot_own = nearest_spot(sdata, sdata.tables["histex_own_cells"], "own_nuclei")
        out["nearest_spot_own_segmentation"] = mean_gene_pearson(spot_own[match[matched]], x_true[matched])
    spot = nearest_spot(sdata, truth)
    out["nearest_spot"] = mean_gene_pearson(spot, x_true)
    # the same comparison on the true nuclei that the own segmentation found (printed, not in cells.json)
    subset = {"histex": mean_gene_pearson(sdata.tables["histex_cells"][:, genes].X[matched], x_true[matched]),
              "image_only": mean_gene_pearson(sdata.tables["image_only_cells"][:, genes].X[matched], x_true[matched]),
              "nearest_spot": mean_gene_pearson(spot[matched], x_true[matched])}  # fmt: skip
    print(f"{name}: {out}; on the {int(matched.sum())} of {len(matched)} true nuclei found: {subset}", flush=True)
    keys = ("histex", "histex_own_segmentation", "image_only", "nearest_spot")
    return {k: out[k] for k in keys} | {k: v for k, v in out.items() if k not in keys}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/cells"))
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--segment-px", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--states", type=int, default=3)
    parser.add_argument("--sections", nargs="+", default=["hgsc_nest", "hgsc_wsi"])
    parser.add_argument("--parts", nargs="+", default=["to_cells", "segmentation", "accuracy"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    result = {}
    if "to_cells" in args.parts:
        result["to_cells"] = bench_to_cells(args)
        print(f"to_cells: {result['to_cells']}", flush=True)
    if "segmentation" in args.parts:
        result["segmentation"] = bench_segmentation(args)
        print(f"segmentation: {result['segmentation']}", flush=True)
    if "accuracy" in args.parts:
        result["accuracy"] = {name: bench_accuracy(args, name) for name in args.sections}
    (args.out / "cells.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
