"""Train once, predict many: a HistexModel fitted on some sections predicts another, with or without its spots.

    python benchmarks/transfer.py --out DIR [--families toy hgsc_wsi] [--data-dir ../shared/data]
                                  [--epochs 60] [--states 3] [--genes 60] [--toy-size-um 1600]
                                  [--square-px 6000] [--options] [--device cpu|cuda]

Two families of four sections A-D that share their expression programmes but differ in layout and stain
(``histex._bench.load_family``): toy sections of seeds 0-3, and four disjoint 3 mm squares of the HGSC whole slide
with painted H&E (needs ``--data-dir``; skipped without it). Texture features on every section. For section D,
the mean per-gene Pearson correlation at 8 µm over in-tissue bins against its truth of:

- ``self``: ``super_resolve`` on D (fit on D's spots, predict D);
- ``one``: a model fitted on A, predicting D with D's spots as context;
- ``many``: a model fitted on A+B+C, saved, loaded, predicting D with D's spots (its output layer refitted to
  them, as ``predict`` does by default for a section it was not fitted on);
- ``he_only``: the same model predicting D from its image alone (``use_spots=False``);
- ``image_only``: the image-only variant fitted on D (the iStar design);
- ``interpolation``: D's spots interpolated linearly onto the bins;

and ``fit_s`` (fitting on A+B+C), ``predict_s`` (loading the saved model and predicting D), ``self_s``
(``super_resolve`` on D), ``peak_rss_mb`` (of the family's run). Writes ``DIR/transfer.json``:
``{"families": {name: {"self": .., "one": .., "many": .., "he_only": .., "image_only": .., "interpolation": ..,
"fit_s": .., "predict_s": .., "self_s": .., "peak_rss_mb": ..}}}`` and prints a Markdown table.

With ``--options``, also measures the choices a model for several sections makes, one at a time against the
default, each as ``many`` and ``he_only`` (``DIR/transfer_options.json``): features standardised per section or
with global statistics, with or without the bins' position channels, H&E-only ability by withheld context or by
image-only states, the output layer as trained (not refitted to D's spots), and fine-tuning on D's spots for 5
epochs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import histex as hx
from histex._bench import FAMILIES, load_family
from histex._memory import peak_rss_mb, reset_peak_rss

KEYS = ("self", "one", "many", "he_only", "image_only", "interpolation")
OPTIONS = {
    "default": {},  # per-section feature scaling, position channels, image-only states for H&E-only slides
    "global_scaling": {"feature_scaling": "global"},
    "no_positions": {"positions": False},
    "withheld": {"he_only": "withheld"},  # a quarter of the training windows without expression, no image states
}


def pearson(sdata, key: str) -> float:
    scores = hx.metrics.score(sdata.tables[key], sdata.tables["truth"])
    return round(float(hx.metrics.summarise(scores)["pearson"]), 4)


def run_family(name: str, args, workdir: Path) -> tuple[dict, dict]:
    """The figures of one family (``transfer.json``) and, with ``--options``, of each option."""
    reset_peak_rss()
    sections = load_family(
        name, data_dir=args.data_dir, n_genes=args.genes, seed=args.seed, toy_size_um=args.toy_size_um,
        square_px=args.square_px,
    )  # fmt: skip
    for sdata in sections:
        hx.pp.extract_features(sdata, show_progress=False)
    a, b, c, d = sections
    genes = [str(g) for g in d.tables["table"].var_names]
    training = {"epochs": args.epochs, "n_states": args.states, "seed": args.seed}
    run = {"genes": genes, "device": args.device, "show_progress": False}
    out: dict[str, float] = {}

    start = time.perf_counter()
    hx.tl.super_resolve(d, key_added="self", **training, **run)
    out["self_s"] = round(time.perf_counter() - start, 2)
    hx.tl.super_resolve(d, variant="image_only", key_added="image_only", **training, **run)
    d.tables["interpolation"] = hx.baselines.spots_on_bins(d, "self", method="linear")

    hx.HistexModel(**training).fit(a, **run).predict(d, key_added="one", use_spots=True, show_progress=False)

    start = time.perf_counter()
    model = hx.HistexModel(**training).fit([a, b, c], **run)
    out["fit_s"] = round(time.perf_counter() - start, 2)
    folder = model.save(workdir / f"{name}_model", overwrite=True)
    start = time.perf_counter()
    loaded = hx.HistexModel.load(folder, device=args.device)
    loaded.predict(d, key_added="many", use_spots=True, show_progress=False)
    out["predict_s"] = round(time.perf_counter() - start, 2)
    loaded.predict(d, key_added="he_only", use_spots=False, show_progress=False)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)

    result = {key: pearson(d, key) for key in KEYS}
    result.update({key: out[key] for key in ("fit_s", "predict_s", "self_s", "peak_rss_mb")})  # in the documented order

    options = {}
    if args.options:
        for option, settings in OPTIONS.items():
            start = time.perf_counter()
            if option == "default":
                m = loaded
            else:
                m = hx.HistexModel(**training, **settings).fit([a, b, c], **run)
            m.predict(d, key_added="opt_many", use_spots=True, show_progress=False)
            m.predict(d, key_added="opt_he", use_spots=False, show_progress=False)
            options[option] = {"many": pearson(d, "opt_many"), "he_only": pearson(d, "opt_he"),
                               "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            print(f"{name} {option}: {options[option]}", flush=True)
        loaded.predict(d, key_added="opt_trained", use_spots=True, refit_readout=False, show_progress=False)
        options["trained_readout"] = {"many": pearson(d, "opt_trained")}
        print(f"{name} trained_readout: {options['trained_readout']}", flush=True)
        for epochs in (5,):
            tuned = hx.HistexModel.load(folder, device=args.device)
            tuned.fine_tune(d, epochs=epochs, device=args.device, show_progress=False)
            tuned.predict(d, key_added="opt_tuned", use_spots=True, show_progress=False)
            options[f"fine_tune_{epochs}"] = {"many": pearson(d, "opt_tuned")}
            print(f"{name} fine_tune_{epochs}: {options[f'fine_tune_{epochs}']}", flush=True)
    return result, options


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/transfer"))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--states", type=int, default=3)
    parser.add_argument("--genes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--toy-size-um", type=float, default=1600)
    parser.add_argument("--square-px", type=int, default=6000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--options", action="store_true", help="also measure the options (transfer_options.json)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    families, options = {}, {}
    for name in args.families:
        if name == "hgsc_wsi" and not (args.data_dir / "hgsc_nuclei_wsi.parquet").is_file():
            print(f"skipping {name}: no hgsc_nuclei_wsi.parquet in {args.data_dir}")
            continue
        families[name], options[name] = run_family(name, args, args.out)
        print(f"{name}: {families[name]}", flush=True)
    report = {"families": families}
    (args.out / "transfer.json").write_text(json.dumps(report, indent=1))
    if args.options:
        (args.out / "transfer_options.json").write_text(json.dumps(options, indent=1))
    print(
        "| family | self | one | many | he_only | image_only | interpolation | fit s | predict s | self s | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in families.items():
        print(
            f"| {name} | "
            + " | ".join(str(r[k]) for k in (*KEYS, "fit_s", "predict_s", "self_s", "peak_rss_mb"))
            + " |"
        )
    return report


if __name__ == "__main__":
    main()
