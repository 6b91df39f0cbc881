import json

import matplotlib
import numpy as np
import pytest
import spatialdata as sd
from helpers import figure_of

import histex as hx

matplotlib.use("Agg")


def test_genes_plot_has_panels_titles_and_pixels(resolved, tmp_path):
    fig = figure_of(
        hx.pl.genes(resolved, ["Imm_01", "Epi_01"], truth_key="truth", save=tmp_path / "genes.png", show=False)
    )
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
    # the H&E lies beneath every panel, read once, with the maps drawn over it at alpha 0.8
    beneath = [ax.child_axes[0].get_images()[0].get_array() for ax in panels]
    assert all(np.array_equal(b, beneath[0]) for b in beneath) and beneath[0].shape[2] == 3
    assert images[0].get_alpha() == 0.8 and panels[1].collections[0].get_alpha() == 0.8
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    assert pixels.std() > 20  # not blank
    assert (tmp_path / "genes.png").stat().st_size > 10_000
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_genes_plot_shows_the_spot_layer_that_was_fitted(small_toy):
    """Spots trained from a layer (X holding log-normalised values) are drawn from that layer, per bin."""
    sdata = sd.deepcopy(small_toy)
    spots = sdata.tables["table"]
    counts = np.asarray(spots.X.toarray() if hasattr(spots.X, "toarray") else spots.X, dtype=np.float32)
    spots.layers["counts"] = counts.copy()
    spots.X = np.log1p(counts)
    hx.tl.super_resolve(sdata, layer="counts", epochs=2, n_states=1, genes=["Str_01"], show_progress=False)
    fig = figure_of(hx.pl.genes(sdata, "Str_01", image=False, show=False))
    drawn = fig.axes[0].collections[0].get_array()
    per_spot = sdata.tables["histex"].uns["histex"]["data"]["bins_per_spot"]
    assert np.allclose(drawn, counts[:, list(spots.var_names).index("Str_01")] / per_spot)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_genes_plot_without_truth_or_spots(resolved):
    fig = figure_of(hx.pl.genes(resolved, "Str_01", spots=False, image=False, show=False))
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["Str_01: super-resolution"]
    assert not fig.axes[0].child_axes and fig.axes[0].get_images()[0].get_alpha() == 1.0
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        hx.pl.genes(resolved, "Str_01", alpha=2, show=False)
    with pytest.raises(ValueError, match="not in table"):
        hx.pl.genes(resolved, ["NOPE"], show=False)


@pytest.mark.slow
def test_demo_writes_metrics_figure_and_zarr(tmp_path):
    from histex._demo import run_demo
    from histex._memory import current_rss_mb

    lines = []
    before = current_rss_mb()
    result = run_demo(tmp_path, size_um=720, n_genes=30, epochs=2, n_states=1, show_progress=False, echo=lines.append)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == result
    assert set(saved["pearson"]) == {"histex", "image_only", "interpolation"}
    # measured 0.434, 0.138 and 0.433 (2 epochs, 1 state): histex as good as the spots, image-only far behind
    assert saved["pearson"]["histex"] > 0.3 and saved["pearson"]["interpolation"] > 0.3
    assert 0 < saved["pearson"]["image_only"] < saved["pearson"]["histex"]
    assert {"toy", "features", "histex", "image_only", "interpolation", "write zarr"} <= set(saved["seconds"])
    # the demo's own peak, from its start: what the process held then, and less than 3 GB more (measured 1,333 MB in
    # a fresh process, torch and the stack included)
    assert before <= saved["peak_rss_mb"] < before + 3000
    assert (tmp_path / "genes.png").stat().st_size > 10_000
    # domains on the super-resolved bins, named by the toy's programmes, and the gene sets that run in them
    assert saved["domains"]["ari"] > 0.25  # measured 0.42: the domains follow the compartments
    assert set(saved["domains"]["best_gene_set"]) <= {"stroma", "epithelium", "immune", "tumour", "unknown"}
    assert all(term.endswith(" programme") for term in saved["domains"]["best_gene_set"].values())
    for name in ("domains.png", "enrichment.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    back = sd.read_zarr(tmp_path / "toy.zarr")
    assert {"histex", "image_only", "truth", "table"} <= set(back.tables)
    assert {"domain", "domain_label"} <= set(back.tables["histex"].obs)
    stored = back.tables["histex"].uns["enrichment"]
    best = stored[stored["rank"] == 1].set_index("group")["term"].to_dict()
    assert best == saved["domains"]["best_gene_set"]  # the table in the zarr store is the one the demo reported
    assert any("Pearson" in line for line in lines)


def test_cli_parses_demo_arguments(monkeypatch, tmp_path):
    import histex._demo
    from histex import cli

    seen = {}
    monkeypatch.setattr(histex._demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw))
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "5", "--n-states", "2", "--quiet"]) == 0
    assert seen["out"] == str(tmp_path) and seen["epochs"] == 5 and seen["n_states"] == 2
    assert seen["show_progress"] is False


