"""``histex run``: a section from Space Ranger's files to a zarr store and a report, and its bad input."""

import json
import re

import numpy as np
import pytest
import spatialdata as sd

import histex as hx
from histex import metrics
from histex._run import read_slide
from histex.cli import main
from histex.sim import write_spaceranger
from histex.spaceranger import check_outs, read_visium

QUICK = ["--epochs", "3", "--n-states", "1", "--quiet"]


@pytest.fixture(scope="module")
def toy():
    return hx.datasets.toy(size_um=600, n_genes=20, seed=0)


@pytest.fixture(scope="module")
def folder_v1(toy, tmp_path_factory):
    return write_spaceranger(toy, tmp_path_factory.mktemp("sr1"), version=1)


def test_both_layouts_of_space_ranger_read_as_the_section_they_came_from(toy, folder_v1, tmp_path):
    outs2, image2 = write_spaceranger(toy, tmp_path, version=2)
    one, two = read_visium(*folder_v1, dataset_id="s"), read_visium(outs2, image2, dataset_id="s")
    spots = toy.tables["table"]
    for sdata in (one, two):
        table = sdata.tables["table"]
        assert table.shape == spots.shape  # the off-tissue positions, not in the matrix, are not spots
        np.testing.assert_array_equal(table.X.toarray(), spots.X.toarray())
        np.testing.assert_array_equal(table.obs["array_row"], spots.obs["array_row"])
        xy = np.stack([sdata.shapes["s"].geometry.x, sdata.shapes["s"].geometry.y], axis=1)
        np.testing.assert_allclose(xy, np.stack([toy.shapes["toy"].geometry.x, toy.shapes["toy"].geometry.y], 1),
                                   atol=0.5)  # fmt: skip
        assert sdata.images["s_full_image"]["scale0"]["image"].shape == (3, 1200, 1200)


@pytest.mark.slow
def test_histex_run_writes_the_store_and_the_report(toy, folder_v1, tmp_path):
    outs, image = folder_v1
    out = tmp_path / "sample.zarr"
    assert main(["run", str(outs), "--image", str(image), "--out", str(out), "--domains", "3", *QUICK]) == 0
    written = sd.read_zarr(out)
    table = written.tables["histex"]
    assert table.n_vars == 20 and table.obs["domain"].nunique() == 3
    # the bins are the toy's grid: the prediction is scored against the toy's truth
    assert metrics.mean_pearson(table, toy.tables["truth"]) > 0.3
    report = json.loads((tmp_path / "sample_report" / "report.json").read_text())
    assert report["counts"] == {"spots": toy.tables["table"].n_obs, "spot_genes": 20, "bins": table.n_obs,
                                "genes": 20, "domains": 3}  # fmt: skip
    assert set(report["seconds"]) == {"read", "features", "super_resolve", "domains", "write zarr", "figures"}
    assert report["settings"]["epochs"] == 3 and 200 < report["peak_rss_mb"] < 8000
    assert report["genes_shown"] == list(table.var_names[np.argsort(-np.asarray(table.X.mean(0)).ravel())[:4]])
    for figure in ("genes.png", "domains.png"):
        assert (tmp_path / "sample_report" / figure).stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.zarr", "sample_report"]  # nothing half-written

    # a saved model predicts another section's files without training
    model = hx.HistexModel(epochs=3, n_states=1)
    section = read_visium(outs, image, dataset_id="train")
    hx.pp.extract_features(section, show_progress=False)
    model.fit(section, show_progress=False)
    model.save(tmp_path / "model")
    again = tmp_path / "again.zarr"
    assert main(["run", str(outs), "--image", str(image), "--out", str(again), "--model-dir", str(tmp_path / "model"),
                 "--quiet"]) == 0  # fmt: skip
    predicted = sd.read_zarr(again).tables["histex"]
    assert list(predicted.var_names) == model.genes
    report = json.loads((tmp_path / "again_report" / "report.json").read_text())
    assert "predict" in report["seconds"] and "super_resolve" not in report["seconds"]

    # an H&E-only slide: the image alone, at a given µm per pixel, predicted by the saved model
    slide = tmp_path / "slide.zarr"
    assert main(["run", "--image", str(image), "--out", str(slide), "--model-dir", str(tmp_path / "model"),
                 "--mpp", "0.5", "--quiet"]) == 0  # fmt: skip
    from_image = sd.read_zarr(slide)
    assert "table" not in from_image.tables
    # the bins in tissue come from the image's tissue mask here, from the spots above
    assert abs(from_image.tables["histex"].n_obs - predicted.n_obs) <= 0.01 * predicted.n_obs
    assert from_image.tables["histex"].uns["histex"]["params"]["use_spots"] is False
    # what the API gives on the image alone, and it follows the truth
    same = read_slide(image, "slide")
    hx.pp.extract_features(same, mpp=0.5, show_progress=False)
    model.predict(same, show_progress=False)
    np.testing.assert_allclose(from_image.tables["histex"].X, same.tables["histex"].X, rtol=1e-5, atol=1e-6)
    assert metrics.mean_pearson(from_image.tables["histex"], toy.tables["truth"]) > 0.1
    assert json.loads((tmp_path / "slide_report" / "report.json").read_text())["counts"]["spots"] == 0


