import json

import matplotlib
import numpy as np
import pytest
import spatialdata as sd

import histex as hx

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def resolved(small_toy):
    sdata = sd.deepcopy(small_toy)
    hx.tl.super_resolve(sdata, epochs=3, n_states=1, genes=["Imm_01", "Epi_01", "Str_01"], show_progress=False)
    return sdata


def test_genes_plot_has_panels_titles_and_pixels(resolved, tmp_path):
    fig = hx.pl.genes(resolved, ["Imm_01", "Epi_01"], truth_key="truth", save=tmp_path / "genes.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "Imm_01: ground truth",
        "Imm_01: spots",
        "Imm_01: super-resolution",
        "Epi_01: ground truth",
        "Epi_01: spots",
        "Epi_01: super-resolution",
    ]
    # one colour scale per gene: the three panels of a row share limits
    images = [ax.get_images()[0] for ax in panels if ax.get_images()]
    assert images[0].get_clim() == images[1].get_clim()
    assert panels[1].collections[0].get_clim() == images[0].get_clim()
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    assert pixels.std() > 20  # not blank
    assert (tmp_path / "genes.png").stat().st_size > 10_000
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_genes_plot_without_truth_or_spots(resolved):
    fig = hx.pl.genes(resolved, "Str_01", spots=False)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["Str_01: super-resolution"]
    with pytest.raises(ValueError, match="not in table"):
        hx.pl.genes(resolved, ["NOPE"])


def test_demo_writes_metrics_figure_and_zarr(tmp_path):
    from histex._demo import run_demo

    lines = []
    result = run_demo(tmp_path, size_um=720, n_genes=30, epochs=2, n_states=1, show_progress=False, echo=lines.append)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == result
    assert set(saved["pearson"]) == {"histex", "image_only", "interpolation"}
    assert all(np.isfinite(v) and -1 <= v <= 1 for v in saved["pearson"].values())
    assert saved["pearson"]["interpolation"] > 0.1  # the toy's spots do carry the expression
    assert {"toy", "features", "histex", "image_only", "interpolation", "write zarr"} <= set(saved["seconds"])
    assert saved["peak_rss_mb"] > 100
    assert (tmp_path / "genes.png").stat().st_size > 10_000
    back = sd.read_zarr(tmp_path / "toy.zarr")
    assert {"histex", "image_only", "truth", "table"} <= set(back.tables)
    assert any("Pearson" in line for line in lines)


def test_cli_parses_demo_arguments(monkeypatch, tmp_path):
    import histex._demo
    from histex import cli

    seen = {}
    monkeypatch.setattr(histex._demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw))
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "5", "--n-states", "2", "--quiet"]) == 0
    assert seen["out"] == str(tmp_path) and seen["epochs"] == 5 and seen["n_states"] == 2
    assert seen["show_progress"] is False
