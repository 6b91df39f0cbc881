"""Each bad input gets an error that says what is wrong and how to fix it, and leaves the SpatialData as it was."""

import numpy as np
import pytest
import spatialdata as sd
from helpers import fingerprint
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity, Translation, set_transformation

import histex as hx

FAST = {"epochs": 1, "n_states": 1, "show_progress": False, "device": "cpu", "n_top_genes": 5}


def _fails(sdata, match, **kwargs):
    before = fingerprint(sdata)
    with pytest.raises((ValueError, KeyError), match=match):
        hx.tl.super_resolve(sdata, **{**FAST, **kwargs})
    assert fingerprint(sdata) == before


@pytest.fixture
def toy(small_toy):
    return sd.deepcopy(small_toy)


def test_no_image(toy):
    del toy.images["toy_full_image"]
    _fails(toy, "has no image")


def test_several_images_and_no_key(toy):
    toy.images["other_full_image"] = toy.images["toy_full_image"]
    _fails(toy, r"Several images.*image_key")


def test_only_downscaled_images_are_refused(toy):
    toy.images["toy_hires_image"] = toy.images.pop("toy_full_image")
    _fails(toy, "need the full-resolution")


def test_spots_not_circles(toy):
    polygons = toy.shapes["toy"].copy()
    polygons["geometry"] = polygons.geometry.buffer(10)
    polygons = polygons.drop(columns="radius")
    toy.shapes["toy"] = ShapesModel.parse(polygons)
    _fails(toy, "No spot circles found")
    _fails(toy, "are not circles", spots_key="toy")


def test_spots_without_radius(toy):
    # spatialdata refuses such an element on assignment, so take the column away in place, as a user's code might
    toy.shapes["toy"].drop(columns="radius", inplace=True)
    _fails(toy, "No spot circles found")
    _fails(toy, "have no 'radius' column", spots_key="toy")


def test_table_does_not_annotate_spots(toy):
    table = toy.tables["table"].copy()
    del table.uns["spatialdata_attrs"]
    table.obs["region"] = "elsewhere"
    toy.tables["table"] = TableModel.parse(table, region="elsewhere", region_key="region", instance_key="spot_id")
    _fails(toy, "No table annotates the spot circles")
    _fails(toy, "does not annotate the spots", table_key="table")


def test_table_instances_missing_from_spots(toy):
    toy.shapes["toy"] = toy.shapes["toy"].iloc[5:]
    _fails(toy, "not in shapes 'toy'")


def test_requested_genes_absent(toy):
    _fails(toy, "2 requested gene.*NOPE1, NOPE2", genes=["Epi_01", "NOPE1", "NOPE2"])


@pytest.mark.parametrize(("value", "match"), [(-1.0, "negative"), (np.nan, "NaN")])
def test_negative_or_nan_counts(toy, value, match):
    table = toy.tables["table"]
    x = table.X.toarray()
    x[3, 2] = value
    table.X = x
    _fails(toy, match)


def test_different_coordinate_systems(toy):
    set_transformation(toy.shapes["toy"], {"other": Identity()}, set_all=True)
    _fails(toy, "share no coordinate system")


def test_spots_outside_the_image(toy):
    set_transformation(toy.shapes["toy"], Translation([5000.0, 0.0], axes=("x", "y")), to_coordinate_system="toy")
    _fails(toy, "outside the image")


def test_fewer_than_ten_spots(toy):
    keep = toy.tables["table"].obs["spot_id"].to_numpy()[:6]
    toy.tables["table"] = toy.tables["table"][:6].copy()
    toy.shapes["toy"] = toy.shapes["toy"].loc[keep]
    _fails(toy, "Only 6 spots")


def test_mpp_not_derivable(toy):
    gdf = toy.shapes["toy"]
    rng = np.random.default_rng(0)
    xy = rng.uniform(100, 1300, size=(len(gdf), 2))  # scattered: no lattice to read a pitch from
    toy.shapes["toy"] = ShapesModel.parse(
        xy, geometry=0, radius=gdf["radius"].to_numpy(), index=gdf.index, transformations={"toy": Identity()}
    )
    _fails(toy, "Pass mpp=")


