"""Every public function checks its parameters before any work: a bad value is refused with an error that names the
parameter and what it accepts, and the SpatialData is left as it was. One test per family of functions."""

import warnings

import numpy as np
import pytest
import spatialdata as sd
import torch
from helpers import fingerprint

import histex as hx
from histex import _validation as v
from histex._device import PRECISIONS, native_bfloat16, resolve_device, resolve_precision

FAST = {"epochs": 1, "n_states": 1, "show_progress": False, "device": "cpu", "n_top_genes": 5}
BAD = (ValueError, TypeError, KeyError)


def _refused(function, sdata, match, **kwargs):
    before = fingerprint(sdata)
    with pytest.raises(BAD, match=match):
        function(sdata, **kwargs)
    assert fingerprint(sdata) == before


@pytest.fixture(scope="module")
def predicted(small_toy):
    """The small toy, super-resolved, annotated and with cells: what the downstream tools read."""
    sdata = sd.deepcopy(small_toy)
    hx.tl.super_resolve(sdata, **{**FAST, "n_top_genes": 20, "epochs": 2, "n_states": 2})
    hx.pp.segment_nuclei(sdata, show_progress=False)
    hx.tl.annotate(sdata, n_domains=3)
    return sdata


def test_validators():
    assert v.check_int("n", 3.0) == 3 and isinstance(v.check_int("n", np.int64(4)), int)
    for bad, error in ((True, TypeError), (1.5, TypeError), ("3", TypeError), (0, ValueError)):
        with pytest.raises(error, match="n must be"):
            v.check_int("n", bad)
    assert v.check_int("n", None, none_ok=True) is None
    assert v.check_number("x", 1) == 1.0
    for bad in (0.0, 1.0, float("nan"), float("inf")):
        with pytest.raises((ValueError, TypeError), match="x must be"):
            v.check_number("x", bad, minimum=0, maximum=1, above=True, below=True)
    with pytest.raises(ValueError, match=r"x must be in \(0, 1\), got 1.0"):
        v.check_number("x", 1.0, minimum=0, maximum=1, above=True, below=True)
    assert v.check_genes(["A", "B"]) == ["A", "B"] and v.check_genes(None) is None
    with pytest.raises(ValueError, match="names A more than once"):
        v.check_genes(["A", "B", "A"])
    with pytest.raises(TypeError, match=r"for one gene pass \['A'\]"):
        v.check_genes("A")
    with pytest.raises(ValueError, match="is empty"):
        v.check_genes([])
    for name in ("", "__x", "a b", "a/b", ".."):
        with pytest.raises(ValueError, match="not a valid element name"):
            v.check_key("key_added", name)
    with pytest.raises(TypeError, match="key_added must be a string"):
        v.check_key("key_added", 1)
    assert v.check_bool("b", np.bool_(True)) is True and v.check_bool("b", 0) is False
    assert v.check_choice("use_spots", np.True_, ("auto", True, False)) is True
    with pytest.raises(TypeError, match="b must be True or False"):
        v.check_bool("b", "no")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        v.check_seed(-1)


def test_integral_floats_are_taken_as_integers():
    sdata = hx.datasets.toy(size_um=300, n_genes=20.0)
    assert sdata.tables["table"].n_vars == 20


