"""Feature extraction speed and memory: tiles/s, bins/s and peak memory for a model on CPU or GPU, and peak RSS on
rendered slides of growing area (streamed from a zarr store).

Examples
--------
    python benchmarks/features.py --model texture --tiles 256
    python benchmarks/features.py --model uni --random-weights --tiles 16            # a ViT-L/16 without weights
    python benchmarks/features.py --model uni --random-weights --device cuda --tiles 20000 --compile
    python benchmarks/features.py --slide-px 5000 10000 20000                        # peak RSS against slide area

Slides are real H&E (``../shared/data/hgsc_nest.jpg``, mirrored to any size) when that file is present, else a
synthetic texture. Each measurement runs in its own process, so that peak RSS belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hgsc_nest.jpg"
MPP = 0.5


def he_image() -> np.ndarray:
    """The real H&E image (1500 px square), or a synthetic texture when the data folder is absent."""
    if HE.is_file():
        from PIL import Image

        return np.asarray(Image.open(HE).convert("RGB"))
    rng = np.random.default_rng(0)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=(1500, 1500, 3)), sigma=(3, 3, 0))
    return np.clip(190 + 40 * noise / noise.std(), 0, 255).astype(np.uint8)


def he_tile() -> np.ndarray:
    """A 1024 px square of :func:`he_image`."""
    return he_image()[:1024, :1024]


def lazy_slide(size: int):
    """A ``(3, size, size)`` dask array of mirrored H&E, rendered chunk by chunk (never whole in memory)."""
    import dask.array as da

    tile = he_tile()
    mirrored = np.concatenate([tile, tile[::-1]], axis=0)
    mirrored = np.concatenate([mirrored, mirrored[:, ::-1]], axis=1)  # 2048 px, seamless when repeated

    def block(_, block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        yy, xx = np.arange(y0, y1) % 2048, np.arange(x0, x1) % 2048
        return np.moveaxis(mirrored[yy][:, xx], -1, 0)

    template = da.zeros((3, size, size), chunks=(3, 1024, 1024), dtype=np.uint8)
    return da.map_blocks(block, template, dtype=np.uint8)


def render(size: int, path: Path) -> None:
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    image = Image2DModel.parse(lazy_slide(size), dims=("c", "y", "x"), scale_factors=[2, 2])
    sd.SpatialData(images={"he": image}).write(path)


def model_argument(name: str, random_weights: bool):
    import histex as hx

    if random_weights:
        import torch

        torch.manual_seed(0)
        spec = hx.encoders.MODELS[name]
        return spec.encoder(spec.build_module(), digest=f"random-{name}")
    return name


def extract(args, sdata, model=None) -> dict:
    import torch

    import histex as hx

    model = model_argument(args.model, args.random_weights) if model is None else model
    start = time.perf_counter()
    key = hx.pp.extract_features(
        sdata,
        mpp=MPP,
        model=model,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        n_shifts=args.n_shifts,
        compile=args.compile,
        show_progress=False,
    )
    seconds = time.perf_counter() - start
    settings = sdata.attrs["histex"]["features"][key]
    n_tiles = sdata.attrs["histex"]["feature_runs"][key]["n_tiles"]  # every tile encoded, of every tiling
    rows, cols = sdata.images[key].shape[1:]
    out = {
        "model": settings["model"],
        "device": args.device or "auto",
        "precision": args.precision,
        "n_shifts": args.n_shifts,
        "bins": rows * cols,
        "tiles": n_tiles,
        "seconds": seconds,
        "tiles_per_s": n_tiles / seconds,
        "bins_per_s": rows * cols / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if torch.cuda.is_available() and (args.device or "cuda").startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_throughput(args) -> dict:
    """Encode an in-memory image of about ``args.tiles`` tiles and time the whole call."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    import histex as hx

    spec_tile = 224 if args.model != "texture" else 256
    patch = hx.encoders.MODELS[args.model].patch_size if args.model in hx.encoders.MODELS else 16
    side_px = math.ceil(math.sqrt(args.tiles)) * spec_tile * (8 / patch) / MPP  # source pixels at 0.5 µm/px
    size = int(side_px)
    image = Image2DModel.parse(lazy_slide(size).compute(), dims=("c", "y", "x"))
    sdata = sd.SpatialData(images={"he": image})
    return extract(args, sdata) | {"slide_px": size}


