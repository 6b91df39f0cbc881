"""HistexModel: fit on sections, save, load, predict new sections with their spots or from the image alone."""

import json
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import torch
from helpers import figure_of

import histex as hx
from histex._bench import load_family
from histex.model import Problem, TargetScaler, context_points, predict, train
from histex.model.checkpoint import Checkpoint
from histex.model.features import standardised_with_position
from histex.model.fit import bins_per_spot
from histex.model.io import MANIFEST
from histex.model.matching import ShapeChoice, SpotMatch
from histex.model.predict import predict_spots
from histex.model.settings import HistexSettings

FAST = {"epochs": 3, "n_states": 2}
QUIET = {"show_progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def family():
    """Four small toy sections that share their programmes (A, B, C, D), with texture features."""
    sections = load_family("toy", toy_size_um=700, n_genes=12)
    for sdata in sections:
        hx.pp.extract_features(sdata, show_progress=False)
    return sections


@pytest.fixture(scope="module")
def trained(family):
    return hx.HistexModel(**FAST).fit(family[:3], **QUIET)


@pytest.fixture
def section_d(family):
    return sd.deepcopy(family[3])


def _x(sdata, key):
    return np.asarray(sdata.tables[key].X)


# --- super_resolve is the model fitted and predicting one section ---------------------------------------------------


def test_super_resolve_gives_the_numbers_of_the_array_pipeline(small_toy):
    """super_resolve (now HistexModel.fit_predict) computes what the plain functions compute, step by step as
    super_resolve did before the model class existed: same seed, same numbers."""
    sdata = sd.deepcopy(small_toy)
    kw = {"epochs": 2, "n_states": 2, "precision": "float32", "seed": 3, "genes": ["Epi_01", "Imm_01", "Str_01"]}
    hx.tl.super_resolve(sdata, **kw, **QUIET)
    table = sdata.tables["histex"]

    # the pipeline of histex 0.1 written out on arrays
    spots = sdata.tables["table"]
    counts = spots[:, kw["genes"]].X.toarray().astype(np.float64)
    meta = table.uns["histex"]["data"]
    features = sdata.images[meta["features_key"]].data.compute()
    tissue = np.asarray(sdata.labels[meta["features_key"].removesuffix("_features") + "_tissue"].data) > 0
    bin_px = float(meta["bin_px"])
    circles = sdata.shapes["toy"].loc[spots.obs["spot_id"].to_numpy()]  # identity transformations: image pixels
    xy = np.stack([circles.geometry.x, circles.geometry.y], axis=1)
    scaler = TargetScaler.fit(counts, "minmax")
    y = scaler.transform(counts)
    spot_rc = xy[:, ::-1] / bin_px
    pitch = hx.geometry.lattice_pitch(xy)[0] / bin_px
    problem = Problem(standardised_with_position(features, tissue), tissue, spot_rc, 55 / 2 / 8, y,
                      context_points(spot_rc, y, pitch=pitch))  # fmt: skip
    settings = HistexSettings.preset("histex", epochs=2, n_states=2, precision="float32", seed=3, he_only="none")
    config = settings.fit_config(window=7, device="cpu", show_progress=False)
    ensemble, history = train(problem, config)
    to_counts = scaler.block_to_counts_per_bin(bins_per_spot(problem, 7))
    match = SpotMatch(spot_rc, 55 / 2 / 8, counts, np.column_stack(np.nonzero(tissue)))  # each disk to its spot
    expected = predict(ensemble, problem, config, transform=to_counts, match=match)
    assert np.array_equal(np.asarray(table.X), expected.mean)
    assert "shape_own" not in table.var  # the shapes are chosen only when asked for

    # with match_shapes, each gene's shape is chosen on the spots' windows predicted as at training, then matched
    settings = {k: v for k, v in kw.items() if k != "genes"}
    model = hx.HistexModel(**settings, he_only="none", match_shapes=True)
    model.fit_predict(sdata, genes=kw["genes"], key_added="shaped", **QUIET)
    shaped = sdata.tables["shaped"]
    per_spot = bins_per_spot(problem, 7)
    windows = ((scaler.to_counts_per_bin(p, per_spot), d) for p, d in predict_spots(ensemble, problem, config))
    shapes = ShapeChoice.fit(windows, counts, spot_rc, per_spot)
    match = SpotMatch(spot_rc, 55 / 2 / 8, counts, np.column_stack(np.nonzero(tissue)))
    expected_shaped = predict(ensemble, problem, config, transform=lambda m, s: shapes(*to_counts(m, s)), match=match)
    assert np.array_equal(np.asarray(shaped.X), expected_shaped.mean)
    assert np.array_equal(shaped.var["shape_shared"].to_numpy(), shapes.shared.astype(np.float32))
    assert shaped.uns["histex"]["params"]["match_shapes"] and not table.uns["histex"]["params"]["match_shapes"]
    assert np.array_equal(np.asarray(table.layers["ensemble_sd"]), expected.spread)
    assert np.array_equal(table.uns["histex"]["history"]["loss"], history.loss)


def test_fit_predict_equals_fit_then_predict(small_toy):
    a, b = sd.deepcopy(small_toy), sd.deepcopy(small_toy)
    kw = {"genes": ["Epi_01", "Imm_01"], **QUIET}
    one = {"epochs": 1, "n_states": 1, "he_only": "none"}
    hx.HistexModel(**one).fit_predict(a, **kw)
    hx.HistexModel(**one).fit(b, **kw).predict(b, show_progress=False)
    assert np.array_equal(_x(a, "histex"), _x(b, "histex"))


# --- the model object --------------------------------------------------------------------------------------------


def test_settings_presets_and_validation():
    assert HistexSettings() == HistexSettings.preset("histex")
    paper = HistexSettings.preset("paper", epochs=7)
    assert paper.hidden == (1024, 512, 512, 512) and paper.epochs == 7 and not paper.nonlinear
    assert not HistexSettings.preset("image_only").use_context
    with pytest.raises(ValueError, match="variant must be one of"):
        HistexSettings.preset("istar")
    with pytest.raises(TypeError, match="Unknown settings"):
        HistexSettings.preset("histex", epoch=3)
    with pytest.raises(ValueError, match="feature_scaling must be one of"):
        HistexSettings(feature_scaling="slide")
    with pytest.raises(ValueError, match="he_only must be one of"):
        hx.HistexModel(he_only="yes")
    assert HistexSettings.from_dict(HistexSettings().to_dict()) == HistexSettings()


def test_repr_history_and_genes(trained, family):
    text = repr(trained)
    assert "trained on 3 section(s)" in text and "toy_A" in text and "toy_C" in text and "texture" in text
    assert "not trained" in repr(hx.HistexModel())
    history = trained.history
    assert list(history.columns) == ["state", "epoch", "loss", "validation"]
    assert len(history) == 2 * 3 and history["loss"].notna().all()
    assert trained.genes == [str(g) for g in family[0].tables["table"].var_names]


def test_batches_mix_the_spots_of_all_sections(family):
    """The loss of a fit on several sections runs over the spots of all of them, in one set of batches."""
    from histex.model.fit import SpotLoss

    model = hx.HistexModel(epochs=1, n_states=1)
    _, inputs, problems = model._fit(family[:2], **QUIET)
    n_a, n_b = (len(i.spots.xy_px) for i in inputs)
    assert model._trained.data["sections"][1]["n_spots"] == n_b
    loss = SpotLoss(problems, model._config(7, torch.device("cpu"), False), torch.device("cpu"))
    assert loss.targets.shape[0] == n_a + n_b
    # the windows of B's spots index B's tokens, which follow A's in the one table
    assert loss.token_idx[n_a:].min() >= problems[0].tissue.size > loss.token_idx[:n_a].max()
    assert loss.flat.shape[0] == problems[0].tissue.size + problems[1].tissue.size
    spots = np.array([[0, n_a]])  # a spot of A and one of B in one batch
    assert loss(model._trained.ensemble, spots).shape == (1, 2)


def test_features_standardised_per_section_or_globally(family):
    from histex.model.features import fit_scaling, tokens

    pairs = []
    for s in family[:2]:
        key = next(k for k in s.images if k.endswith("_features"))
        tissue = np.asarray(s.labels[key.removesuffix("_features") + "_tissue"].data) > 0
        pairs.append((s.images[key].data.compute(), tissue))
    per_section = fit_scaling(pairs, per_section=True)
    pooled = fit_scaling(pairs, per_section=False, positions=False)
    assert per_section.mean is None and pooled.mean.shape == (pairs[0][0].shape[0],)
    own = [tokens(f, t, per_section)[t][:, :-2] for f, t in pairs]
    shared = [tokens(f, t, pooled)[t] for f, t in pairs]
    for x in own:  # each section centred on itself
        assert np.abs(x.mean(0)).max() < 1e-3
    together = np.concatenate(shared)  # the sections together centred, each one not
    assert np.abs(together.mean(0)).max() < 1e-3
    assert max(np.abs(x.mean(0)).max() for x in shared) > 0.05
    assert shared[0].shape[1] == own[0].shape[1]  # no position channels


# --- save and load -----------------------------------------------------------------------------------------------


def test_save_load_round_trip(trained, section_d, tmp_path):
    folder = trained.save(tmp_path / "model")
    files = sorted(p.name for p in folder.iterdir())
    states = ["state_0.safetensors", "state_1.safetensors"]
    assert files == ["image_" + s for s in states] + ["manifest.json", *states]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["schema_version"] == 1 and manifest["histex_version"] == hx.__version__
    assert manifest["settings"]["epochs"] == 3 and manifest["genes"] == trained.genes
    assert manifest["encoder"]["model"] == "texture" and manifest["encoder"]["weights_digest"]
    assert manifest["encoder"]["bin_size_um"] == 8.0 and manifest["encoder"]["patch_size"]
    assert [s["name"] for s in manifest["trained_on"]["sections"]] == ["toy_A", "toy_B", "toy_C"]
    assert all(s["n_spots"] > 10 and len(s["image_shape"]) == 2 for s in manifest["trained_on"]["sections"])
    assert np.asarray(manifest["history"]["loss"]).shape == (2, 3)
    assert manifest["targets"]["kind"] == "minmax" and len(manifest["targets"]["low"]) == 12
    assert manifest["feature_scaling"]["mode"] == "global"
    assert len(manifest["dispersion"]) == 12 and min(manifest["dispersion"]) >= 0  # for H&E-only intervals

    loaded = hx.HistexModel.load(folder, device="cpu")
    assert repr(loaded) == repr(trained)
    np.testing.assert_array_equal(loaded._trained.dispersion, trained._trained.dispersion)
    trained.predict(section_d, key_added="direct", show_progress=False)
    loaded.predict(section_d, key_added="loaded", show_progress=False)
    assert np.array_equal(_x(section_d, "direct"), _x(section_d, "loaded"))
    meta = section_d.tables["loaded"].uns["histex"]
    assert meta["params"]["use_spots"] is True or meta["params"]["use_spots"] == 1
    assert list(meta["model"]["trained_on"]) == ["toy_A", "toy_B", "toy_C"]


def test_loading_never_unpickles(trained, tmp_path, monkeypatch):
    import pickle

    folder = trained.save(tmp_path / "model")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert hx.HistexModel.load(folder, device="cpu").is_trained


def test_saving_is_atomic(trained, tmp_path, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def failing(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(tensors, filename, *args, **kwargs)

    target = tmp_path / "model"
    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        trained.save(target)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a partial one
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    trained.save(target)
    before = (target / MANIFEST).read_text()
    calls["n"] = 0
    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        trained.save(target, overwrite=True)
    assert (target / MANIFEST).read_text() == before and [p.name for p in tmp_path.iterdir()] == ["model"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    trained.save(target, overwrite=True)
    assert hx.HistexModel.load(target, device="cpu").is_trained


# --- new sections ------------------------------------------------------------------------------------------------


def test_predict_uses_the_new_sections_own_spots(trained, section_d):
    trained.predict(section_d, key_added="with", use_spots=True, show_progress=False)
    changed = sd.deepcopy(section_d)
    table = changed.tables["table"]
    table.X = table.X.toarray()[::-1].copy()  # the spots' measurements in another order: same image
    trained.predict(changed, key_added="with", use_spots=True, show_progress=False)
    assert not np.allclose(_x(section_d, "with"), _x(changed, "with"))
    # from the image alone, the counts do not matter
    trained.predict(section_d, key_added="alone", use_spots=False, show_progress=False)
    trained.predict(changed, key_added="alone", use_spots=False, show_progress=False)
    assert np.array_equal(_x(section_d, "alone"), _x(changed, "alone"))
    meta = section_d.tables["alone"].uns["histex"]
    assert not meta["params"]["use_spots"] and meta["model"]["prediction"] == "image_states"
    assert section_d.tables["alone"].obsm["X_histex"].shape[1] == 256  # the image-only MLP's last layer


def test_the_readout_is_refitted_to_a_new_sections_spots(trained, family, section_d):
    """By default a section the model was not fitted on gets the output layer refitted to its spots; the model
    is unchanged, and a section it was fitted on is predicted with the trained layer (as super_resolve does)."""
    before = {k: v.clone() for k, v in trained._trained.ensemble.params.items()}
    trained.predict(section_d, key_added="auto", show_progress=False)
    trained.predict(section_d, key_added="as_trained", refit_readout=False, show_progress=False)
    assert all(torch.equal(before[k], trained._trained.ensemble.params[k]) for k in before)
    refit, kept = (section_d.tables[k].uns["histex"] for k in ("auto", "as_trained"))
    assert refit["params"]["refit_readout"] and not kept["params"]["refit_readout"]
    assert refit["model"]["readout"]["n_spots"] == section_d.tables["table"].n_obs
    assert len(refit["model"]["readout"]["penalty"]) == 2 and kept["model"]["readout"] == "trained"
    assert not np.allclose(_x(section_d, "auto"), _x(section_d, "as_trained"))
    a = sd.deepcopy(family[0])
    trained.predict(a, key_added="own", show_progress=False)
    assert not a.tables["own"].uns["histex"]["params"]["refit_readout"]
    with pytest.raises(ValueError, match="needs the section's spots"):
        trained.predict(section_d, key_added="x", use_spots=False, refit_readout=True, show_progress=False)
    assert "x" not in section_d.tables


def test_the_refitted_readout_maps_genes_the_training_did_not(trained, section_d):
    """Section D's genes relabelled (what the model calls gene 0 is gene 11 here, ...): the trained output layer
    maps every gene to the wrong programme, the layer refitted to D's spots maps them back."""
    genes = trained.genes
    relabel = dict(zip(genes, genes[::-1], strict=True))
    for key in ("table", "truth"):
        table = section_d.tables[key]
        table.var_names = [relabel.get(g, g) for g in table.var_names]
    # without matching to the spots, which would set every gene's level from them whatever the readout
    trained.predict(section_d, key_added="as_trained", refit_readout=False, match_spots=False, show_progress=False)
    trained.predict(section_d, key_added="refit", match_spots=False, show_progress=False)
    trained.predict(section_d, key_added="matched", refit_readout=False, show_progress=False)
    truth = section_d.tables["truth"]
    pearson = {k: hx.metrics.summarise(hx.metrics.score(section_d.tables[k], truth))["pearson"]
               for k in ("as_trained", "refit", "matched")}  # fmt: skip
    assert pearson["refit"] > pearson["as_trained"] + 0.2, pearson
    assert pearson["matched"] > pearson["as_trained"] + 0.1, pearson  # the spots give each gene its place too
    assert section_d.tables["matched"].uns["histex"]["params"]["match_spots"]
    assert not section_d.tables["refit"].uns["histex"]["params"]["match_spots"]


def test_an_he_only_slide(trained, section_d):
    """A slide with an image and features but no spots: predicted from the image, marked so in uns."""
    del section_d.shapes["toy_D"]
    del section_d.tables["table"]
    assert trained.predict(section_d, show_progress=False) == "histex"  # use_spots="auto" finds none
    table = section_d.tables["histex"]
    assert table.n_obs == int(section_d.labels["toy_D_full_image_texture_tissue"].data.sum().compute())
    meta = table.uns["histex"]
    assert not meta["params"]["use_spots"] and meta["data"]["n_spots"] == 0
    assert meta["data"]["mpp"] == pytest.approx(0.5, rel=1e-3) and meta["data"]["mpp_source"] == "features"
    truth = section_d.tables["truth"]
    assert hx.metrics.summarise(hx.metrics.score(table, truth))["pearson"] > 0
    # no spots to check the map on or fit the dispersion to: the training spots' dispersion, and an upper bound
    assert meta["trust"]["dispersion"] == "training spots" and not meta["trust"]["checked_on_spots"]
    np.testing.assert_allclose(table.var["dispersion"], trained._trained.dispersion, rtol=1e-6)
    assert "spot_consistency" not in table.var
    np.testing.assert_array_equal(table.var["reliability"], table.var["expected_pearson"])
    assert (np.asarray(table.layers["lower90"]) <= np.asarray(table.layers["upper90"])).all()
    fig = figure_of(
        hx.pl.genes(section_d, trained.genes[0], truth_key="truth", show=False)
    )  # no spots to draw: truth and bins only
    assert [ax.get_title().split(":")[0].split("\n")[-1] for ax in fig.axes[:2]] != ["", ""]
    assert not any("spots" in ax.get_title() for ax in fig.axes)


def test_withheld_context_for_he_only_slides(family, section_d, tmp_path):
    """The other way to predict without spots: the fused network trained with a share of windows that see no
    expression, predicting with none."""
    model = hx.HistexModel(**FAST, he_only="withheld").fit(family[:2], **QUIET)
    assert model._trained.image_ensemble is None
    model.predict(section_d, key_added="alone", use_spots=False, show_progress=False)
    table = section_d.tables["alone"]
    assert table.uns["histex"]["model"]["prediction"] == "withheld"
    assert table.obsm["X_histex"].shape[1] == 256 and np.abs(table.obsm["X_histex"]).max() > 0  # not zeros
    folder = model.save(tmp_path / "m")
    assert not list(folder.glob("image_state_*"))
    hx.HistexModel.load(folder, device="cpu").predict(section_d, key_added="again", use_spots=False,
                                                      show_progress=False)  # fmt: skip
    assert np.array_equal(_x(section_d, "alone"), _x(section_d, "again"))


def test_fine_tuning_continues_from_the_model(trained, section_d, tmp_path):
    folder = trained.save(tmp_path / "m")
    model = hx.HistexModel.load(folder, device="cpu")
    before = {k: v.clone() for k, v in model._trained.ensemble.params.items()}
    assert model.fine_tune(section_d, epochs=2, show_progress=False) is model
    after = model._trained.ensemble.params
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert model._trained.data["fine_tuned"][0]["name"] == "toy_D"
    assert model.history.shape == trained.history.shape  # the fit's history stays the fit's


# --- checkpoints ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_interrupted_fit_resumes_to_the_same_weights(family, tmp_path, monkeypatch):
    """Interrupt at epoch 2 of 4 (just after the checkpoint of epoch 2), resume: the weights of an uninterrupted
    fit, bit for bit, on the CPU (the image-only states too, trained after the fused ones)."""
    kw = {"epochs": 4, "n_states": 2, "holdout": 0.2, "patience": 10}
    sections = family[:2]
    whole = hx.HistexModel(**kw).fit(sections, **QUIET)

    real_save = Checkpoint.save

    def save_then_stop(self, state, *args):
        real_save(self, state, *args)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        hx.HistexModel(**kw).fit(sections, checkpoint_dir=tmp_path, checkpoint_every=2, **QUIET)
    monkeypatch.setattr(Checkpoint, "save", real_save)
    assert (tmp_path / "checkpoint.safetensors").is_file()
    assert not list(tmp_path.glob("*.partial"))
    resumed = hx.HistexModel(**kw).fit(sections, checkpoint_dir=tmp_path, checkpoint_every=2, **QUIET)
    for name, p in whole._trained.ensemble.params.items():
        assert torch.equal(p, resumed._trained.ensemble.params[name]), name
    for name, p in whole._trained.image_ensemble.params.items():
        assert torch.equal(p, resumed._trained.image_ensemble.params[name]), name
    assert (tmp_path / "image_states" / "checkpoint.safetensors").is_file()
    assert np.array_equal(whole._trained.history.loss, resumed._trained.history.loss)
    assert np.array_equal(whole._trained.history.validation, resumed._trained.history.validation)

    with pytest.raises(ValueError, match="checkpoint of another fit"):
        hx.HistexModel(**{**kw, "lr": 1e-3}).fit(sections, checkpoint_dir=tmp_path, **QUIET)


# --- bad input ---------------------------------------------------------------------------------------------------


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_load_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="not a saved histex model: it does not exist"):
        hx.HistexModel.load(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"has no manifest.json"):
        hx.HistexModel.load(tmp_path / "folder")


def test_load_refuses_a_newer_schema_and_damaged_weights(trained, tmp_path):
    folder = trained.save(tmp_path / "m")
    manifest = json.loads((folder / MANIFEST).read_text())
    newer = tmp_path / "newer"
    trained.save(newer)
    (newer / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ValueError, match=r"schema 99.*Upgrade histex"):
        hx.HistexModel.load(newer)

    truncated = tmp_path / "truncated"
    trained.save(truncated)
    weights = truncated / "state_1.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = _files(truncated)
    with pytest.raises(ValueError, match=r"state_1.safetensors is truncated or corrupt"):
        hx.HistexModel.load(truncated)
    assert _files(truncated) == before

    corrupt = tmp_path / "corrupt"
    trained.save(corrupt)
    data = bytearray((corrupt / "state_0.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (corrupt / "state_0.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"state_0.safetensors is truncated or corrupt"):
        hx.HistexModel.load(corrupt)


def test_save_onto_an_existing_folder(trained, tmp_path):
    folder = trained.save(tmp_path / "m")
    before = _files(folder)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(folder)
    assert _files(folder) == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="not a saved histex model; it is left alone"):
        trained.save(other, overwrite=True)
    assert (other / "data.csv").read_text() == "1,2"


def test_predict_before_fit_and_fit_on_nothing(section_d):
    model = hx.HistexModel()
    with pytest.raises(RuntimeError, match=r"not trained: call model.fit\(sdata\)"):
        model.predict(section_d)
    with pytest.raises(RuntimeError, match="not trained"):
        model.save("anywhere")
    with pytest.raises(ValueError, match="at least one SpatialData; got an empty list"):
        model.fit([])
    assert not model.is_trained and "histex" not in section_d.tables


def test_features_of_another_encoder_or_bin_size(trained, section_d):
    from helpers import fingerprint

    key = "toy_D_full_image_texture_features"
    cases = [
        ("model", "uni", "model='uni'"),
        ("weights_digest", "0" * 16, "weights_digest="),
        ("bin_size_um", 16.0, "bin_size_um=16.0"),
    ]
    for field, value, shown in cases:
        sdata = sd.deepcopy(section_d)
        sdata.attrs["histex"]["features"][key][field] = value
        before = fingerprint(sdata)
        with pytest.raises(ValueError, match=f"{shown}.*extract_features"):
            trained.predict(sdata, show_progress=False)
        assert fingerprint(sdata) == before


def test_spots_lacking_the_models_genes(trained, section_d):
    from helpers import fingerprint
    from spatialdata.models import TableModel

    fewer = section_d.tables["table"][:, 3:].copy()
    del fewer.uns["spatialdata_attrs"]
    section_d.tables["table"] = TableModel.parse(fewer, region="toy_D", region_key="region", instance_key="spot_id")
    before = fingerprint(section_d)
    with pytest.raises(ValueError, match=r"lacks 3 of the model's 12 genes.*use_spots=False predicts from the image"):
        trained.predict(section_d, use_spots=True, show_progress=False)
    assert fingerprint(section_d) == before
    trained.predict(section_d, show_progress=False)  # "auto": from the image, with a warning
    assert not section_d.tables["histex"].uns["histex"]["params"]["use_spots"]


def test_sections_whose_genes_barely_overlap(family):
    from spatialdata.models import TableModel

    a, b = sd.deepcopy(family[0]), sd.deepcopy(family[1])
    table = b.tables["table"].copy()
    table.var_names = [f"other_{g}" if i >= 3 else g for i, g in enumerate(table.var_names)]
    del table.uns["spatialdata_attrs"]
    b.tables["table"] = TableModel.parse(table, region="toy_B", region_key="region", instance_key="spot_id")
    model = hx.HistexModel(epochs=1, n_states=1, he_only="none")
    with pytest.raises(ValueError, match=r"share only 3 genes.*genes=\["):
        model.fit([a, b], **QUIET)
    with pytest.raises(ValueError, match="not in the table of section 1"):
        model.fit([a, b], genes=[str(g) for g in a.tables["table"].var_names[:5]], **QUIET)
    assert not model.is_trained
    model.fit([a, b], genes=[str(g) for g in a.tables["table"].var_names[:3]], **QUIET)
    assert model.genes == [str(g) for g in a.tables["table"].var_names[:3]]


def test_model_without_he_only_needs_spots(family, section_d):
    model = hx.HistexModel(epochs=1, n_states=1, he_only="none").fit(family[0], **QUIET)
    with pytest.raises(ValueError, match=r"he_only='none'.*HistexModel\(he_only='image_states'\)"):
        model.predict(section_d, use_spots=False, show_progress=False)
    assert "histex" not in section_d.tables
