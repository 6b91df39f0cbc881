"""histex's output drawn the spatialdata way: spatialdata-plot's render_shapes on the bins and the cells (by its
default path, which needs histex's workaround of scverse/spatialdata-plot#447 on 0.4.0), render_images on
rasterize_bins; and histex's own plots the scanpy way (ax=, show=, the axes returned)."""

import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import spatialdata as sd
from helpers import figure_of

import histex as hx

matplotlib.use("Agg")


def _drawn_pixels(ax) -> np.ndarray:
    fig = ax.figure
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


@pytest.mark.parametrize("method", [None, "datashader", "matplotlib"])
def test_render_shapes_colours_the_bins_by_a_gene(resolved, method):
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401

    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    cs = "toy"
    resolved.pl.render_shapes("histex_bins", color="Epi_01", table_name="histex", method=method).pl.show(
        coordinate_systems=cs, ax=axes[0], colorbar=False
    )
    # the same gene, with the bins turned into an image by spatialdata
    raster = sd.rasterize_bins(resolved, "histex_bins", "histex", "array_col", "array_row")
    resolved.images["histex_raster"] = raster
    try:
        resolved.pl.render_images("histex_raster", channel="Epi_01").pl.show(
            coordinate_systems=cs, ax=axes[1], colorbar=False
        )
    finally:
        del resolved.images["histex_raster"]
    # both panels span the image's extent and are coloured where the tissue is (viridis, not white)
    for ax in axes:
        x0, x1 = sorted(ax.get_xlim())
        y0, y1 = sorted(ax.get_ylim())
        assert x0 < 100 and x1 > 1300 and y0 < 100 and y1 > 1300
    pixels = _drawn_pixels(axes[0])
    coloured = (np.abs(pixels.astype(int) - 255).sum(-1) > 60).mean()
    assert coloured > 0.2
    raster_values = np.asarray(raster.sel(c="Epi_01"))
    assert np.isclose(raster_values.max(), resolved.tables["histex"][:, "Epi_01"].X.max(), rtol=1e-5)
    plt.close(fig)


def test_the_default_path_on_more_than_ten_thousand_bins():
    """Above 10,000 shapes spatialdata-plot takes datashader: histex's bins of a 1000 um toy section render there."""
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401

    from histex import _sdata, geometry

    grid = geometry.BinGrid.for_image((2000, 2000), mpp=0.5, bin_size_um=8.0)
    rows, cols = np.divmod(np.arange(125 * 125), 125)
    from spatialdata.transformations import Identity

    shapes, obs = _sdata.bin_elements(grid, rows, cols, region="bins", transformations={"section": Identity()})
    import anndata as ad
    from spatialdata.models import TableModel

    table = ad.AnnData(X=(rows + cols).astype(np.float32)[:, None], obs=obs)
    table.var_names = ["G"]
    table = TableModel.parse(table, region="bins", region_key="region", instance_key="instance_id")
    sdata = sd.SpatialData(shapes={"bins": shapes}, tables={"histex": table})
    fig, ax = plt.subplots(figsize=(3, 3))
    sdata.pl.render_shapes("bins", color="G", table_name="histex").pl.show(coordinate_systems="section", ax=ax)
    assert len(ax.get_images()) == 1  # datashader's raster
    image = np.asarray(ax.get_images()[0].get_array())
    assert image.shape[0] > 50 and np.isfinite(np.asarray(image, float)).any()
    plt.close(fig)


def test_upstream_still_needs_the_workaround():
    """When spatialdata-plot fixes #447, this fails: then histex._compat can go."""
    import spatialdata_plot.pl.render as render
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    original = render._get_extent_and_range_for_datashader_canvas.histex_original
    import geopandas as gpd
    import shapely

    element = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]), transformations={"cs": Identity()}
    )
    with pytest.raises(ValueError, match="coordinate system named 'global'"):
        original(element, "global", None)