def test_one_precision_resolver(monkeypatch):
    """One tuple, one meaning of "auto" for encoders and training: bfloat16 where the hardware has it, else float32."""
    cpu = torch.device("cpu")
    assert PRECISIONS == ("auto", "float32", "bfloat16", "float16")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr("histex._device.native_bfloat16", lambda device, n=native: n)
        assert resolve_precision("auto", cpu) == expected
        assert resolve_precision("auto", cpu, training=True) == expected
    assert resolve_precision("float16", cpu) == torch.float16
    with pytest.raises(ValueError, match="cannot train"):
        resolve_precision("float16", cpu, training=True)
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'float32', 'bfloat16', 'float16'"):
        resolve_precision("half", cpu)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'"):
        resolve_device("tpu")
    # on CUDA, natively from compute capability 8 (Ampere) on: older GPUs only emulate bfloat16, slowly
    monkeypatch.undo()
    for capability, native in (((7, 0), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert native_bfloat16(torch.device("cuda")) is native


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # the cases, tried as a new user would
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"k_context": 0}, "k_context must be >= 1, got 0"),
        ({"genes": ["Epi_01", "Epi_01"]}, "names Epi_01 more than once"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"device": "tpu"}, "device must be 'cpu', 'cuda'"),
        # and the rest of the family
        ({"epochs": 1.5}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"genes": []}, "genes is empty"),
        ({"genes": "Epi_01"}, "for one gene pass"),
        ({"n_top_genes": 0}, "n_top_genes must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"n_states": 0}, "n_states must be >= 1"),
        ({"stride": 0}, "stride must be >= 1"),
        ({"spot_diameter_um": 0}, "spot_diameter_um must be > 0"),
        ({"bin_size_um": -8}, "bin_size_um must be > 0"),
        ({"mpp": 0}, "mpp must be > 0"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"targets": "log"}, "targets must be one of 'minmax', 'log1p'"),
        ({"key_added": ""}, "not a valid element name"),
        ({"key_added": 1}, "key_added must be a string"),
        ({"show_progress": "no"}, "show_progress must be True or False"),
        ({"to_store": "yes"}, "to_store must be True or False"),
        ({"layer": "counts"}, "No layer 'counts'"),
    ],
)
def test_super_resolve_parameters(small_toy, kwargs, match):
    toy = sd.deepcopy(small_toy)
    _refused(hx.tl.super_resolve, toy, match, **{**FAST, **kwargs})


def test_model_parameters(small_toy):
    with pytest.raises(ValueError, match="heads"):
        hx.HistexModel(dim=100, heads=8)
    with pytest.raises(TypeError, match="match_spots must be True or False"):
        hx.HistexModel(match_spots="yes")
    with pytest.raises(ValueError, match="hidden needs at least one layer"):
        hx.HistexModel(hidden=())
    model = hx.HistexModel(epochs=1, n_states=1).fit(small_toy, genes=["Epi_01", "Imm_01"], show_progress=False)
    toy = sd.deepcopy(small_toy)
    _refused(model.predict, toy, "use_spots must be one of", use_spots="yes", show_progress=False)
    _refused(model.predict, toy, "refit_readout must be True or False or None", refit_readout=2, show_progress=False)
    _refused(model.predict, toy, "not a valid element name", key_added="a b", show_progress=False)
    _refused(model.fine_tune, toy, "epochs must be >= 1", epochs=0)
    _refused(model.fine_tune, toy, "lr must be > 0", lr=-1.0)


