"""The tissue mask on the bin grid: synthetic cases with a known answer, and real H&E against references made by eye."""

from functools import cache

import numpy as np
import pytest
from helpers import SHARED_DATA, bin_means
from scipy import ndimage

from histex import geometry
from histex.pp._tissue import tissue_mask

GLASS = (0.94, 0.94, 0.95)
EOSIN = (0.90, 0.55, 0.78)  # stroma, pink
HAEMATOXYLIN = (0.52, 0.36, 0.70)  # nuclei-rich tissue, purple


def _paint(codes: np.ndarray, colours: dict[int, tuple[float, float, float]], noise=0.02, seed=0) -> np.ndarray:
    """``(3, rows, cols)`` mean colours: each code's colour plus Gaussian noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((3, *codes.shape))
    for code, colour in colours.items():
        rgb[:, codes == code] = np.asarray(colour)[:, None]
    return np.clip(rgb + rng.normal(0, noise, rgb.shape), 0, 1)


def test_all_tissue_stays_all_tissue():
    """Two stains, no glass: Otsu alone would call the paler half background."""
    codes = np.zeros((60, 80), int)
    codes[:, 40:] = 1
    mask = tissue_mask(_paint(codes, {0: EOSIN, 1: HAEMATOXYLIN}, noise=0.04))
    assert mask.all()


def test_half_glass_half_tissue_splits_at_the_edge():
    codes = np.zeros((50, 100), int)
    codes[:, 40:] = 1
    mask = tissue_mask(_paint(codes, {0: GLASS, 1: EOSIN}))
    first_tissue = np.argmax(mask, axis=1)
    assert mask.any(axis=1).all()
    assert np.abs(first_tissue - 40).max() <= 1
    assert (mask[:, :39].sum() == 0) and mask[:, 41:].all()


def test_a_thin_strip_of_glass_is_found_in_a_section_of_tissue():
    """5 % glass: not bimodal enough for Otsu, found by the absolute rule."""
    codes = np.ones((100, 100), int)
    codes[:, :5] = 0
    mask = tissue_mask(_paint(codes, {0: GLASS, 1: EOSIN}))
    assert not mask[:, :4].any() and mask[:, 6:].all()


def test_pale_tissue_on_glass_is_split_by_otsu():
    """Faint staining, less saturated than the absolute ceiling, still separates from the glass when bimodal."""
    pale = (0.95, 0.87, 0.92)  # saturation 0.085
    codes = np.zeros((60, 60), int)
    codes[:, 30:] = 1
    mask = tissue_mask(_paint(codes, {0: GLASS, 1: pale}, noise=0.005))
    assert not mask[:, :29].any() and mask[:, 31:].all()


def test_enclosed_hole_is_filled_and_glass_outside_is_not():
    codes = np.zeros((100, 100), int)
    codes[20:80, 20:80] = 1
    codes[45:51, 45:51] = 0  # a lumen
    codes[30:34, 60:64] = 2  # fat: white and unsaturated
    rgb = _paint(codes, {0: GLASS, 1: EOSIN, 2: (0.98, 0.98, 0.98)})
    mask = tissue_mask(rgb)
    assert mask[20:80, 20:80].all()
    assert mask.sum() == 60 * 60
    # holes larger than max_hole_bins stay open
    mask = tissue_mask(rgb, max_hole_bins=20)
    assert not mask[45:51, 45:51].any() and mask[30:34, 60:64].all()


def test_specks_are_removed_and_fragments_kept():
    codes = np.zeros((80, 80), int)
    codes[10:12, 10:12] = 1  # 4 bins: a speck
    codes[50:55, 50:55] = 1  # 25 bins: a fragment
    mask = tissue_mask(_paint(codes, {0: GLASS, 1: HAEMATOXYLIN}))
    assert not mask[:40, :40].any()
    assert mask[50:55, 50:55].all() and mask.sum() == 25
    assert tissue_mask(_paint(codes, {0: GLASS, 1: HAEMATOXYLIN}), min_component_bins=2).sum() == 29


def test_dark_unsaturated_is_not_glass():
    """Ink or a fold is grey like glass but dark: not background."""
    codes = np.zeros((60, 60), int)
    codes[:, 40:] = 1
    codes[:20, :10] = 2
    mask = tissue_mask(_paint(codes, {0: GLASS, 1: EOSIN, 2: (0.25, 0.25, 0.26)}))
    assert mask[:20, :10].all() and not mask[25:, :39].any()


def test_uniform_and_empty_inputs():
    assert not tissue_mask(_paint(np.zeros((20, 20), int), {0: GLASS}, noise=0)).any()
    assert tissue_mask(_paint(np.zeros((20, 20), int), {0: EOSIN}, noise=0)).all()
    assert tissue_mask(np.zeros((3, 0, 5))).shape == (0, 5)
    with pytest.raises(ValueError, match="shape"):
        tissue_mask(np.zeros((20, 20)))


# Real H&E. The references: per pixel, optical density above 0.1 against the glass colour of a patch chosen by eye
# (a 5 px mean filter first), closing with a disk of radius 3 px, objects under 256 px dropped; a bin is tissue when
# at least half its pixels are, and enclosed holes are filled. Checked by eye on overlays of the images.

# (file, µm/px, glass patch (rows, cols) picked by eye)
REAL = {
    "svs": ("cmu_small_region.svs", 0.499, (slice(0, 200), slice(1800, 2200))),
    "hgsc": ("hgsc_nest.jpg", 0.5, (slice(900, 1000), slice(0, 20))),
    "brain": ("visium_mouse_brain_crop_he.jpg", 0.73, (slice(1000, 1600), slice(0, 60))),
}


@cache
def _real(name: str):
    """Image, bin grid, mean colours of the bins and the reference mask."""
    file, mpp, glass_patch = REAL[name]
    path = SHARED_DATA / file
    if file.endswith(".svs"):
        tifffile = pytest.importorskip("tifffile")
        pytest.importorskip("imagecodecs")
        with tifffile.TiffFile(path) as tif:
            image = tif.pages[0].asarray()[..., :3]
    else:
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
    grid = geometry.BinGrid.for_image(image.shape[:2], mpp=mpp, bin_size_um=8)
    mean_rgb = bin_means(image, grid) / 255
    return image, grid, mean_rgb, _reference(image, glass_patch, grid)


def _reference(image: np.ndarray, glass_patch, grid) -> np.ndarray:
    glass = image[glass_patch].reshape(-1, 3).mean(0)
    smooth = ndimage.uniform_filter(image.astype(np.float32), size=(5, 5, 1))
    pixels = np.log((glass + 1) / (smooth + 1)).max(-1) > 0.1
    y, x = np.ogrid[-3:4, -3:4]
    pixels |= ndimage.binary_closing(pixels, structure=x * x + y * y <= 9, border_value=0)
    labels, _ = ndimage.label(pixels)
    keep = np.bincount(labels.ravel()) > 256
    keep[0] = False
    fraction = bin_means(keep[labels][..., None].astype(np.uint8), grid)[0]
    return ndimage.binary_fill_holes(fraction >= 0.5)


def _well_inside(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """Bins at least ``margin + 1`` bins from the edge of ``mask`` (the image border does not count as an edge)."""
    return ndimage.binary_erosion(mask, iterations=margin, border_value=1)


@pytest.mark.realdata
def test_real_svs_skin_on_glass():
    """CMU-1 region: a strip of skin on glass, about 40 % tissue (reference 0.396, mask 0.394)."""
    _, _, mean_rgb, reference = _real("svs")
    mask = tissue_mask(mean_rgb)
    assert 0.36 < mask.mean() < 0.43
    assert 0.36 < reference.mean() < 0.43
    assert (mask == reference).mean() > 0.985  # measured 0.992
    # away from the edges of the reference, the mask is exact: tissue 0.9998 of 8914 bins, glass all 14064
    assert mask[_well_inside(reference)].mean() > 0.995
    assert not mask[_well_inside(~reference)].any()


@pytest.mark.realdata
def test_real_hgsc_nest_is_nearly_all_tissue():
    """A tumour nest: all tissue except glass along part of the left edge (reference 0.977, mask 0.978);
    the white spaces inside are filled."""
    _, _, mean_rgb, reference = _real("hgsc")
    mask = tissue_mask(mean_rgb)
    assert 0.95 < mask.mean() < 0.995
    assert mask[15:80, 15:80].all()
    assert not mask[56:62, 0].any()  # the glass at the left edge, rows 900-1000 px
    assert (mask == reference).mean() > 0.985  # measured 0.996
    assert mask[_well_inside(reference)].mean() > 0.995  # measured 0.9994


@pytest.mark.realdata
def test_real_mouse_brain_crop():
    """Mouse brain on grey glass (dim: its brightest channel is 0.5): about 72 % tissue; every Visium spot on
    tissue. The mask differs from the reference along the pale edge of the section and in a pocket of glass that
    a one-bin gap leaves almost enclosed, which the mask fills."""
    anndata = pytest.importorskip("anndata")
    _, grid, mean_rgb, reference = _real("brain")
    mask = tissue_mask(mean_rgb)
    assert 0.68 < mask.mean() < 0.78
    assert (mask == reference).mean() > 0.97  # measured 0.979
    assert mask[_well_inside(reference)].mean() > 0.995  # measured 0.9999
    assert (~mask[_well_inside(~reference)]).mean() > 0.97  # measured 0.983
    assert not mask[90:150, :3].any() and mask[40:, 20:].all()
    spots = anndata.read_h5ad(SHARED_DATA / "visium_mouse_brain_crop.h5ad").obsm["spatial"]
    rows = np.floor(spots[:, 1] / grid.bin_px).astype(int)
    cols = np.floor(spots[:, 0] / grid.bin_px).astype(int)
    assert mask[rows, cols].all()


def test_a_section_without_tissue_is_refused_by_name(small_toy):
    import spatialdata as sd

    import histex as hx

    sdata = sd.deepcopy(small_toy)
    (mask_key,) = [k for k in sdata.labels if k.endswith("_tissue")]
    sdata.labels[mask_key] = sdata.labels[mask_key] * 0
    with pytest.raises(ValueError, match="holds no tissue"):
        hx.tl.super_resolve(sdata, epochs=1, n_states=1, show_progress=False)
    assert "histex" not in sdata.tables
