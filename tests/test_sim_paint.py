"""histex.sim.paint_he: an H&E-like image painted from nucleus and tissue-region polygons."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from helpers import bin_means

import histex as hx
from histex import geometry
from histex.pp._tissue import tissue_mask
from histex.sim._paint import _edges, _fill
from histex.sim._slide import read_crop

MPP = 0.5
STROMA = (20, 20, 220, 220)  # xmin, ymin, xmax, ymax in px
FAT = (240, 20, 380, 220)
INFLAMMATORY = [(60, 60), (120, 60), (60, 120), (180, 180)]  # centres, radius 6 px (6 µm across)
NEOPLASTIC = [(120, 150), (170, 90)]  # radius 12 px


def _frame(geoms, classes, key="class_name"):
    return gpd.GeoDataFrame({key: classes}, geometry=list(geoms))


def _section():
    nuclei = _frame(
        [shapely.Point(p).buffer(6) for p in INFLAMMATORY] + [shapely.Point(p).buffer(12) for p in NEOPLASTIC],
        ["inflammatory"] * len(INFLAMMATORY) + ["neoplastic"] * len(NEOPLASTIC),
    )
    tissue = _frame([shapely.box(*STROMA), shapely.box(*FAT)], ["stroma", "omental_fat"])
    return nuclei, tissue


@pytest.fixture(scope="module")
def painted():
    nuclei, tissue = _section()
    return paint(nuclei, tissue)


def paint(nuclei, tissue, **kwargs):
    kwargs.setdefault("bounds", (0, 0, 400, 300))
    return hx.sim.paint_he(nuclei, tissue, mpp=MPP, **kwargs)


def _disc_mean(image, centre, radius):
    """Mean colour of the pixels whose centres lie within ``radius`` of ``centre``."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]] + 0.5
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    return image[inside].astype(float).mean(axis=0)


