"""Sphinx configuration for the histex documentation (builds offline)."""

from __future__ import annotations

import shutil
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent

# -- Tutorials -----------------------------------------------------------------------------------------------------
# The executed notebooks live in ../tutorials (the repository layout of DESIGN.md). Sphinx only reads files under
# docs/, so copy them into docs/tutorials/ (git-ignored) at every build: this works on a fresh clone, on Windows and
# in a source archive, where a symlink may not survive.
_TUTORIALS_SRC = ROOT / "tutorials"
_TUTORIALS_DST = HERE / "tutorials"
if _TUTORIALS_SRC.is_dir():
    _TUTORIALS_DST.mkdir(exist_ok=True)
    _notebooks = {nb.name: nb for nb in sorted(_TUTORIALS_SRC.glob("*.ipynb"))}
    for stale in _TUTORIALS_DST.glob("*.ipynb"):
        if stale.name not in _notebooks:
            stale.unlink()
    for name, nb in _notebooks.items():
        target = _TUTORIALS_DST / name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            shutil.copy2(nb, target)  # copy2 keeps the mtime, so Sphinx re-reads only changed notebooks

# -- Project -------------------------------------------------------------------------------------------------------
project = "histex"
author = "histex developers"
copyright = f"{date.today().year}, {author}"
try:
    release = version("histex")
except PackageNotFoundError:
    release = "0.0.0"
version = release

# -- Extensions ----------------------------------------------------------------------------------------------------
extensions = [
    "myst_nb",  # Markdown pages (MyST) and Jupyter notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # numpydoc-style docstrings
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# MyST
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "substitution"]
myst_heading_anchors = 3

# myst-nb: notebooks are stored executed, with outputs; the docs never run them (offline, fast, reproducible).
nb_execution_mode = "off"
nb_merge_streams = True

# autodoc / autosummary / napoleon
autosummary_generate = True
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True

# No intersphinx: the build must work without network access. Cross-references to other packages
# (:class:`spatialdata.SpatialData`, ...) render as literal text; do not fail on them.
nitpicky = False

# -- HTML ----------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "histex"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "use_download_button": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
