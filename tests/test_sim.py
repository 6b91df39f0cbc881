"""Simulated sections with known truth: cells split over bins by area, pseudo-spots, and sections from real nuclei."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from helpers import SHARED_DATA

import histex as hx
from histex.geometry import BinGrid


def test_cells_are_split_over_bins_by_area():
    grid = BinGrid(bin_px=10.0, n_rows=4, n_cols=4)
    cells = [
        shapely.box(12, 12, 18, 18),  # inside bin (1, 1)
        shapely.box(15, 5, 25, 15),  # a quarter in each of four bins
        shapely.box(0, 0, 10, 40),  # a column of four bins
        shapely.box(35, 35, 45, 45),  # a quarter on the grid, the rest beyond it
        shapely.Point(20, 20).buffer(5, quad_segs=64),  # a disk centred on a bin corner
    ]
    w = hx.sim.cell_bin_weights(cells, grid).toarray().reshape(len(cells), 4, 4)
    assert w[0, 1, 1] == pytest.approx(1) and w[0].sum() == pytest.approx(1)
    assert np.allclose(w[1, 0:2, 1:3], 0.25) and w[1].sum() == pytest.approx(1)
    assert np.allclose(w[2, :, 0], 0.25)
    assert w[3, 3, 3] == pytest.approx(0.25) and w[3].sum() == pytest.approx(0.25)
    assert np.allclose(w[4, 1:3, 1:3], 0.25, atol=1e-3)


def test_cell_split_matches_brute_force_on_random_polygons():
    rng = np.random.default_rng(0)
    grid = BinGrid(bin_px=16.0, n_rows=12, n_cols=12)
    cells = [
        shapely.Point(*rng.uniform(0, 192, 2)).buffer(rng.uniform(3, 14)).simplify(0.5)
        for _ in range(60)
    ]  # fmt: skip
    w = hx.sim.cell_bin_weights(cells, grid).toarray()
    for i, cell in enumerate(cells[:20]):
        for r in range(12):
            for c in range(12):
                box = shapely.box(c * 16, r * 16, (c + 1) * 16, (r + 1) * 16)
                assert w[i, r * 12 + c] == pytest.approx(cell.intersection(box).area / cell.area, abs=1e-9)


def test_pseudo_spots_lie_on_the_tissue_and_sum_their_disks():
    mpp = 0.5
    grid = BinGrid.for_image((1600, 1600), mpp=mpp, bin_size_um=8)  # 800 µm, 100 x 100 bins
    tissue = np.zeros(grid.shape, bool)
    tissue[:, :50] = True
    xy, array_rc = hx.sim.hex_spots(tissue, grid, mpp)
    assert len(xy) > 20
    assert (xy[:, 0] / grid.bin_px < 50).all()  # centres on tissue only
    pitch, regular = hx.geometry.lattice_pitch(xy * mpp)
    assert pitch == pytest.approx(100, rel=1e-6) and regular == 1
    assert len(np.unique(array_rc, axis=0)) == len(xy)
    # one count per bin: a spot sums the bins whose centres lie within 27.5 µm of it
    rows, cols = np.nonzero(np.ones(grid.shape, bool))
    counts = np.ones((len(rows), 1))
    spot = hx.sim.sum_into_spots(xy, grid, rows, cols, counts, radius_px=27.5 / mpp).toarray()[:, 0]
    centres = grid.centres_px(rows, cols)
    for i in range(5):
        inside = np.hypot(*(centres - xy[i]).T) <= 27.5 / mpp
        assert spot[i] == inside.sum()
    assert spot.mean() == pytest.approx(np.pi * 3.4375**2, abs=1)  # 37 bins on average, 32-40 by position
    with pytest.raises(ValueError, match="tissue has shape"):
        hx.sim.hex_spots(tissue[:10], grid, mpp)
    # a finer map than the bins: a function of the centres in µm; here the left 401 µm, which is one bin's width
    # more than the mask's 50 bins (400 µm): the sites kept are those of the mask plus the ones in that sliver
    fine, fine_rc = hx.sim.hex_spots(lambda xy_um: xy_um[:, 0] < 401.0, grid, mpp)
    assert {tuple(rc) for rc in array_rc} <= {tuple(rc) for rc in fine_rc}
    assert (fine[:, 0] * mpp < 401.0).all() and len(fine) >= len(xy)


def nuclei_frame(classes, centres, radius=6.0):
    polys = [shapely.Point(x, y).buffer(radius) for x, y in centres]
    return gpd.GeoDataFrame({"class_name": classes}, geometry=polys)


def two_halves():
    """A blank 1200 px image with 900 nuclei, tumour on the left half and immune on the right."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(40, 1160, size=(900, 2))
    return np.full((1200, 1200, 3), 235, np.uint8), centres, np.where(centres[:, 0] < 600, "tumour", "immune")