def _stroma_background(image, nuclei):
    """Mean colour of stroma pixels at least 4 px from every nucleus."""
    near = np.zeros(image.shape[:2], np.int32)
    _fill(_edges(np.asarray(nuclei.geometry.buffer(4).values), np.zeros(2)), near, 0)
    x0, y0, x1, y1 = STROMA
    region = np.zeros(image.shape[:2], bool)
    region[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = True
    return image[region & (near == 0)].astype(float).mean(axis=0)


def test_shape_dtype_and_white_glass(painted):
    assert painted.shape == (300, 400, 3) and painted.dtype == np.uint8
    glass = painted[240:300].reshape(-1, 3).astype(float)  # below every region
    assert glass.min() > 225 and glass.mean() > 238
    assert (glass.max(1) - glass.min(1)).mean() < 10  # unsaturated


def test_stroma_is_pink_and_fat_is_pale(painted):
    nuclei, _ = _section()
    stroma = _stroma_background(painted, nuclei)
    r, g, b = stroma
    assert r > b > g and g < 200  # eosin: green absorbed most
    fat = painted[30:210, 250:370].reshape(-1, 3).astype(float)
    assert np.median(fat, axis=0).min() > 225  # vacuoles, nearly white
    assert (fat.min(1) < 200).mean() > 0.003  # with thin pink walls


def test_nuclei_are_darker_and_bluer_than_stroma(painted):
    nuclei, _ = _section()
    sr, _, sb = stroma = _stroma_background(painted, nuclei)
    for centre, radius in [(c, 3) for c in INFLAMMATORY] + [(c, 8) for c in NEOPLASTIC]:
        r, _, b = colour = _disc_mean(painted, centre, radius)
        assert colour.sum() < stroma.sum() - 150
        assert r / b < 0.8 * sr / sb


def test_nucleus_classes_differ(painted):
    inflammatory = np.mean([_disc_mean(painted, c, 3) for c in INFLAMMATORY], axis=0)
    neoplastic = np.mean([_disc_mean(painted, c, 8) for c in NEOPLASTIC], axis=0)
    assert inflammatory.sum() < neoplastic.sum() - 60  # lymphocytes dense and dark, tumour nuclei vesicular


def test_deterministic_for_a_seed(painted):
    nuclei, tissue = _section()
    np.testing.assert_array_equal(paint(nuclei, tissue, seed=0), painted)
    other = paint(nuclei, tissue, seed=1)
    assert not np.array_equal(other, painted)
    assert np.abs(other.astype(int) - painted).mean() < 20  # same section, other textures


def test_bounds_offset_and_crop():
    # A 10 x 10 px nucleus at x 140-150, y 90-100 in slide pixels, in stroma.
    nuclei = _frame([shapely.box(140, 90, 150, 100), shapely.Point(60, 60).buffer(6)], ["dead", "inflammatory"])
    tissue = _frame([shapely.box(*STROMA)], ["stroma"])
    image = hx.sim.paint_he(nuclei, tissue, bounds=(100, 50, 300, 200), mpp=MPP)
    assert image.shape == (150, 200, 3)
    grey = image.astype(float).sum(-1)
    inside = grey[42:48, 42:48]  # rows 40-49, cols 40-49 of the crop, away from the blurred edge
    assert inside.max() < 200
    ring = np.concatenate([grey[35, 35:55], grey[54, 35:55], grey[35:55, 35], grey[35:55, 54]])
    assert ring.min() > inside.max() + 150
    # the crop ends at x 220 (col 120) and y 220 (row 170, outside the frame): glass right of the stroma
    assert grey[:, 125:].min() > 3 * 225
    assert grey[:, :115].max() < 3 * 230


def test_tissue_detection_finds_the_painted_tissue_not_the_glass():
    nuclei, tissue = _section()
    tissue = _frame([shapely.box(20, 20, 260, 220)], ["stroma"])
    image = paint(nuclei, tissue, bounds=(0, 0, 480, 320))
    grid = geometry.BinGrid.for_image(image.shape[:2], mpp=MPP, bin_size_um=8)  # 16 px bins
    mask = tissue_mask(bin_means(image, grid) / 255)
    assert mask[2:13, 2:16].all()  # bins wholly inside the stroma (px 32-208, 32-256)
    assert not mask[14:, :].any() and not mask[:, 17:].any()  # glass below and to the right
    assert 0.25 < mask.mean() < 0.4  # stroma: 240 x 200 of 480 x 320 px


def test_without_tissue_regions_tissue_surrounds_the_nuclei():
    nuclei, _ = _section()
    image = hx.sim.paint_he(nuclei, bounds=(0, 0, 400, 300), mpp=MPP)
    grey = image.astype(float).sum(-1)
    # between nuclei 60 px (30 µm) apart: stained; 100 px from every nucleus: glass
    assert grey[60, 90] < 3 * 215
    assert grey[280, 380] > 3 * 235
    assert grey[60, 60] < 3 * 100 and grey[150, 120] < 3 * 150  # the nuclei themselves


def test_exact_pixel_centres_holes_and_overlaps():
    out = np.zeros((10, 10), np.int32)
    square = shapely.box(2, 2, 6, 6)
    _fill(_edges(np.array([square]), np.zeros(2)), out, 0)
    expected = np.zeros((10, 10), bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(out > 0, expected)
    # a ring with a hole, and a later square over part of it: the later one wins, the hole stays empty
    ring = shapely.box(0, 0, 8, 8).difference(shapely.box(2, 2, 6, 6))
    out[:] = 0
    _fill(_edges(np.array([ring, shapely.box(7, 7, 10, 10)]), np.zeros(2)), out, 0)
    assert (out[2:6, 2:6] == 0).all() and (out[0, :7] == 1).all() and (out[7:, 7:] == 2).all()
    # a strip of rows: the same pixels
    strip = np.zeros((4, 10), np.int32)
    _fill(_edges(np.array([ring, shapely.box(7, 7, 10, 10)]), np.zeros(2)), strip, 5)
    np.testing.assert_array_equal(strip, out[5:9])


def test_label_image_paints_as_the_polygons(painted):
    """A raster of the regions (here at 1 µm under 0.5 µm pixels) paints the same image as their polygons."""
    nuclei, _ = _section()
    labels = np.zeros((150, 200), np.int16)
    labels[STROMA[1] // 2 : STROMA[3] // 2, STROMA[0] // 2 : STROMA[2] // 2] = 1
    labels[FAT[1] // 2 : FAT[3] // 2, FAT[0] // 2 : FAT[2] // 2] = 2
    regions = hx.sim.TissueLabels(labels, ("stroma", "omental_fat"), scale=2)
    np.testing.assert_array_equal(paint(nuclei, regions), painted)
    as_lists = hx.sim.TissueLabels(labels.tolist(), ("stroma", "omental_fat"), scale=2)  # any array-like
    assert isinstance(as_lists.labels, np.ndarray)
    np.testing.assert_array_equal(paint(nuclei, as_lists), painted)


def test_shades_replace_and_add_classes(painted):
    nuclei, tissue = _section()
    flat = paint(nuclei, tissue, tissue_shades={"stroma": (0.0, 0.55, 0.0, 0.0, 0.0)})
    # no texture and no collagen: the stroma between the nuclei is one colour, where the built-in one has fibres
    x0, y0, x1, y1 = STROMA
    stroma = np.zeros(painted.shape[:2], bool)
    stroma[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = True
    stroma &= (painted.astype(int).sum(axis=2) > 500) & (flat.astype(int).sum(axis=2) > 500)
    assert flat[stroma].std(axis=0).max() < 2.0 < painted[stroma].std(axis=0).max()
    # an unknown nucleus class takes the medium purple; given a look, it takes that one
    lymphoid = nuclei.assign(class_name="lymphoid")
    default = paint(lymphoid, tissue)
    dark = paint(lymphoid, tissue, nucleus_shades={"lymphoid": (2.4, 0.1, 0.0, 0.0, 0.0)})
    for centre in INFLAMMATORY:
        assert _disc_mean(dark, centre, 4).sum() < _disc_mean(default, centre, 4).sum() - 100
    # the fat, whose look was not replaced, is painted as before
    np.testing.assert_array_equal(flat[30:210, 250:370], painted[30:210, 250:370])


def test_stains_set_the_hues(painted):
    nuclei, tissue = _section()
    builtin = {"haematoxylin": (0.86, 1.60, 0.45), "eosin": (0.08, 1.00, 0.50), "blood": (0.10, 1.30, 1.10)}
    np.testing.assert_array_equal(paint(nuclei, tissue, stains=builtin), painted)  # the documented built-in hues
    bluer = paint(nuclei, tissue, stains={"haematoxylin": (0.86, 0.93, 0.38)})

    def green_over_red(image, centre):  # optical density of a nucleus, green against red
        r, g, _ = _disc_mean(image, centre, 4)
        return np.log(242 / g) / np.log(243 / r)

    for centre in INFLAMMATORY:
        assert green_over_red(painted, centre) > 1.6 and green_over_red(bluer, centre) < 1.4


def test_bad_input():
    nuclei, tissue = _section()
    with pytest.raises(ValueError, match="nuclei have no 'cell_type' column"):
        hx.sim.paint_he(nuclei, tissue, class_key="cell_type")
    with pytest.raises(ValueError, match="tissue have no 'class_name' column"):
        hx.sim.paint_he(nuclei, tissue.rename(columns={"class_name": "kind"}))
    with pytest.raises(ValueError, match="No nuclei within bounds"):
        hx.sim.paint_he(nuclei, tissue, bounds=(1000, 1000, 1200, 1200))
    with pytest.raises(ValueError, match="No nuclei given"):
        hx.sim.paint_he(nuclei.iloc[:0], tissue)
    with pytest.raises(ValueError, match="bounds must be finite"):
        hx.sim.paint_he(nuclei, tissue, bounds=(100, 0, 50, 100))
    with pytest.raises(ValueError, match="mpp must be positive"):
        hx.sim.paint_he(nuclei, tissue, mpp=0)
    with pytest.raises(ValueError, match=r"tissue_shades\['stroma'\] must be five finite numbers >= 0"):
        hx.sim.paint_he(nuclei, tissue, tissue_shades={"stroma": (0.1, 0.5, 0.0, 0.2)})
    with pytest.raises(ValueError, match=r"nucleus_shades\['neoplastic'\] must be five finite numbers >= 0"):
        hx.sim.paint_he(nuclei, tissue, nucleus_shades={"neoplastic": (-1, 0, 0, 0, 0)})
    with pytest.raises(
        ValueError, match=r"stains has no \['dab'\]; the stains are \['haematoxylin', 'eosin', 'blood'\]"
    ):
        hx.sim.paint_he(nuclei, tissue, stains={"dab": (0.3, 0.6, 0.8)})
    for bad in ((0.8, 0.9), (0.0, 0.0, 0.0), (0.8, np.nan, 0.3)):
        with pytest.raises(ValueError, match=r"stains\['haematoxylin'\] must be three finite numbers >= 0, not all 0"):
            hx.sim.paint_he(nuclei, tissue, stains={"haematoxylin": bad})
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        hx.sim.TissueLabels(np.full((4, 4), 2), ("stroma",))
    with pytest.raises(ValueError, match="labels must be a 2-D integer array"):
        hx.sim.TissueLabels(np.zeros((4, 4)), ("stroma",))
    with pytest.raises(ValueError, match="scale must be a positive number"):
        hx.sim.TissueLabels(np.zeros((4, 4), int), ("stroma",), scale=0)


def test_hgsc_wsi_needs_its_files(tmp_path):
    from histex._bench import load_dataset

    with pytest.raises(FileNotFoundError, match=r"hgsc_wsi needs hgsc_nuclei_wsi.parquet"):
        load_dataset("hgsc_wsi", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="hgsc_wsi needs"):
        load_dataset("hgsc_wsi")


@pytest.mark.realdata
@pytest.mark.slow
def test_real_wsi_crop(shared_data):
    """The 2000 px square of the HGSC slide with the most nuclei: nearly all tissue, nuclei dark."""
    size = 2000
    nuclei, tissue, window = read_crop(
        shared_data / "hgsc_nuclei_wsi.parquet", shared_data / "hgsc_tissue_wsi.parquet", size_px=size
    )
    assert window[2] - window[0] == size and len(nuclei) > 3000
    x0, y0, x1, y1 = shapely.total_bounds(nuclei.geometry.values)
    assert x0 >= 0 and y0 >= 0 and x1 <= size and y1 <= size
    image = hx.sim.paint_he(nuclei, tissue, bounds=(0, 0, size, size), mpp=MPP)
    assert image.shape == (size, size, 3)
    grid = geometry.BinGrid.for_image(image.shape[:2], mpp=MPP, bin_size_um=8)
    assert tissue_mask(bin_means(image, grid) / 255).mean() > 0.9
    label = np.zeros((size, size), np.int32)
    _fill(_edges(np.asarray(nuclei.geometry.buffer(-2).values), np.zeros(2)), label, 0)
    grey = image.astype(float).sum(-1)
    assert np.median(grey[label > 0]) < np.median(grey[label == 0]) - 150


@pytest.mark.realdata
@pytest.mark.slow
def test_real_wsi_benchmark_section(shared_data):
    from histex._bench import load_dataset

    sdata = load_dataset("hgsc_wsi", data_dir=shared_data, n_genes=20, wsi_size_px=1000)
    truth = sdata.tables["truth"]
    assert truth.n_obs > 0.9 * (1000 // 16) ** 2  # 8 µm bins, nearly all in tissue
    assert sdata.tables["table"].n_obs >= 15  # 500 µm square: about 5 x 5 spots
    assert {"inflammatory", "connective"} <= set(truth.uns["programmes"].index)  # a lymphoid aggregate
    assert truth.uns["window_px"][2] - truth.uns["window_px"][0] == 1000
