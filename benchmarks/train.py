"""Time super-resolution of a whole Visium slide, stage by stage: the case the published code took 36 hours on.

    python benchmarks/train.py [--out DIR] [--device cpu|cuda] [--epochs N] [--states N] [--estimate]
                               [--holdout F] [--patience N] [--precision P] [--components N] [--train-only]
                               [--store]

The slide is the real spot lattice of ``../shared/data/visium_spaceranger_1.0.0`` (4,235 spots in tissue, their
full-resolution pixel positions and spot diameter), with synthetic counts of 1,000 genes (smooth expression
programmes drawn over the lattice) and 1,029 synthetic feature channels (a UNI-sized 1,024 plus five, as the published
setting) on the full 8 µm bin grid of the slide: random mixtures of the same programmes at each bin plus as much
noise, so that the image tells something about expression and the stopping rule sees a real fit. The tissue is
every bin within a spot pitch of a spot in tissue.

It runs the same functions ``histex.tl.super_resolve`` runs, with its default settings (variant ``"histex"``) unless
told otherwise, and times each stage: the context points, the training set (features standardised with position
channels, the token grid and the spot windows), one epoch of all ensemble states (trained together), all of
training (until the stopping rule on held-out spots, or the most epochs), the prediction of every in-tissue bin
(into counts per bin, block by block; with ``--store`` straight into the chunks of a zarr store, as on a backed
SpatialData), and the write-back (the Visium HD-like shapes and table). With ``--estimate`` all of training is not
run but bounded as one epoch x the most epochs. Prints a table and writes ``DIR/train.json``:
``{"seconds": {stage: s}, "peak_rss_mb": .., "spots": .., "genes": .., "bins": .., "device": ..}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree

from histex import geometry
from histex._memory import peak_rss_mb
from histex.model.context import context_points, nearest_context
from histex.model.features import standardised_with_position
from histex.model.fit import Problem, SpotLoss, bins_per_spot, embedding_dim, train
from histex.model.predict import predict
from histex.model.settings import HistexSettings
from histex.model.targets import TargetScaler

SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "visium_spaceranger_1.0.0"
SPOT_UM, PITCH_UM, BIN_UM = 55.0, 100.0, 8.0


def rss_mb() -> float:
    """Resident memory now (Linux), to see what one stage adds."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def slide_lattice(folder: Path) -> tuple[np.ndarray, float]:
    """In-tissue spot centres ``(row, col)`` in full-resolution pixels and the pixel size in µm."""
    positions = pd.read_csv(
        folder / "spatial" / "tissue_positions_list.csv",
        header=None,
        names=["barcode", "in_tissue", "array_row", "array_col", "px_row", "px_col"],
    )
    positions = positions[positions["in_tissue"] == 1]
    scale = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    mpp = SPOT_UM / float(scale["spot_diameter_fullres"])
    return positions[["px_row", "px_col"]].to_numpy(float), mpp


