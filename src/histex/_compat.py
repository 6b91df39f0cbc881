"""Workarounds for bugs of other packages that histex's users meet with histex's output, each named after its
upstream issue. Each changes behaviour only where the package would fail, so that a fixed release is unaffected.

spatialdata-plot 0.4.0, ``render_shapes`` with datashader (its default above 10,000 shapes, so for the bins of any
section): the shapes, already transformed to the coordinate system drawn, are parsed again with their old
transformations, and the canvas's extent is then asked for in the coordinate system ``"global"``, which a Visium
section does not have (spatialdata-io names its coordinate system after the dataset). It fails with "The element
does not contain any coordinate system named 'global'". This is scverse/spatialdata-plot#447, fixed by #446 and
back in 0.4.0. Where that error is raised, the extent is taken from the transformed shapes themselves, as the fix
meant.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys

logger = logging.getLogger(__name__)

_RENDER_MODULE = "spatialdata_plot.pl.render"


def install() -> None:
    """Patch spatialdata-plot now if it is imported, else as soon as it is (cheap: no import of it here)."""
    module = sys.modules.get(_RENDER_MODULE)
    if module is not None:
        patch_datashader_extent(module)
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(_RENDER_MODULE, patch_datashader_extent))


def patch_datashader_extent(render) -> None:
    """Wrap ``render._get_extent_and_range_for_datashader_canvas`` (once): on the missing-``"global"`` error, the
    canvas spans the bounds of the shapes it was given, which are already in the coordinate system drawn.
    """
    import spatialdata_plot.pl.utils as utils

    original = getattr(render, "_get_extent_and_range_for_datashader_canvas", None)
    canvas_params = getattr(utils, "_compute_datashader_canvas_params", None)
    if original is None or canvas_params is None or getattr(original, "histex_original", None) is not None:
        return  # another release: nothing of what this mends is there

    def extent_and_range(spatial_element, coordinate_system, fig_params):
        try:
            return original(spatial_element, coordinate_system, fig_params)
        except ValueError as error:
            if "coordinate system named" not in str(error) or not hasattr(spatial_element, "total_bounds"):
                raise
            logger.debug("spatialdata-plot#447: taking the datashader canvas from the shapes' bounds.")
            x0, y0, x1, y1 = (float(v) for v in spatial_element.total_bounds)
            return canvas_params([x0, x1], [y0, y1], fig_params)

    extent_and_range.histex_original = original
    render._get_extent_and_range_for_datashader_canvas = extent_and_range


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after ``name`` is imported, then steps out of the import system."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, self.patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    """The module's own loader, and the patch run after it; a failed patch is logged, never raised."""

    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            self.patch(module)
        except Exception as error:  # noqa: BLE001 - spatialdata-plot must import whatever the patch meets
            logger.warning("histex could not mend spatialdata-plot (%s); it is used as it is.", error)

    def __getattr__(self, name):  # get_source, get_filename, ... of the module's own loader
        return getattr(self.loader, name)