def run_artefact(args) -> list[dict]:
    """The tile-period pattern in the feature map of real H&E, for each ``n_shifts`` in ``args.artefact``."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    import histex as hx

    tile = he_image()
    sdata = sd.SpatialData(images={"he": Image2DModel.parse(np.moveaxis(tile, -1, 0), dims=("c", "y", "x"))})
    model = model_argument(args.model, args.random_weights)
    if args.margin is not None:  # e.g. a CNN without its context margin, to see the artefact it prevents
        model = hx.encoders.get_encoder(model) if isinstance(model, str) else model
        model.margin = args.margin
    rows = []
    for n_shifts in args.artefact:
        args.n_shifts = n_shifts
        result = extract(args, sdata, model)
        key = next(k for k in sdata.images if k.endswith("_features"))
        settings = sdata.attrs["histex"]["features"][key]
        period = settings["tile_size"] // settings["patch_size"]
        feats = np.asarray(sdata.images[key].data)[:-3]  # the model's channels, not the mean colour
        n_bins = feats.shape[1] * feats.shape[2]
        result |= {
            "slide_px": tile.shape[0],
            "margin_px": getattr(model, "margin", 0),
            "tile_artefact": hx.metrics.tile_artefact(feats, period),
            "noise_floor": period**2 / n_bins,
        }
        rows.append(result)
    return rows


def run_rss(args, size: int, path: Path) -> dict:
    import spatialdata as sd

    return extract(args, sd.read_zarr(path)) | {"slide_px": size}


def child(args) -> None:
    if args.child == "render":
        render(args.size, Path(args.path))
        return
    if args.child == "artefact":
        for result in run_artefact(args):
            print("RESULT " + json.dumps(result))
        return
    result = run_throughput(args) if args.child == "throughput" else run_rss(args, args.size, Path(args.path))
    print("RESULT " + json.dumps(result))


def spawn(args, *extra) -> list[dict]:
    cmd = [sys.executable, __file__, *extra, *_passthrough(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return [json.loads(line.removeprefix("RESULT ")) for line in out.stdout.splitlines() if line.startswith("RESULT ")]


def _passthrough(args) -> list[str]:
    out = ["--model", args.model, "--precision", args.precision, "--n-shifts", str(args.n_shifts)]
    out += ["--random-weights"] if args.random_weights else []
    out += ["--compile"] if args.compile else []
    for name in ("device", "batch_size", "num_workers", "margin"):
        if getattr(args, name) is not None:
            out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return out


def table(rows: list[dict]) -> str:
    cols = ["model", "device", "precision", "n_shifts", "slide_px", "bins", "tiles", "seconds", "tiles_per_s",
            "bins_per_s", "peak_rss_mib", "peak_gpu_mib", "margin_px", "tile_artefact", "noise_floor"]  # fmt: skip
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = {float: "{:.4g}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.get(type(r.get(c)), "{}").format(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="texture")
    parser.add_argument("--random-weights", action="store_true", help="the model's architecture, randomly initialised")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--n-shifts", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tiles", type=int, default=None, help="time an in-memory image of about this many tiles")
    parser.add_argument("--slide-px", type=int, nargs="*", default=None, help="peak RSS on zarr slides of these sizes")
    parser.add_argument("--artefact", type=int, nargs="*", default=None,
                        help="tile-period artefact in the features of real H&E for these n_shifts")  # fmt: skip
    parser.add_argument("--margin", type=int, default=None, help="override the model's context margin (px)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON as well")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    rows = []
    if args.tiles:
        import torch

        devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:  # CPU, and the GPU when there is one
            args.device = device
            rows += spawn(args, "--child", "throughput", "--tiles", str(args.tiles))
    if args.artefact:
        rows += spawn(args, "--child", "artefact", "--artefact", *map(str, args.artefact))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.slide_px or []:
            path = Path(tmp) / f"slide{size}.zarr"
            spawn(args, "--child", "render", "--size", str(size), "--path", str(path))
            rows += spawn(args, "--child", "rss", "--size", str(size), "--path", str(path))
    print(table(rows))
    if args.json:
        print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
