"""histex.sim.vary_stain: more or less haematoxylin and eosin in an H&E image, by colour deconvolution."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from skimage.color import rgb2hed

import histex as hx

NUCLEI = [(40, 40), (100, 40), (40, 100), (100, 100), (160, 70)]  # centres, radius 8 px


@pytest.fixture(scope="module")
def painted():
    """Stroma with nuclei on glass, and a pure white corner (rows 0-9, columns 190-199)."""
    nuclei = gpd.GeoDataFrame(
        {"class_name": ["inflammatory", "neoplastic", "connective", "inflammatory", "neoplastic"]},
        geometry=[shapely.Point(p).buffer(8) for p in NUCLEI],
    )
    tissue = gpd.GeoDataFrame({"class_name": ["stroma"]}, geometry=[shapely.box(10, 10, 180, 130)])
    image = hx.sim.paint_he(nuclei, tissue, bounds=(0, 0, 200, 150), mpp=0.5)
    image[:10, 190:] = 255
    return image


def _masks(image):
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]] + 0.5
    near = np.min([np.hypot(xx - x, yy - y) for x, y in NUCLEI], axis=0)
    stroma = np.zeros(image.shape[:2], bool)
    stroma[14:126, 14:176] = True
    return near < 5, stroma & (near > 12)  # nucleus cores, stroma away from the nuclei


def _mean_hed(image, mask):
    return rgb2hed(image)[mask].mean(axis=0)


def test_factors_of_one_return_the_image_exactly(painted):
    out = hx.sim.vary_stain(painted)
    assert out.dtype == np.uint8 and out.shape == painted.shape
    np.testing.assert_array_equal(out, painted)
    assert out is not painted


def test_white_stays_white_and_shape_and_dtype_are_kept(painted):
    for h, e in [(1.3, 0.7), (0.6, 1.4), (2.0, 2.0)]:
        out = hx.sim.vary_stain(painted, haematoxylin=h, eosin=e)
        assert out.shape == painted.shape and out.dtype == np.uint8
        assert (out[:10, 190:] == 255).all()
    black = np.zeros((4, 5, 3), np.uint8)
    np.testing.assert_array_equal(hx.sim.vary_stain(black, haematoxylin=1.2), black)


def test_more_haematoxylin_makes_nuclei_darker_and_scales_their_haematoxylin(painted):
    nuclei, _ = _masks(painted)
    out = hx.sim.vary_stain(painted, haematoxylin=1.2)
    before, after = _mean_hed(painted, nuclei), _mean_hed(out, nuclei)
    assert after[0] / before[0] == pytest.approx(1.2, rel=0.02)  # the haematoxylin optical density follows
    assert after[1] == pytest.approx(before[1], rel=0.05)  # the eosin stays
    assert out[nuclei].astype(float).sum() < painted[nuclei].astype(float).sum()  # darker
    r0, _, b0 = painted[nuclei].astype(float).mean(0)
    r1, _, b1 = out[nuclei].astype(float).mean(0)
    assert r1 / b1 < r0 / b0  # bluer
    less = hx.sim.vary_stain(painted, haematoxylin=0.8)
    assert _mean_hed(less, nuclei)[0] / before[0] == pytest.approx(0.8, rel=0.02)
    assert less[nuclei].astype(float).sum() > painted[nuclei].astype(float).sum()  # paler


def test_eosin_changes_the_stroma_not_the_nuclear_haematoxylin(painted):
    nuclei, stroma = _masks(painted)
    out = hx.sim.vary_stain(painted, eosin=1.2)
    before, after = _mean_hed(painted, stroma), _mean_hed(out, stroma)
    assert after[1] / before[1] == pytest.approx(1.2, rel=0.02)
    assert out[stroma, 1].mean() < painted[stroma, 1].mean() - 3  # pinker: eosin absorbs green most
    assert _mean_hed(out, nuclei)[0] == pytest.approx(_mean_hed(painted, nuclei)[0], rel=0.05)


def test_strips_give_the_same_image_as_one_piece(painted, monkeypatch):
    whole = hx.sim.vary_stain(painted, haematoxylin=1.15, eosin=0.9)
    monkeypatch.setattr("histex.sim._stain._STRIP_PX", 7 * painted.shape[1])  # strips of 7 rows, a ragged last
    np.testing.assert_array_equal(hx.sim.vary_stain(painted, haematoxylin=1.15, eosin=0.9), whole)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1.2", None, True])
def test_bad_factor_names_the_fix(painted, bad):
    with pytest.raises(ValueError, match="haematoxylin must be a positive number \\(1 keeps the stain"):
        hx.sim.vary_stain(painted, haematoxylin=bad)
    with pytest.raises(ValueError, match="eosin must be a positive number"):
        hx.sim.vary_stain(painted, eosin=bad)


def test_bad_image():
    with pytest.raises(ValueError, match="must be \\(y, x, 3\\) RGB"):
        hx.sim.vary_stain(np.zeros((3, 8, 8), np.uint8), haematoxylin=1.1)
    with pytest.raises(ValueError, match="must be uint8"):
        hx.sim.vary_stain(np.zeros((8, 8, 3), np.float32), haematoxylin=1.1)
