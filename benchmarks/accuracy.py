"""Accuracy of every method on sections with known 8 µm truth; the same as ``histex bench``.

    python benchmarks/accuracy.py --out bench [--datasets toy hgsc_nest hgsc_wsi]

hgsc_nest (real H&E with its segmented nuclei) and hgsc_wsi (a whole-slide segmentation, painted) read
../shared/data unless --data-dir says otherwise.
"""

from pathlib import Path

from histex.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

if __name__ == "__main__":
    import sys

    argv = sys.argv[1:]
    if "--data-dir" not in argv:
        argv += ["--data-dir", str(DATA)]
    sys.exit(main(["bench", *argv]))