@pytest.mark.parametrize("order", ["spatialdata_plot, histex", "histex, spatialdata_plot"])
def test_the_workaround_is_in_place_whatever_is_imported_first(order):
    code = (
        f"import {order}; import spatialdata_plot.pl.render as r; "
        "assert hasattr(r._get_extent_and_range_for_datashader_canvas, 'histex_original')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_render_shapes_colours_the_cells(resolved):
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401

    sdata = sd.deepcopy(resolved)
    hx.pp.segment_nuclei(sdata, show_progress=False)
    hx.tl.to_cells(sdata, cells_key="nuclei")
    fig, ax = plt.subplots(figsize=(3, 3))
    sdata.pl.render_shapes("nuclei", color="Imm_01", table_name="histex_cells").pl.show(
        coordinate_systems="toy", ax=ax, colorbar=False
    )
    drawn = ax.collections[0].get_facecolors()  # one colour per nucleus, from its predicted Imm_01 counts
    assert len(drawn) == len(sdata.shapes["nuclei"]) > 20
    assert len(np.unique(np.round(drawn, 3), axis=0)) > 10
    plt.close(fig)


def test_plots_take_axes_and_return_them(resolved, monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    fig, axes = plt.subplots(1, 2)
    assert hx.pl.history(resolved, ax=axes[1]) is axes[1]  # into the axes given, no show
    assert axes[1].get_lines() and not axes[0].get_lines() and not shown
    open_figures = len(plt.get_fignums())
    assert hx.pl.history(resolved) is None and shown == [True]  # its own figure: shown, nothing returned, closed
    assert len(plt.get_fignums()) == open_figures
    ax = hx.pl.history(resolved, show=False)
    assert ax.figure is not fig and ax.get_lines()
    grid = hx.pl.genes(resolved, ["Epi_01", "Imm_01"], image=False, show=False)
    assert grid.shape == (2, 2) and grid[1, 1].get_title() == "Imm_01: super-resolution"
    _, given = plt.subplots(2, 2)
    assert (hx.pl.genes(resolved, ["Epi_01", "Imm_01"], image=False, ax=given) == given).all()
    assert given[0, 0].get_title() == "Epi_01: spots"
    with pytest.raises(ValueError, match=r"ax must hold 4 matplotlib Axes \(genes x panels: 2 x 2\)"):
        hx.pl.genes(resolved, ["Epi_01", "Imm_01"], image=False, ax=axes)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        hx.pl.history(resolved, ax=fig)
    with pytest.raises(TypeError, match="show must be True or False"):
        hx.pl.history(resolved, show="no")
    for call in (
        lambda: hx.pl.genes(resolved, [], show=False),
        lambda: hx.pl.genes(resolved, ["Epi_01", "Epi_01"], show=False),
        lambda: hx.pl.genes(resolved, "Epi_01", panel_size=0, show=False),
        lambda: hx.pl.history(resolved, figsize=(0, 3), show=False),
        lambda: hx.pl.reliability(resolved, label_genes="x", show=False),
    ):
        with pytest.raises((ValueError, TypeError)):
            call()
    plt.close("all")
    assert figure_of(grid) is grid[0, 0].figure


def test_a_failed_patch_never_breaks_the_import(tmp_path, monkeypatch, caplog):
    """The import hook runs the module's own loader, then the patch; a patch that fails is logged, not raised."""
    from histex._compat import _PatchOnImport

    (tmp_path / "histex_hook_probe.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def failing(module):
        raise AttributeError("renamed upstream")

    finder = _PatchOnImport("histex_hook_probe", failing)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    with caplog.at_level("WARNING", logger="histex"):
        import histex_hook_probe
    assert histex_hook_probe.VALUE == 1 and finder not in sys.meta_path
    assert "could not mend spatialdata-plot (renamed upstream)" in caplog.text
    assert histex_hook_probe.__spec__.loader.get_filename("histex_hook_probe").endswith("histex_hook_probe.py")
    sys.modules.pop("histex_hook_probe", None)