def synthetic_slide(n_genes: int, n_features: int, *, seed: int = 0):
    """Spots in bin coordinates, the tissue mask and features on the bin grid, and counts of ``n_genes`` genes."""
    rng = np.random.default_rng(seed)
    spots_px, mpp = slide_lattice(SLIDE)
    bin_px = BIN_UM / mpp
    spot_rc = spots_px / bin_px
    shape = tuple(int(np.ceil(v)) + 8 for v in spot_rc.max(axis=0))
    rows, cols = np.indices(shape)
    centres = np.stack([rows.ravel() + 0.5, cols.ravel() + 0.5], axis=1)
    near, _ = cKDTree(spot_rc).query(centres, distance_upper_bound=PITCH_UM / BIN_UM)
    tissue = np.isfinite(near).reshape(shape)
    # Expression: 20 smooth programmes (random Fourier fields over the slide), each gene a mix of a few.
    freq = rng.normal(scale=2 * np.pi / 60, size=(20, 2))  # wavelengths of about 60 bins (0.5 mm)
    phase = rng.uniform(0, 2 * np.pi, 20)

    def programmes(rc: np.ndarray) -> np.ndarray:
        return np.exp(np.sin(rc @ freq.T + phase))

    loading = rng.gamma(0.3, size=(20, n_genes))
    counts = rng.poisson(programmes(spot_rc) @ loading).astype(np.float32)
    # Features: the programmes at each bin, mixed at random into every channel, plus noise; a band of rows at a time.
    mixing = rng.normal(size=(20, n_features)).astype(np.float32) / np.sqrt(20)
    features = np.empty((n_features, *shape), dtype=np.float32)
    for r0 in range(0, shape[0], 64):
        r1 = min(r0 + 64, shape[0])
        band = programmes(centres[r0 * shape[1] : r1 * shape[1]]).astype(np.float32)
        band = (band - band.mean()) @ mixing
        band += rng.standard_normal(band.shape, dtype=np.float32)
        features[:, r0:r1] = band.T.reshape(n_features, r1 - r0, shape[1])
    return spot_rc, tissue, features, counts, mpp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("train_bench"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--features", type=int, default=1029)
    parser.add_argument("--epochs", type=int, default=None, help="default: the histex variant's")
    parser.add_argument("--states", type=int, default=5)
    parser.add_argument("--estimate", action="store_true", help="bound all of training by one epoch x epochs")
    parser.add_argument("--holdout", type=float, default=0.0, help="share of spots held out to stop on (0: none)")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--precision", default="auto", help="auto, float32 or bfloat16")
    parser.add_argument("--components", type=int, default=None, help="principal axes of the features")
    parser.add_argument("--train-only", action="store_true", help="stop after training (no prediction)")
    parser.add_argument("--store", action="store_true", help="stream the predictions into OUT/slide.zarr")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # super_resolve's settings: the histex variant, without the withheld windows of a model for H&E-only slides
    settings = HistexSettings.preset(
        "histex",
        epochs=args.epochs,
        n_states=args.states,
        holdout=args.holdout,
        patience=args.patience,
        precision=args.precision,
        he_only="none",
    )
    epochs = settings.epochs
    seconds: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 2)
        print(f"  {name:<22s} {seconds[name]:10.2f} s   peak RSS {peak_rss_mb():8.0f} MiB", flush=True)

    start = time.perf_counter()
    spot_rc, tissue, features, counts, mpp = synthetic_slide(args.genes, args.features)
    print(
        f"{len(spot_rc)} spots, {args.genes} genes, {args.features} features on {tissue.shape[0]} x {tissue.shape[1]} "
        f"bins ({int(tissue.sum()):,} in tissue), {mpp:.3f} µm/px; device {args.device}"
    )
    stage("synthetic slide", start)

    start = time.perf_counter()
    scaler = TargetScaler.fit(counts, settings.targets)
    y = scaler.transform(counts)
    context = context_points(spot_rc, y, pitch=PITCH_UM / BIN_UM)
    nearest_context(context, spot_rc, 5, exclude_spots=np.arange(len(spot_rc)))
    stage("context points", start)

    start = time.perf_counter()
    problem = Problem(
        features=standardised_with_position(features, tissue, n_components=args.components),
        tissue=tissue,
        spot_rc=spot_rc,
        radius_bins=SPOT_UM / 2 / BIN_UM,
        targets=y,
        context=context,
    )
    del features
    window = geometry.window_size(problem.radius_bins)
    config = settings.fit_config(window=window, device=args.device, show_progress=False)
    SpotLoss(problem, config, torch.device(args.device))
    stage("training set", start)

    start = time.perf_counter()
    ensemble, history = train(problem, replace(config, epochs=1))
    stage("one epoch", start)

    if args.estimate:
        seconds["training"] = round(seconds["one epoch"] * epochs, 1)
        print(f"  {'training (bound)':<22s} {seconds['training']:10.1f} s = one epoch x {epochs}")
    else:
        start = time.perf_counter()
        ensemble, history = train(problem, config)
        stage("training", start)
        print(f"  stopped after {history.epochs} epochs; states keep epochs {history.best_epoch.tolist()}")

    if not args.train_only:
        start = time.perf_counter()
        output = bins_output(
            problem, mpp, args.genes, embedding_dim(config), store=args.out / "slide.zarr" if args.store else None
        )
        bins_seconds = time.perf_counter() - start
        rss_before = rss_mb()
        start = time.perf_counter()
        per_spot = bins_per_spot(problem, window)
        predict(ensemble, problem, config, transform=scaler.block_to_counts_per_bin(per_spot), out=output.open())
        stage("prediction", start)
        prediction_rss_mb = rss_mb() - rss_before
        print(f"  {'':<22s} resident memory grew by {prediction_rss_mb:,.0f} MiB while predicting")

        start = time.perf_counter() - bins_seconds  # the bin squares were made before predicting
        output.write_bins()
        output.finish({"params": {}})
        stage("write-back", start)

    result = {
        "seconds": seconds,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "spots": len(spot_rc),
        "genes": args.genes,
        "features": args.features,
        "bins": int(tissue.sum()),
        "grid": list(tissue.shape),
        "epochs": epochs,
        "epochs_run": None if args.estimate else history.epochs,
        "best_epochs": None if args.estimate else history.best_epoch.tolist(),
        "states": args.states,
        "holdout": args.holdout,
        "patience": args.patience,
        "precision": args.precision,
        "components": args.components,
        "training_estimated": bool(args.estimate),
        "device": args.device,
        "store": bool(args.store),
        "prediction_rss_growth_mb": None if args.train_only else round(prediction_rss_mb, 1),
    }
    (args.out / "train.json").write_text(json.dumps(result, indent=2))
    print(f"peak RSS {result['peak_rss_mb']:.0f} MiB; wrote {args.out / 'train.json'}")


def bins_output(problem, mpp, n_genes: int, dim: int, store: Path | None):
    """The bins' shapes and table as ``super_resolve`` writes them, on a stand-in image: in memory, or streamed into
    the zarr store at ``store``.
    """
    import shutil

    import dask.array as da
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    from histex.tl._bins_output import BinsOutput

    image = Image2DModel.parse(da.zeros((3, 8, 8), dtype=np.uint8), dims=("c", "y", "x"))
    sdata = SpatialData(images={"slide": image})
    if store is not None:
        shutil.rmtree(store, ignore_errors=True)
        sdata.write(store)
    grid = geometry.BinGrid(bin_px=BIN_UM / mpp, n_rows=problem.tissue.shape[0], n_cols=problem.tissue.shape[1])
    rows, cols = np.nonzero(problem.tissue)
    genes = [f"G{j:04d}" for j in range(n_genes)]
    return BinsOutput(sdata, "histex", grid, rows, cols, {}, genes, dim, to_store=store is not None)


if __name__ == "__main__":
    main()