def test_features_missing(toy):
    del toy.images["toy_full_image_texture_features"]
    _fails(toy, "run histex.pp.extract_features")


def test_features_on_another_grid(toy):
    _fails(toy, "Run histex.pp.extract_features with the same bin_size_um", bin_size_um=16)


def test_unknown_variant_and_device(toy):
    _fails(toy, "variant must be one of", variant="istar")
    import torch

    if not torch.cuda.is_available():
        _fails(toy, "no CUDA device", device="cuda")


def test_a_few_spots_just_past_the_edge(toy):
    gdf = toy.shapes["toy"]
    xy = np.stack([gdf.geometry.x, gdf.geometry.y], 1)
    xy[:3, 0] = 1440 + 5  # three spots a few pixels beyond the right edge of the 1440 px image
    toy.shapes["toy"] = ShapesModel.parse(
        xy, geometry=0, radius=gdf["radius"].to_numpy(), index=gdf.index, transformations={"toy": Identity()}
    )
    _fails(toy, "3 of .* spot centres lie outside the image")


@pytest.mark.parametrize("key", ["toy", "table", "toy_full_image", "truth"])
def test_key_added_naming_an_input_element(toy, key):
    _fails(toy, "names an element of the input", key_added=key)


def test_key_added_replaces_an_earlier_result(toy):
    hx.tl.super_resolve(toy, key_added="again", **FAST)
    first = toy.tables["again"].uns["histex"]["params"]["seed"]
    hx.tl.super_resolve(toy, key_added="again", **{**FAST, "seed": 7})
    assert first == 0 and toy.tables["again"].uns["histex"]["params"]["seed"] == 7


def test_missing_layer(toy):
    _fails(toy, "No layer 'counts'.*layer=None", layer="counts")


def test_negative_counts_in_a_sparse_layer(toy):
    import scipy.sparse as sp

    x = sp.csr_matrix(toy.tables["table"].X, dtype=np.float32, copy=True)
    x.data[5] = -2.0
    toy.tables["table"].layers["counts"] = x
    _fails(toy, "negative values", layer="counts")


def test_extract_features_bad_input(small_toy):
    """extract_features validates like super_resolve, and writes nothing on error."""
    toy = sd.deepcopy(small_toy)
    for key in list(toy.images):
        del toy.images[key]
    before = fingerprint(toy)
    with pytest.raises(ValueError, match="has no image"):
        hx.pp.extract_features(toy, show_progress=False)
    assert fingerprint(toy) == before

    toy = sd.deepcopy(small_toy)
    set_transformation(toy.shapes["toy"], {"other": Identity()}, set_all=True)
    before = fingerprint(toy)
    with pytest.raises(ValueError, match="share no coordinate system"):
        hx.pp.extract_features(toy, show_progress=False)
    assert fingerprint(toy) == before

    toy = sd.deepcopy(small_toy)
    gdf = toy.shapes["toy"]
    xy = np.random.default_rng(0).uniform(100, 1300, size=(len(gdf), 2))
    toy.shapes["toy"] = ShapesModel.parse(
        xy, geometry=0, radius=gdf["radius"].to_numpy(), index=gdf.index, transformations={"toy": Identity()}
    )
    before = fingerprint(toy)
    with pytest.raises(ValueError, match="Pass mpp="):
        hx.pp.extract_features(toy, show_progress=False)
    assert fingerprint(toy) == before
    # with the pixel size given, no spots are needed
    assert hx.pp.extract_features(toy, mpp=0.5, show_progress=False).endswith("_features")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"holdout": 1.0}, "holdout must be in"),
        ({"holdout": -0.1}, "holdout must be in"),
        ({"patience": 0}, "patience must be >= 1"),
        ({"precision": "float16"}, "cannot train"),
        ({"precision": "half"}, "precision must be one of"),
        ({"feature_components": 10_000}, "n_components must be between"),
    ],
)
def test_bad_training_settings(toy, kwargs, match):
    _fails(toy, match, **kwargs)