def test_extract_features_parameters(small_toy):
    toy = sd.deepcopy(small_toy)
    for kwargs, match in (
        ({"n_shifts": 2.5}, "n_shifts must be an integer"),
        ({"patch_size": 0}, "patch_size must be >= 1"),
        ({"tile_size": 0}, "tile_size must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"compile": "yes"}, "compile must be True or False"),
        ({"overwrite": 2}, "overwrite must be True or False"),
        ({"key_added": ""}, "not a valid element name"),
        ({"bin_size_um": 0}, "bin_size_um must be > 0"),
        ({"precision": "half"}, "precision must be one of"),
        ({"device": "tpu"}, "device must be"),
    ):
        _refused(hx.pp.extract_features, toy, match, show_progress=False, **kwargs)


def test_segment_nuclei_parameters(predicted):
    sdata = sd.deepcopy(predicted)
    for kwargs, match in (
        ({"to_store": "yes"}, "to_store must be True or False"),
        ({"to_store": True}, "needs a SpatialData backed by a zarr store"),
        ({"method": "cellpose"}, "method must be None"),
        ({"threshold": 0}, "threshold must be > 0"),
        ({"min_area_um2": -1}, "min_area_um2 must be >= 0"),
        ({"block_px": 10}, "block_px must be >= 64"),
        ({"key_added": ""}, "not a valid element name"),
        ({"threshold": 50.0, "key_added": "nuclei"}, "No nucleus found"),  # nothing to keep: the old nuclei stay
    ):
        _refused(hx.pp.segment_nuclei, sdata, match, show_progress=False, **kwargs)
    assert len(sdata.shapes["nuclei"]) == len(predicted.shapes["nuclei"])


def test_downstream_tool_parameters(predicted):
    sdata = sd.deepcopy(predicted)
    genes = list(sdata.tables["histex"].var_names)
    sets = {"a": genes[:5], "b": genes[5:10], "c": genes[10:15]}
    cases = [
        (hx.tl.to_cells, {"cells_key": "nuclei", "expand_um": "1"}, "expand_um must be a number"),
        (hx.tl.to_cells, {"cells_key": "nuclei", "expand_um": -1}, "expand_um must be >= 0"),
        (hx.tl.to_cells, {"cells_key": "nuclei", "key_added": ""}, "not a valid element name"),
        (hx.tl.to_cells, {"cells_key": "nuclei", "to_store": "x"}, "to_store must be True or False"),
        (hx.tl.annotate, {"n_domains": 2.5}, "n_domains must be an integer"),
        (hx.tl.annotate, {"smooth": -1}, "smooth must be >= 0"),
        (hx.tl.annotate, {"markers": ["a"]}, "markers must be a dict"),
        (hx.tl.annotate, {"markers": {"a": "Epi_01"}}, r"markers\['a'\] must be a list"),
        (hx.tl.annotate, {"min_score": "x"}, "min_score must be a number"),
        (hx.tl.annotate, {"boundary": "x"}, "boundary must be True or False"),
        (hx.tl.annotate, {"n_pcs": 0}, "n_pcs must be >= 1"),
        (hx.tl.annotate, {"genes": [genes[0], genes[0]]}, "more than once"),
        (hx.tl.annotate, {"genes": genes[0]}, "for one gene pass"),
        (hx.tl.annotate, {"seed": -1}, "seed must be a non-negative integer"),
        (hx.tl.annotate, {"key_added": ""}, "not a valid element name"),
        (hx.tl.annotate, {"layer": "x"}, "No layer 'x'"),
        (hx.tl.enrich, {"gene_sets": sets, "min_size": 0}, "min_size must be >= 1"),
        (hx.tl.enrich, {"gene_sets": sets, "layer": "x"}, "No layer 'x'"),
        (hx.tl.enrich, {"gene_sets": sets, "bin_scores": "x"}, "bin_scores must be True or False"),
        (hx.tl.enrich, {"gene_sets": sets, "n_markers": 0}, "n_markers must be >= 1"),
        (hx.tl.enrich, {"gene_sets": sets, "method": "gsea"}, "method must be one of 'ora'"),
        (hx.tl.enrich, {"gene_sets": sets, "key_added": ""}, "not a valid element name"),
        (hx.tl.spatial_patterns, {"genes": [genes[0], genes[0]]}, "more than once"),
        (hx.tl.spatial_patterns, {"key_added": ""}, "not a valid element name"),
        (hx.tl.predictive_interval, {"level": "0.9"}, "level must be a number"),
        (hx.tl.predictive_interval, {"level": 1.0}, r"level must be in \(0, 1\)"),
    ]
    for function, kwargs, match in cases:
        _refused(function, sdata, match, **kwargs)


def test_user_fixable_problems_warn_at_the_users_line(predicted):
    """A problem the user can fix is a warning pointing at their own call (not a log line inside histex)."""
    genes = list(predicted.tables["histex"].var_names)
    sdata = sd.deepcopy(predicted)
    with pytest.warns(UserWarning, match="Marker genes not in the table") as caught:
        hx.tl.annotate(sdata, n_domains=3, markers={"a": [genes[0], "NOT_A_GENE"], "b": [genes[1]]})
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hx.tl.annotate(sdata, n_domains=3, markers={"a": [genes[0]], "b": [genes[1]]})


def test_tables_carry_a_schema_version(predicted):
    """uns["histex"] says which layout it has; a table of a newer layout is read with a warning to upgrade."""
    from histex._tables import SCHEMA_VERSION, histex_record

    sdata = sd.deepcopy(predicted)
    hx.tl.to_cells(sdata, cells_key="nuclei")
    for key in ("histex", "histex_cells"):
        assert sdata.tables[key].uns["histex"]["schema_version"] == SCHEMA_VERSION == 1
    table = sdata.tables["histex"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert histex_record(table, "params")["variant"] == "histex"
    table.uns["histex"]["schema_version"] = SCHEMA_VERSION + 1
    with pytest.warns(UserWarning, match="written by a newer histex"):
        hx.pl.history(sdata, show=False)