def test_command_line_runs_as_a_module():
    """``python -m histex``, for a notebook's kernel whose PATH lacks the ``histex`` script."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "histex", *args], check=False, capture_output=True, text=True)

    result = run("bench", "--help")
    assert result.returncode == 0 and "--datasets" in result.stdout and result.stdout.startswith("usage: histex")
    result = run("nonsense")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def _pixels_of(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def test_domains_plot_colours_each_label_and_draws_boundaries(resolved, tmp_path):
    sdata = sd.deepcopy(resolved)
    markers = {"immune": ["Imm_01"], "gland": ["Epi_01"], "stroma": ["Str_01"]}
    hx.tl.annotate(sdata, n_domains=3, use="expression", markers=markers, boundary=True, min_score=-10)
    fig = figure_of(hx.pl.domains(sdata, save=tmp_path / "domains.png", show=False))
    ax = fig.axes[0]
    assert ax.get_title() == "histex: domain_label"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == list(sdata.tables["histex"].obs["domain_label"].cat.categories)
    image = ax.get_images()[0].get_array()
    assert len(np.unique(image[np.isfinite(image)])) == sdata.tables["histex"].obs["domain_label"].nunique()
    assert len(ax.get_images()) == 2  # labels, then the boundary bins
    pixels = _pixels_of(fig)
    assert (pixels.sum(-1) < 30).mean() > 0.001  # black boundary pixels
    assert (tmp_path / "domains.png").stat().st_size > 5000
    by_domain = figure_of(hx.pl.domains(sdata, labels=False, boundary=False, show=False))
    assert by_domain.axes[0].get_title() == "histex: domain" and len(by_domain.axes[0].get_images()) == 1
    with pytest.raises(ValueError, match="no obs\\['regions'\\]"):
        hx.pl.domains(sdata, key="regions", show=False)


def test_history_plot_has_one_training_curve_per_state(resolved):
    fig = figure_of(hx.pl.history(resolved, show=False))
    ax = fig.axes[0]
    loss = resolved.tables["histex"].uns["histex"]["history"]["loss"]
    assert len(ax.get_lines()) == len(loss) and ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), loss[0])
    assert ax.get_xlabel() == "epoch" and ax.get_title() == "histex: training loss"
    with pytest.raises(ValueError, match="no training history"):
        hx.pl.history(resolved, table_key="truth", show=False)


def test_history_plot_with_held_out_spots(small_toy):
    sdata = sd.deepcopy(small_toy)
    hx.tl.super_resolve(sdata, epochs=4, n_states=2, holdout=0.2, genes=["Imm_01", "Str_01"], show_progress=False)
    fig = figure_of(hx.pl.history(sdata, show=False))
    ax = fig.axes[0]
    record = sdata.tables["histex"].uns["histex"]["history"]
    assert record["validation"].shape == (2, 4)
    lines = ax.get_lines()
    assert len(lines) == 6  # per state: training, held-out, the epoch kept
    train_line, held_line, kept = lines[:3]
    assert ax.get_yscale() == "log" and held_line.get_linestyle() == "--"
    np.testing.assert_allclose(train_line.get_ydata(), record["loss"][0])
    np.testing.assert_allclose(held_line.get_ydata(), record["validation"][0])
    best = record["best_epoch"][0]
    assert kept.get_xdata()[0] == best and kept.get_ydata()[0] == record["validation"][0, best - 1]
    assert ax.get_title() == "histex: training (solid) and held-out (dashed) loss"


def test_uncertainty_plot_shows_prediction_and_spread(small_toy):
    sdata = sd.deepcopy(small_toy)
    hx.tl.super_resolve(sdata, epochs=3, n_states=2, genes=["Imm_01", "Str_01"], show_progress=False)
    table = sdata.tables["histex"]
    fig = figure_of(hx.pl.uncertainty(sdata, ["Imm_01", "Str_01"], show=False))
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == [
        f"{g}: {t}" for g in ("Imm_01", "Str_01") for t in ("prediction", "90% interval width", "ensemble sd")
    ]
    width = fig.axes[1].get_images()[0].get_array()
    interval = table[:, "Imm_01"].layers["upper90"] - table[:, "Imm_01"].layers["lower90"]
    np.testing.assert_allclose(np.nansum(width), interval.sum(), rtol=1e-4)
    assert np.nanmax(width) >= 1  # a count interval spans at least one count somewhere
    spread = fig.axes[2].get_images()[0].get_array()
    assert np.nanmax(spread) > 0  # two states disagree somewhere
    np.testing.assert_allclose(np.nansum(spread), table[:, "Imm_01"].layers["ensemble_sd"].sum(), rtol=1e-4)
    with pytest.raises(ValueError, match=r"Gene\(s\) \['NOPE'\]"):
        hx.pl.uncertainty(sdata, "NOPE", show=False)
    del table.layers["upper90"]  # a table of an earlier histex: the spread alone
    titles = [
        ax.get_title() for ax in figure_of(hx.pl.uncertainty(sdata, "Imm_01", show=False)).axes if ax.get_images()
    ]
    assert titles == ["Imm_01: prediction", "Imm_01: ensemble sd"]
    del table.layers["ensemble_sd"]
    with pytest.raises(ValueError, match="no layers\\['ensemble_sd'\\]"):
        hx.pl.uncertainty(sdata, "Imm_01", show=False)