def test_from_nuclei_gives_a_section_with_its_truth():
    image, centres, classes = two_halves()
    sdata = hx.sim.from_nuclei(image, nuclei_frame(classes, centres), mpp=0.5, n_genes=20, seed=3)
    truth, spots = sdata.tables["truth"], sdata.tables["table"]
    assert set(sdata.images) == {"sim_full_image"} and set(sdata.shapes) == {
        "sim",
        "truth_bins",
        "truth_cells_boundaries",
    }
    assert list(truth.var_names) == list(spots.var_names) == [f"G{i:03d}" for i in range(20)]
    programmes = truth.uns["programmes"]
    assert set(programmes.index) == {"immune", "tumour"}
    # tumour markers sit in the tumour half of the truth
    left = (truth.obs["array_col"].to_numpy() + 1) * 16 < 600 - 6  # bins that no immune nucleus reaches
    x = truth.X.toarray()
    tumour_genes = programmes.loc["tumour"] > programmes.loc["immune"] + 0.5
    assert x[left][:, tumour_genes].sum() > 5 * x[~left][:, tumour_genes].sum()
    assert (truth.obs["class"][left] != "immune").all()
    # spots are sums of the truth bins in their disks
    np.testing.assert_allclose(
        spots.X.toarray(),
        hx.sim.sum_into_spots(spots.obsm["spatial"], BinGrid.for_image((1200, 1200), mpp=0.5, bin_size_um=8),
                              truth.obs["array_row"], truth.obs["array_col"], truth.X, radius_px=55.0).toarray(),
        rtol=1e-5,
    )  # fmt: skip
    # the truth per cell: every nucleus with its counts, which the bins hold split by area
    cells = sdata.tables["truth_cells"]
    assert cells.n_obs == 900 and list(cells.var_names) == list(truth.var_names)
    assert cells.obs["class"].tolist() == classes.tolist()
    np.testing.assert_allclose(cells.X.sum(0), truth.X.sum(0), rtol=1e-5)
    np.testing.assert_allclose(cells.obs["area_um2"], np.pi * 6**2 * 0.25, rtol=0.05)
    np.testing.assert_allclose(cells.obsm["spatial"], centres, atol=0.05)
    from spatialdata.models import get_table_keys

    assert get_table_keys(cells) == ("truth_cells_boundaries", "region", "cell_id")
    assert len(sdata.shapes["truth_cells_boundaries"]) == 900
    # histex reads it: the pixel size from the metadata, every spot inside the image
    section = hx._sdata.read_section(sdata)
    assert section.mpp == pytest.approx(0.5) and len(section.spots.xy_px) == spots.n_obs


def test_from_nuclei_places_whole_transcripts():
    """whole_counts: each transcript of a cell in one of its bins, by area; the cells' counts are as before."""
    image, centres, classes = two_halves()
    nuclei = nuclei_frame(classes, centres)
    split = hx.sim.from_nuclei(image, nuclei, mpp=0.5, n_genes=20, seed=3)
    whole = hx.sim.from_nuclei(image, nuclei, mpp=0.5, n_genes=20, seed=3, whole_counts=True)
    np.testing.assert_array_equal(whole.tables["truth_cells"].X.toarray(), split.tables["truth_cells"].X.toarray())
    x, fractions = whole.tables["truth"].X.toarray(), split.tables["truth"].X.toarray()
    assert np.array_equal(x, np.round(x)) and not np.array_equal(fractions, np.round(fractions))
    np.testing.assert_allclose(x.sum(0), fractions.sum(0), rtol=1e-5)  # every transcript in the grid, once
    assert np.abs(x - fractions).max() >= 1  # placed, not split
    # the transcripts' bins follow the area shares: a bin's count has the mean of the fractional split
    assert abs(np.corrcoef(x.ravel(), fractions.ravel())[0, 1]) > 0.8
    spots = whole.tables["table"].X.toarray()
    assert np.array_equal(spots, np.round(spots))  # the spots sum whole counts


def test_place_transcripts_draws_bins_by_area_share():
    import scipy.sparse as sp

    from histex.sim._nuclei import place_transcripts

    weights = sp.csr_matrix(np.array([[0.25, 0.75, 0.0], [0.0, 0.0, 0.5]]))  # cell 1 half outside the grid
    counts = np.array([[4000.0], [4000.0]])
    placed = place_transcripts(weights, counts, np.random.default_rng(0)).toarray()[:, 0]
    np.testing.assert_allclose(placed / 4000, [0.25, 0.75, 0.5], atol=0.03)
    assert placed[:2].sum() == 4000  # a cell inside the grid loses none