def _broken(folder_v1, tmp_path, drop: str):
    import shutil

    outs = tmp_path / "outs"
    shutil.copytree(folder_v1[0], outs)
    (outs / drop).unlink()
    return outs


def test_bad_input_is_named_before_any_work(folder_v1, tmp_path, capsys):
    from PIL import Image

    outs, image = folder_v1
    small = tmp_path / "small.jpg"
    Image.new("RGB", (600, 600), "white").save(small)
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "taken.zarr").mkdir()
    cases = [
        ([str(_broken(folder_v1, tmp_path / "a", "spatial/tissue_positions_list.csv")), "--image", str(image)],
         "has no spot positions \\(tissue_positions_list.csv or tissue_positions.csv\\)"),
        ([str(_broken(folder_v1, tmp_path / "b", "filtered_feature_bc_matrix.h5")), "--image", str(image)],
         "has no filtered_feature_bc_matrix.h5"),
        ([str(outs), "--image", str(small)],
         re.escape("small.jpg is 600 x 600 px, but the scale factors say the image Space Ranger aligned the spots "
                   "to is about 1200 x 1200 px")),
        ([str(outs), "--image", str(tmp_path / "none.tif")], "No image at"),
        ([str(outs), "--image", str(image), "--model-dir", str(tmp_path / "not_a_model")], "is not a saved model"),
        ([str(outs), "--image", str(image), "--model", "unil"], "Unknown encoder 'unil'"),
        ([str(outs), "--image", str(image), "--domains", "1"], "n_domains must be a whole number of 2 or more"),
        (["--image", str(image)], "An H&E-only slide .* give model_dir \\(--model-dir\\) and .* mpp \\(--mpp\\)"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["run", *args, "--out", str(tmp_path / "out.zarr"), *QUICK])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out_report").exists()
    with pytest.raises(SystemExit):
        main(["run", str(outs), "--image", str(image), "--out", str(tmp_path / "taken.zarr"), *QUICK])
    assert "taken.zarr exists: remove it or pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert not any((tmp_path / "taken.zarr").iterdir())


@pytest.mark.realdata
def test_real_space_ranger_positions_are_checked_against_the_image(shared_data, tmp_path):
    """Space Ranger 1.0.0's real folder: 4,992 positions without a header, hires 2000 px at 0.150015."""
    from PIL import Image

    outs = shared_data / "visium_spaceranger_1.0.0"
    right, half = tmp_path / "full.jpg", tmp_path / "half.jpg"
    Image.new("RGB", (13332, 13332), "white").save(right)
    Image.new("RGB", (6666, 6666), "white").save(half)
    found = check_outs(outs, right)
    assert found["positions"].name == "tissue_positions_list.csv" and found["image_size"] == (13332, 13332)
    with pytest.raises(ValueError, match=r"is 6666 x 6666 px, but .* about 13332 x 13332 px"):
        check_outs(outs, half)
