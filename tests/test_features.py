import numpy as np
import pytest
import spatialdata as sd
from helpers import encode_image, fingerprint

import histex as hx
from histex import geometry
from histex.encoders import TextureEncoder
from histex.pp._image import resample


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.73])
def test_feature_grid_lies_on_the_bins_it_describes(mpp):
    sdata = hx.datasets.toy(size_um=480, n_genes=20, mpp=mpp, seed=2)
    before = fingerprint(sdata)
    key = hx.pp.extract_features(sdata, show_progress=False)
    assert key == "toy_full_image_texture_features"
    assert set(fingerprint(sdata)["keys"]) - set(before["keys"]) == {
        f"images/{key}",
        "labels/toy_full_image_texture_tissue",
    }
    feats = sdata.images[key]
    image = hx._sdata.image_array(sdata, "toy_full_image")
    shape = (image.sizes["y"], image.sizes["x"])
    grid = geometry.BinGrid.for_image(shape, mpp=mpp, bin_size_um=8)
    assert feats.shape[1:] == grid.shape
    assert list(feats.coords["c"].values[-3:]) == ["mean_r", "mean_g", "mean_b"]
    assert feats.shape[0] == len(TextureEncoder().feature_names) + 3
    # the element's transformation maps bin (r, c) onto the square that the bin grid assigns it, in image pixels
    t = sd.transformations.get_transformation(feats, to_coordinate_system="toy")
    affine = np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))
    r, c = 5, 9
    corner = affine @ np.array([c, r, 1.0])
    far = affine @ np.array([c + 1, r + 1, 1.0])
    assert np.allclose([*corner[:2], *far[:2]], grid.boxes_px([r], [c])[0])
    # the mean colour of a bin is the mean of the pixels whose centres lie in its square
    rgb = np.asarray(image.transpose("y", "x", "c").data)
    x0, y0, x1, y1 = grid.boxes_px([r], [c])[0]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    expected = rgb[inside].mean(0) / 255
    got = np.asarray(feats.sel(c=["mean_r", "mean_g", "mean_b"]).data[:, r, c])
    # at 0.25 µm/px the pyramid's 0.5 µm/px level is read: block means stored as uint8, within one grey level
    assert np.allclose(got, expected, atol=1e-5 if mpp >= 0.5 else 1 / 255)
    # tissue mask on the same grid and placement
    mask = sdata.labels["toy_full_image_texture_tissue"]
    assert mask.shape == grid.shape
    t_mask = sd.transformations.get_transformation(mask, to_coordinate_system="toy")
    assert np.allclose(t_mask.to_affine_matrix(("x", "y"), ("x", "y")), affine)


def test_tissue_mask_agrees_with_the_planted_tissue(small_toy):
    mask = np.asarray(small_toy.labels["toy_full_image_texture_tissue"].data) > 0
    truth = small_toy.tables["truth"].obs
    planted = np.zeros(mask.shape, bool)
    inside = truth["in_tissue"].to_numpy()
    planted[truth["array_row"].to_numpy()[inside], truth["array_col"].to_numpy()[inside]] = True
    agreement = (mask == planted).mean()
    assert agreement > 0.95
    assert 0.2 < mask.mean() < 0.95


def test_features_separate_compartments(small_toy):
    """Haematoxylin is higher in immune aggregates (packed nuclei) than in stroma."""
    feats = small_toy.images["toy_full_image_texture_features"]
    truth = small_toy.tables["truth"].obs
    h = np.asarray(feats.sel(c="hematoxylin_mean").data)
    comp = truth["compartment"].astype(str).to_numpy()
    rows, cols = truth["array_row"].to_numpy(), truth["array_col"].to_numpy()
    pure = truth["tissue_fraction"].to_numpy() > 0.99
    immune = h[rows[(comp == "immune") & pure], cols[(comp == "immune") & pure]].mean()
    stroma = h[rows[(comp == "stroma") & pure], cols[(comp == "stroma") & pure]].mean()
    assert immune > stroma + 0.05


def test_encoder_sees_tile_borders_seamlessly():
    """Features of a bin do not depend on where the tile borders fall (the encoder's margin covers its context)."""
    rng = np.random.default_rng(0)
    image = (rng.random((200, 200, 3)) * 255).astype(np.uint8)
    grid = geometry.BinGrid.for_image((200, 200), mpp=0.5, bin_size_um=8)
    a = encode_image(image, grid, TextureEncoder(tile_size=64), mpp=0.5, bin_size_um=8, show_progress=False)
    b = encode_image(image, grid, TextureEncoder(tile_size=112), mpp=0.5, bin_size_um=8, show_progress=False)
    assert a.shape == b.shape == (len(TextureEncoder().feature_names), 12, 12)
    assert np.allclose(a, b, atol=1e-4)


def test_resample_keeps_pixel_grid_aligned():
    # a vertical edge at 40 µm: at 0.25 µm/px it is pixel 160, at 0.5 µm/px pixel 80
    image = np.zeros((320, 320, 3), np.uint8)
    image[:, 160:] = 255
    half = resample(image, 0.5)
    assert half.shape == (160, 160, 3)
    assert (half[:, :80] == 0).all() and (half[:, 80:] == 255).all()
    f = 0.5 / 0.73  # a non-integer factor: the edge must stay at input pixel 80
    up = resample(half, f)
    edge = np.argmax(up[0, :, 0] > 127)
    assert abs(edge / f - 80) <= 1.5


def test_unknown_model_lists_available(small_toy):
    with pytest.raises(
        ValueError, match="available models: gigapath, h-optimus-0, h-optimus-1, resnet50, texture, uni, uni2-h"
    ):
        hx.pp.extract_features(sd.deepcopy(small_toy), model="nope")


class MeanColour(hx.encoders.Encoder):
    """A user's encoder: 14 px patches (like a ViT/14), the mean colour of each patch."""

    name = "meancolour"
    patch_size = 14
    tile_size = 56

    @property
    def feature_names(self):
        return ["r", "g", "b"]

    def encode(self, tiles):
        b, c, h, w = tiles.shape
        return (tiles.float() / 255).reshape(b, c, h // 14, 14, w // 14, 14).mean(dim=(3, 5))


def test_a_user_encoder_plugs_in(small_toy):
    sdata = sd.deepcopy(small_toy)
    key = hx.pp.extract_features(sdata, model=MeanColour(), mpp=0.5, show_progress=False)
    assert key == "toy_full_image_meancolour_features"
    feats = sdata.images[key]
    assert list(feats.coords["c"].values) == ["r", "g", "b", "mean_r", "mean_g", "mean_b"]
    # 14 px patches at 8 / 14 µm/px: the encoder's colour of a bin matches the bin's mean colour at full resolution
    ours = np.asarray(feats.data[:3]).reshape(3, -1)
    direct = np.asarray(feats.data[3:]).reshape(3, -1)
    assert np.corrcoef(ours[1], direct[1])[0, 1] > 0.98
    # two feature sets for one image: super_resolve asks which
    with pytest.raises(ValueError, match="Several feature sets"):
        hx.tl.super_resolve(sdata, epochs=1, n_states=1, show_progress=False)


def test_invalid_mpp_is_an_error(small_toy):
    sdata = sd.deepcopy(small_toy)
    before = fingerprint(sdata)
    with pytest.raises(ValueError, match="mpp must be > 0"):
        hx.pp.extract_features(sdata, mpp=-1.0, show_progress=False)
    assert fingerprint(sdata) == before
