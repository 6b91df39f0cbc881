import numpy as np
import pytest
from helpers import bin_means, pixel_labels

from histex import geometry


def test_hex_lattice_pitch_and_rows():
    xy = geometry.hex_lattice(2000, 2000, pitch=100)
    pitch, regular = geometry.lattice_pitch(xy)
    assert pitch == pytest.approx(100, rel=1e-9)
    assert regular == 1.0
    ys = np.unique(np.round(xy[:, 1], 6))
    assert np.allclose(np.diff(ys), 100 * np.sqrt(3) / 2)
    # every other row is shifted by half a pitch: each interior point has 6 neighbours at the pitch
    from scipy.spatial import cKDTree

    interior = (xy[:, 0] > 300) & (xy[:, 0] < 1700) & (xy[:, 1] > 300) & (xy[:, 1] < 1700)
    counts = cKDTree(xy).query_ball_point(xy[interior], r=100.5, return_length=True) - 1
    assert (counts == 6).all()


def test_scattered_points_are_not_a_lattice():
    rng = np.random.default_rng(0)
    _, regular = geometry.lattice_pitch(rng.uniform(0, 1000, size=(300, 2)))
    assert regular < 0.5


def test_visium_disk_has_37_bins_and_fits_the_window():
    radius = 27.5 / 8  # 55 µm spot on 8 µm bins
    size = geometry.window_size(radius)
    assert size == 7
    anchor, mask = geometry.disk_masks(np.array([[10.5, 20.5]]), radius, size)
    assert anchor.tolist() == [[10, 20]]
    assert mask.sum() == 37
    # wherever the centre lies inside its bin, the whole disk stays in the window
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 1, size=(500, 2)) + 50
    _, masks = geometry.disk_masks(centres, radius, 9)
    border = np.ones((9, 9), bool)
    border[1:-1, 1:-1] = False
    assert not masks.reshape(-1, 9, 9)[:, border].any()
    # the disk area in bins is close to pi r^2
    _, masks7 = geometry.disk_masks(centres, radius, 7)
    assert masks7.sum(1).mean() == pytest.approx(np.pi * radius**2, rel=0.03)


def test_disk_masks_off_centre_by_brute_force():
    """An off-centre spot: the mask must equal the bins whose centres lie within 27.5 µm, measured in µm."""
    centre_rc = np.array([10.9, 20.1])  # in bins; (row, col)
    anchor, mask = geometry.disk_masks(centre_rc[None], 27.5 / 8, 7)
    assert anchor.tolist() == [[10, 20]]
    got = {tuple(anchor[0] + o) for o, m in zip(geometry.window_offsets(7), mask[0], strict=True) if m}
    expected = {
        (r, c)
        for r in range(30)
        for c in range(40)
        if np.hypot((r + 0.5) * 8 - centre_rc[0] * 8, (c + 0.5) * 8 - centre_rc[1] * 8) <= 27.5
    }
    assert got == expected
    # bin row 7 is 3.4 bins (27.2 µm) above the centre, row 14 is 3.6 bins (28.8 µm) below it
    assert (7, 20) in got and (14, 20) not in got


def test_window_grows_for_small_bins():
    assert geometry.window_size(27.5 / 4) == 15
    assert geometry.window_size(27.5 / 16) == 7


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.73])
def test_bin_grid_pixels_match_bin_squares(mpp):
    shape = (701, 653)
    grid = geometry.BinGrid.for_image(shape, mpp=mpp, bin_size_um=8)
    assert grid.bin_px == pytest.approx(8 / mpp)
    assert grid.n_rows == int(np.floor(shape[0] * mpp / 8))
    labels = pixel_labels(grid, shape)
    boxes = grid.boxes_px(*np.divmod(np.arange(grid.n_rows * grid.n_cols), grid.n_cols))
    # a pixel belongs to the bin whose square contains its centre
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    for b in [0, 7, grid.n_cols + 3, grid.n_rows * grid.n_cols - 1]:
        x0, y0, x1, y1 = boxes[b]
        inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        assert np.array_equal(inside, labels == b)
    # every complete bin claims about bin_px^2 pixels, and pixels beyond the last bin are unclaimed
    counts = np.bincount(labels[labels >= 0])
    assert counts.min() >= np.floor(grid.bin_px) ** 2 and counts.max() <= np.ceil(grid.bin_px) ** 2
    assert (labels[int(np.ceil(grid.n_rows * grid.bin_px)) :, :] == -1).all()


def test_bin_means_average_the_claimed_pixels():
    grid = geometry.BinGrid.for_image((40, 40), mpp=0.73, bin_size_um=8)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(40, 40, 3)).astype(np.uint8)
    means = bin_means(image, grid)
    labels = pixel_labels(grid, (40, 40))
    assert means.shape == (3, grid.n_rows, grid.n_cols)
    assert means[1, 1, 2] == pytest.approx(image[labels == grid.n_cols + 2][:, 1].mean(), rel=1e-5)