def test_from_nuclei_adds_genes_that_the_image_cannot_see():
    """Clone genes follow two regions and gradient genes a smooth field, in every cell whatever its class; the class
    genes, the spots' lattice and the class counts are those of the section without them."""
    from histex._bench import gene_groups
    from histex.sim._hidden import gradient_field

    image, centres, classes = two_halves()
    frame = nuclei_frame(classes, centres)
    plain = hx.sim.from_nuclei(image, frame, mpp=0.5, n_genes=20, seed=3)
    sdata = hx.sim.from_nuclei(image, frame, mpp=0.5, n_genes=20, clone_genes=5, gradient_genes=4, seed=3)
    truth, cells = sdata.tables["truth"], sdata.tables["truth_cells"]
    names = [f"CloneA_{i:02d}" for i in range(3)] + [f"CloneB_{i:02d}" for i in range(2)]
    assert list(truth.var_names) == [f"G{i:03d}" for i in range(20)] + names + [f"Grad_{i:02d}" for i in range(4)]
    assert list(truth.var["group"]) == ["visible"] * 20 + ["clone"] * 5 + ["gradient"] * 4
    assert list(gene_groups(truth.var)) == list(truth.var["group"])
    assert "group" not in sdata.tables["table"].var  # the measured spots do not say it
    np.testing.assert_array_equal(sdata.tables["table"][:, :20].X.toarray(), plain.tables["table"].X.toarray())
    x = cells.X.toarray()
    in_a = (cells.obs["clone"] == "A").to_numpy()
    assert 0.1 < in_a.mean() < 0.9  # both clones, each a region
    assert x[~in_a, 20:23].sum() == 0 and x[in_a, 23:25].sum() == 0 and x[in_a, 20:23].sum() > 0
    for label in ("tumour", "immune"):  # whatever the class
        assert x[in_a & (classes == label), 20:23].mean() > 0.3
    # the two clones are two regions: a cell's nearest neighbours are mostly of its clone
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(centres).query(centres, 2)
    assert (in_a[nearest[:, 1]] == in_a).mean() > 0.95
    gradient = cells.obs["gradient"].to_numpy()
    assert np.corrcoef(x[:, 25:].sum(1), gradient)[0, 1] > 0.5
    field = gradient_field(centres * 0.5, 600, 600, 0.0, 1.0, 0.0)
    assert field.min() >= 0.05 and abs(field.mean() - 1) < 0.1
    with pytest.raises(ValueError, match="clone_genes must be a whole number"):
        hx.sim.from_nuclei(image, frame, mpp=0.5, clone_genes=-1)


def test_from_nuclei_bad_input():
    image = np.full((400, 400, 3), 235, np.uint8)
    frame = nuclei_frame(["a", "b"], [(100, 100), (300, 300)])
    with pytest.raises(ValueError, match="No expression programme for the classes \\['b'\\]"):
        hx.sim.from_nuclei(image, frame, mpp=0.5, programmes=pd.DataFrame({"G0": [1.0]}, index=["a"]))
    with pytest.raises(ValueError, match="outside the image"):
        hx.sim.from_nuclei(image, nuclei_frame(["a"], [(395, 100)], radius=10), mpp=0.5)
    with pytest.raises(ValueError, match="No 55 µm spot"):
        hx.sim.from_nuclei(image[:60, :60], nuclei_frame(["a"], [(30, 30)]), mpp=0.5)
    with pytest.raises(ValueError, match="no 'cell_type' column"):
        hx.sim.from_nuclei(image, frame, mpp=0.5, class_key="cell_type")


@pytest.mark.realdata
def test_from_nuclei_on_the_real_hgsc_nest():
    from PIL import Image

    image = np.asarray(Image.open(SHARED_DATA / "hgsc_nest.jpg").convert("RGB"))
    nuclei = gpd.read_parquet(SHARED_DATA / "hgsc_nest.parquet")
    sdata = hx.sim.from_nuclei(image, nuclei, mpp=0.5, n_genes=30, seed=0)
    truth = sdata.tables["truth"]
    assert sdata.tables["table"].n_obs >= 40  # 750 µm square: about 7 x 8 spots
    assert set(truth.uns["programmes"].index) == {"connective", "inflammatory", "neoplastic"}
    assert truth.obs["in_tissue"].mean() == 1 and truth.n_obs > 0.8 * (1500 // 16) ** 2
    # the counts of all cells reach the truth
    assert truth.X.sum() > 0 and np.isfinite(truth.X.toarray()).all()
