"""Families of four sections for the transfer benchmark: one set of expression programmes, layouts and stains differ."""

import numpy as np
import pandas as pd
import pytest
from skimage.color import rgb2hed

from histex._bench import FAMILY_STAINS, SECTIONS, load_family, representative_windows
from histex._sdata import image_array
from histex.datasets import toy
from histex.sim import vary_stain
from histex.sim._slide import densest_window, densest_windows


def _image(sdata) -> np.ndarray:
    (key,) = sdata.images
    return np.moveaxis(np.asarray(image_array(sdata, key).data), 0, -1)


def _check_shared_programmes(sections, name):
    first = sections[0]
    assert [s.coordinate_systems for s in sections] == [[f"{name}_{letter}"] for letter in SECTIONS]
    for sdata in sections:
        truth = sdata.tables["truth"]
        assert list(truth.var_names) == list(first.tables["truth"].var_names)
        assert list(sdata.tables["table"].var_names) == list(truth.var_names)
        pd.testing.assert_frame_equal(truth.uns["programmes"], first.tables["truth"].uns["programmes"])
        assert {"array_row", "array_col", "in_tissue"} <= set(truth.obs.columns)  # what metrics.score matches on


@pytest.fixture(scope="module")
def toy_family():
    return load_family("toy", toy_size_um=500, n_genes=20, seed=0)


def test_toy_family_shares_programmes_not_layout_or_stain(toy_family):
    assert len(toy_family) == 4
    _check_shared_programmes(toy_family, "toy")
    for i, sdata in enumerate(toy_family):
        family = sdata.tables["truth"].uns["family"]
        assert family == {"name": "toy", "section": SECTIONS[i], "seed": i, "programme_seed": 0,
                          "stain": list(FAMILY_STAINS[i])}  # fmt: skip
        assert sdata.tables["truth"].uns["toy"]["stain"] == list(FAMILY_STAINS[i])
    spots = [s.tables["table"].obsm["spatial"] for s in toy_family]
    compartments = [s.tables["truth"].obs["compartment"].to_numpy()[:1000] for s in toy_family]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(spots[i][:5], spots[j][:5])
            assert not np.array_equal(compartments[i], compartments[j])
    # each image is the section's plain toy image with its stain factors; its nuclear haematoxylin follows them
    for i, (sdata, (h, e)) in enumerate(zip(toy_family, FAMILY_STAINS, strict=True)):
        plain = _image(toy(size_um=500, n_genes=20, seed=i, programme_seed=0, dataset_id=f"toy_{SECTIONS[i]}"))
        image = _image(sdata)
        np.testing.assert_array_equal(image, vary_stain(plain, haematoxylin=h, eosin=e))
        nuclear = plain.astype(int).sum(-1) < 350
        ratio = rgb2hed(image[nuclear][None])[0, :, 0].mean() / rgb2hed(plain[nuclear][None])[0, :, 0].mean()
        assert ratio == pytest.approx(h, rel=0.03)


def test_family_stains_are_checked():
    with pytest.raises(ValueError, match="Unknown family 'nope'"):
        load_family("nope")
    with pytest.raises(ValueError, match="stains must be four"):
        load_family("toy", stains=[(1.0, 1.0)] * 3)
    with pytest.raises(ValueError, match="section C: eosin must be a positive number"):
        load_family("toy", stains=[(1.0, 1.0), (1.0, 1.0), (1.0, -1.0), (1.0, 1.0)])
    with pytest.raises(FileNotFoundError, match="hgsc_wsi needs"):
        load_family("hgsc_wsi")


def test_densest_windows_are_disjoint_and_greedy():
    rng = np.random.default_rng(0)
    # polygon centres: a dense blob at (1000, 1000), a denser one at (5000, 3000), sparse elsewhere
    xy = np.concatenate([
        rng.normal((1000, 1000), 150, (3000, 2)), rng.normal((5000, 3000), 150, (5000, 2)),
        rng.uniform(0, 8000, (2000, 2)),
    ])  # fmt: skip
    bounds = np.concatenate([xy - 5, xy + 5], axis=1)
    corners = densest_windows(bounds, 1100, 4)
    assert corners[0] == densest_window(bounds, 1100)
    assert abs(corners[0][0] + 550 - 5000) < 300 and abs(corners[0][1] + 550 - 3000) < 300
    assert abs(corners[1][0] + 550 - 1000) < 300 and abs(corners[1][1] + 550 - 1000) < 300
    for i, (xa, ya) in enumerate(corners):
        for xb, yb in corners[i + 1 :]:
            assert abs(xa - xb) >= 1100 or abs(ya - yb) >= 1100  # 1100 px is not a whole number of 250 px cells
    with pytest.raises(ValueError, match="Only 1 disjoint 1100 px squares"):
        densest_windows(bounds[:1], 1100, 2)


def test_representative_windows_are_dense_squares_alike_the_slide():
    """Six dense blobs with different mixes of two classes: of the densest squares, the ones closest to the
    slide's class proportions, in the greedy (densest first) order."""
    rng = np.random.default_rng(0)
    blobs = [(1000, 1000), (4000, 1000), (7000, 1000), (1000, 4000), (4000, 4000), (7000, 4000)]
    sizes = [3000, 2900, 2800, 2700, 2600, 2500]  # densest first
    share_b = [0.35, 0.9, 0.4, 0.9, 0.15, 0.1]  # the slide: 0.48 of "b"
    xy = np.concatenate([rng.normal(c, 120, (n, 2)) for c, n in zip(blobs, sizes, strict=True)])
    classes = np.concatenate([np.where(rng.uniform(size=n) < b, "b", "a") for n, b in zip(sizes, share_b, strict=True)])
    bounds = np.concatenate([xy - 5, xy + 5], axis=1)
    densest = densest_windows(bounds, 1000, 6)
    assert representative_windows(bounds, classes, 1000, 2, pool=3) == [densest[0], densest[2]]
    assert representative_windows(bounds, classes, 1000, 3, pool=2) == [densest[0], densest[2], densest[4]]
    assert representative_windows(bounds, classes, 1000, 2, pool=1) == densest[:2]  # no choice: the densest


@pytest.mark.realdata
@pytest.mark.slow
def test_hgsc_family_four_disjoint_squares_one_programme(shared_data):
    size = 1500
    sections = load_family("hgsc_wsi", data_dir=shared_data, n_genes=20, square_px=size)
    assert len(sections) == 4
    _check_shared_programmes(sections, "hgsc_wsi")
    programmes = sections[0].tables["truth"].uns["programmes"]
    assert set(programmes.index) >= {"connective", "inflammatory", "neoplastic", "dead"}  # every class of the slide
    windows = [s.tables["truth"].uns["window_px"] for s in sections]
    for i, (x0, y0, x1, y1) in enumerate(windows):
        assert x1 - x0 == size and y1 - y0 == size
        for a0, b0, a1, b1 in windows[i + 1 :]:
            assert x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0  # disjoint
    for sdata, (h, e) in zip(sections, FAMILY_STAINS, strict=True):
        truth = sdata.tables["truth"]
        assert truth.uns["family"]["stain"] == [h, e]
        assert truth.n_obs > 0.8 * (size // 16) ** 2 and sdata.tables["table"].n_obs >= 30  # rich in tissue
        assert _image(sdata).shape == (size, size, 3)
