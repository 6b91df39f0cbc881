"""histex: super-resolved spatial transcriptomics from Visium spots and H&E images (HISTEX) on SpatialData."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from histex import _compat

_compat.install()  # spatialdata-plot draws histex's bins by its default path (see histex._compat)

try:
    __version__ = version("histex")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

_SUBMODULES = (
    "datasets",
    "pp",
    "tl",
    "pl",
    "metrics",
    "baselines",
    "geometry",
    "encoders",
    "model",
    "nn",
    "sim",
    "gene_sets",
    "spaceranger",
)

__all__ = [
    "HistexModel",
    "HistexSettings",
    "__version__",
    "baselines",
    "datasets",
    "encoders",
    "gene_sets",
    "geometry",
    "metrics",
    "model",
    "nn",
    "pl",
    "pp",
    "sim",
    "spaceranger",
    "tl",
]


_CLASSES = {"HistexModel": "histex.tl", "HistexSettings": "histex.model"}


def __getattr__(name: str):
    # Submodules load on first use, so that `import histex` stays fast and torch loads only when needed.
    if name in _CLASSES:
        value = getattr(importlib.import_module(_CLASSES[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"histex.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'histex' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
