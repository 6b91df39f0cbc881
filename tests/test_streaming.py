"""Feature extraction as a stream: geometry at any pixel size, shifted tilings, the backing store, reuse, workers,
memory back-off and bad images."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import torch
from helpers import encode_image, fingerprint
from spatialdata.models import Image2DModel

import histex as hx
from histex import geometry
from histex.encoders import TorchEncoder
from histex.metrics import tile_artefact
from histex.pp._tiling import EncodeStats, _encode_with_backoff

QUADRANT_COLOURS = np.array([[[230, 80, 120], [90, 200, 60]], [[40, 60, 210], [250, 240, 30]]], dtype=np.uint8)


def image_sdata(image_yxc: np.ndarray, *, pyramid: bool = True, key: str = "he") -> sd.SpatialData:
    """A SpatialData with one image (and a pyramid, as readers write them)."""
    element = Image2DModel.parse(
        np.ascontiguousarray(np.moveaxis(image_yxc, -1, 0)),
        dims=("c", "y", "x"),
        scale_factors=[2, 2] if pyramid else None,
        chunks=(image_yxc.shape[-1], 512, 512),
    )
    return sd.SpatialData(images={key: element})


class PatchConv(torch.nn.Module):
    """Each token sees only its own patch: a strided convolution."""

    def __init__(self, patch: int):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Conv2d(3, 5, patch, stride=patch)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.73])
def test_feature_change_falls_on_the_bin_boundary(patch, mpp):
    """Quadrants of four colours that meet at a bin corner (row 7, column 11 of 8 µm bins, in µm): the features
    change between bins 6 and 7 and between columns 10 and 11, and nowhere else."""
    size_um, k_row, k_col = 200.0, 7, 11
    n = round(size_um / mpp)
    centres_um = (np.arange(n) + 0.5) * mpp
    bottom = centres_um >= k_row * 8
    right = centres_um >= k_col * 8
    image = QUADRANT_COLOURS[bottom[:, None].astype(int), right[None, :].astype(int)]
    sdata = image_sdata(image)
    key = hx.pp.extract_features(
        sdata, model=PatchConv(patch), patch_size=patch, tile_size=4 * patch, mpp=mpp, show_progress=False
    )
    feats = np.asarray(sdata.images[key].data[:5])
    grid = geometry.BinGrid.for_image(image.shape[:2], mpp=mpp, bin_size_um=8)
    assert feats.shape[1:] == grid.shape
    # the jump between neighbouring columns (rows) is largest across the boundary
    col_jump = np.abs(np.diff(feats, axis=2)).sum(axis=(0, 1))
    row_jump = np.abs(np.diff(feats, axis=1)).sum(axis=(0, 2))
    assert np.argmax(col_jump) == k_col - 1 and np.argmax(row_jump) == k_row - 1
    # bins clear of the boundary carry exactly their quadrant's features; the bins beside it, sampled linearly
    # across the edge in their outermost pixel column, stay nearer their own quadrant than any other
    pure = {(i, j): feats[:, 0 if i == 0 else -1, 0 if j == 0 else -1] for i in (0, 1) for j in (0, 1)}
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            side = (int(r >= k_row), int(c >= k_col))
            err = np.abs(feats[:, r, c] - pure[side]).max()
            if r in (k_row - 1, k_row) or c in (k_col - 1, k_col):
                across = min(np.abs(feats[:, r, c] - v).max() for k, v in pure.items() if k != side)
                assert err < across, (r, c, err, across)
            else:
                assert err < 1e-3, (r, c, err)


def stationary_texture(size: int, seed: int = 0) -> np.ndarray:
    """A statistically uniform H&E-like texture: no place in it is special, so any periodic pattern in its features
    comes from the tiling."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(3, 3, 0))
    noise = (noise - noise.mean()) / noise.std()
    base = np.array([200, 140, 190], dtype=float)
    return np.clip(base + 35 * noise, 0, 255).astype(np.uint8)


def tiny_vit(patch: int = 16, tile: int = 64) -> TorchEncoder:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch16_224", img_size=tile, patch_size=patch, embed_dim=48, depth=2, num_heads=3, num_classes=0
    )
    with torch.no_grad():
        vit.pos_embed.normal_(0, 1.0)  # a strong position-in-tile signal, as pretrained ViTs have
    return TorchEncoder(
        vit, patch_size=patch, tile_size=tile, n_prefix_tokens=1, name="tinyvit", forward="forward_features"
    )


def test_shifted_tilings_remove_the_tile_pattern():
    image = stationary_texture(1024)
    grid = geometry.BinGrid.for_image(image.shape[:2], mpp=0.5, bin_size_um=8)
    encoder = tiny_vit()
    artefact = {}
    for n_shifts in (1, 4, 16):
        feats = encode_image(image, grid, encoder, mpp=0.5, bin_size_um=8, n_shifts=n_shifts, show_progress=False)
        artefact[n_shifts] = tile_artefact(feats, period=4)
    floor = 16 / (grid.n_rows * grid.n_cols)  # what sampling noise alone gives
    assert artefact[1] > 0.5  # the position within the tile dominates
    assert artefact[4] < 0.75 * artefact[1]  # two positions per axis averaged (measured 0.89 -> 0.59)
    assert artefact[16] < 2 * floor  # all four positions per axis averaged: the pattern is gone (measured 0.0036)


def test_texture_features_do_not_depend_on_the_tiling():
    """The texture encoder sees its context through a margin: shifting the tiles changes nothing."""
    image = stationary_texture(400)
    grid = geometry.BinGrid.for_image(image.shape[:2], mpp=0.5, bin_size_um=8)
    one = encode_image(image, grid, hx.encoders.TextureEncoder(), mpp=0.5, bin_size_um=8,
                                       show_progress=False)  # fmt: skip
    four = encode_image(image, grid, hx.encoders.TextureEncoder(), mpp=0.5, bin_size_um=8,
                                        n_shifts=4, show_progress=False)  # fmt: skip
    assert np.allclose(one, four, atol=1e-4)
    with pytest.raises(ValueError, match="n_shifts must be a square number"):
        hx.pp.extract_features(image_sdata(image), mpp=0.5, n_shifts=3, show_progress=False)


def test_workers_give_the_same_features():
    sdata = image_sdata(stationary_texture(700))
    a = hx.pp.extract_features(sdata, mpp=0.5, num_workers=0, key_added="a_features", show_progress=False)
    b = hx.pp.extract_features(sdata, mpp=0.5, num_workers=2, key_added="b_features", show_progress=False)
    assert np.array_equal(np.asarray(sdata.images[a].data), np.asarray(sdata.images[b].data))


def test_features_of_a_backed_sdata_go_into_its_store(tmp_path, caplog):
    path = tmp_path / "section.zarr"
    image_sdata(stationary_texture(900)).write(path)
    sdata = sd.read_zarr(path)
    in_memory = image_sdata(stationary_texture(900))
    with caplog.at_level(logging.INFO, logger="histex"):
        key = hx.pp.extract_features(sdata, mpp=0.5, show_progress=False)
    assert "into the SpatialData's store" in caplog.text
    assert f"images/{key}" in sdata.elements_paths_on_disk()
    assert "labels/he_texture_tissue" in sdata.elements_paths_on_disk()
    assert "from-zarr" in str(sdata.images[key].data.name) or "zarr" in str(sdata.images[key].data.dask)
    reference = hx.pp.extract_features(in_memory, mpp=0.5, show_progress=False)
    assert np.allclose(np.asarray(sdata.images[key].data), np.asarray(in_memory.images[reference].data))
    # read back from disk: the same features, the settings kept, and a second call reuses them
    again = sd.read_zarr(path)
    assert np.allclose(np.asarray(again.images[key].data), np.asarray(in_memory.images[reference].data))
    assert again.attrs["histex"]["features"][key]["model"] == "texture"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="histex"):
        assert hx.pp.extract_features(again, mpp=0.5, show_progress=False) == key
    assert "Reusing the features" in caplog.text


def test_overwriting_backed_features_keeps_the_old_ones_until_the_new_are_done(tmp_path, monkeypatch):
    path = tmp_path / "section.zarr"
    image_sdata(stationary_texture(600)).write(path)
    sdata = sd.read_zarr(path)
    key = hx.pp.extract_features(sdata, mpp=0.5, show_progress=False)
    old = np.asarray(sdata.images[key].data).copy()
    before = fingerprint(sdata)

    def broken(*args, **kwargs):
        raise RuntimeError("the encoder failed half way")

    monkeypatch.setattr(hx.pp._features, "encode_blocks", broken)
    with pytest.raises(RuntimeError, match="half way"):
        hx.pp.extract_features(sdata, mpp=0.5, n_shifts=4, show_progress=False)
    assert fingerprint(sdata) == before
    assert np.array_equal(np.asarray(sdata.images[key].data), old)
    reread = sd.read_zarr(path)  # on disk too: the old features, their mask and settings, and no staging left
    assert sorted(reread.images) == ["he", key] and np.array_equal(np.asarray(reread.images[key].data), old)
    assert reread.attrs["histex"]["features"][key]["n_shifts"] == 1
    monkeypatch.undo()
    hx.pp.extract_features(sdata, mpp=0.5, n_shifts=4, show_progress=False)  # replaces them, on disk as well
    reread = sd.read_zarr(path)
    assert sorted(reread.images) == ["he", key] and sorted(reread.labels) == ["he_texture_tissue"]
    assert reread.attrs["histex"]["features"][key]["n_shifts"] == 4
    assert np.allclose(np.asarray(reread.images[key].data), np.asarray(sdata.images[key].data))
    assert "zarr" in str(sdata.images[key].data.dask) and f"images/{key}" in sdata.elements_paths_on_disk()


def test_second_call_reuses_and_overwrite_recomputes(monkeypatch, caplog):
    sdata = image_sdata(stationary_texture(500))
    key = hx.pp.extract_features(sdata, mpp=0.5, show_progress=False)
    run = sdata.attrs["histex"]["feature_runs"][key]
    assert run["n_tiles"] == 4 and run["n_bins"] == 31 * 31  # 31 x 31 bins in 2 x 2 tiles of 16 x 16 bins
    assert run["device"] == "cpu" and run["tiles_per_s"] > 0
    calls = []
    real = hx.pp._features.encode_blocks

    def counting(*args, **kwargs):
        calls.append(len(kwargs["tiling"].shifts))
        return real(*args, **kwargs)

    monkeypatch.setattr(hx.pp._features, "encode_blocks", counting)
    with caplog.at_level(logging.INFO, logger="histex"):
        assert hx.pp.extract_features(sdata, mpp=0.5, show_progress=False) == key
    assert calls == [] and "Reusing the features" in caplog.text
    hx.pp.extract_features(sdata, mpp=0.5, overwrite=True, show_progress=False)
    hx.pp.extract_features(sdata, mpp=0.5, n_shifts=4, show_progress=False)  # other settings: recomputed
    hx.pp.extract_features(sdata, mpp=0.52, n_shifts=4, show_progress=False)  # another pixel size too
    assert calls == [1, 4, 4]
    assert sdata.attrs["histex"]["features"][key]["n_shifts"] == 4
    assert sdata.attrs["histex"]["features"][key]["mpp"] == 0.52


class FlakyMemory(hx.encoders.Encoder):
    """Runs out of memory above 3 tiles per call."""

    name, patch_size, tile_size = "flaky", 16, 32

    @property
    def feature_names(self):
        return ["mean"]

    def encode(self, tiles):
        if len(tiles) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tiles.float().mean(dim=1, keepdim=True).reshape(len(tiles), 1, 2, 16, 2, 16).mean(dim=(3, 5))


def test_out_of_memory_halves_the_batch_and_goes_on(caplog):
    tiles = torch.randint(0, 256, (11, 3, 32, 32), dtype=torch.uint8)
    stats = EncodeStats(batch_size=16)
    with caplog.at_level(logging.WARNING, logger="histex"):
        out = _encode_with_backoff(FlakyMemory(), tiles, stats)
    assert stats.batch_size == 2 and stats.oom_backoffs == 3
    assert "Out of memory with 16 tiles per batch; going on with 8" in caplog.text
    expected = tiles.float().mean(dim=1, keepdim=True).reshape(11, 1, 2, 16, 2, 16).mean(dim=(3, 5))
    assert torch.allclose(out, expected)
    # end to end: the features are those of a run that never ran out of memory
    image = stationary_texture(300)
    grid = geometry.BinGrid.for_image(image.shape[:2], mpp=0.5, bin_size_um=8)
    run = {"mpp": 0.5, "bin_size_um": 8, "show_progress": False}
    flaky = encode_image(image, grid, FlakyMemory(), batch_size=32, **run)
    small = encode_image(image, grid, FlakyMemory(), batch_size=2, **run)
    assert np.allclose(flaky, small)


@pytest.mark.parametrize("kind", ["rgba", "uint16", "float01", "float255"])
def test_other_image_types_are_converted_with_a_log_line(kind, caplog):
    rgb = stationary_texture(300)
    reference = image_sdata(rgb)
    key = hx.pp.extract_features(reference, mpp=0.5, show_progress=False)
    image = {
        "rgba": np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1),
        "uint16": rgb.astype(np.uint16) * 257,
        "float01": rgb.astype(np.float32) / 255,
        "float255": rgb.astype(np.float64),
    }[kind]
    sdata = image_sdata(image, pyramid=False)
    with caplog.at_level(logging.INFO, logger="histex"):
        assert hx.pp.extract_features(sdata, mpp=0.5, show_progress=False) == key
    assert {"rgba": "dropping alpha", "uint16": "divided by 257", "float01": "scaled by 255",
            "float255": "scaled by 1"}[kind] in caplog.text  # fmt: skip
    assert np.allclose(np.asarray(sdata.images[key].data), np.asarray(reference.images[key].data), atol=1e-4)


def test_bad_images_and_devices_leave_the_sdata_unchanged(tmp_path):
    grey = image_sdata(stationary_texture(200)[..., :1], pyramid=False)
    before = fingerprint(grey)
    with pytest.raises(ValueError, match="has 1 channel"):
        hx.pp.extract_features(grey, mpp=0.5, show_progress=False)
    assert fingerprint(grey) == before

    sdata = image_sdata(stationary_texture(200))
    before = fingerprint(sdata)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            hx.pp.extract_features(sdata, mpp=0.5, device="cuda", show_progress=False)
        assert fingerprint(sdata) == before
    wrong = tmp_path / "wrong.bin"
    torch.save({"w": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="do not fit the uni architecture"):
        hx.pp.extract_features(sdata, mpp=0.5, model="uni", weights=wrong, show_progress=False)
    with pytest.raises(ValueError, match="smaller than one 8"):
        hx.pp.extract_features(sdata, mpp=0.01, show_progress=False)
    assert fingerprint(sdata) == before and "histex" not in sdata.attrs


def test_output_keys_never_replace_foreign_elements():
    sdata = image_sdata(stationary_texture(200))
    sdata.images["other"] = Image2DModel.parse(np.zeros((3, 10, 10), np.uint8), dims=("c", "y", "x"))
    before = fingerprint(sdata)
    with pytest.raises(ValueError, match="would replace the input image"):
        hx.pp.extract_features(sdata, image_key="he", mpp=0.5, key_added="he", show_progress=False)
    with pytest.raises(ValueError, match="was not written by extract_features"):
        hx.pp.extract_features(sdata, image_key="he", mpp=0.5, key_added="other", show_progress=False)
    assert fingerprint(sdata) == before
    key = hx.pp.extract_features(sdata, image_key="he", mpp=0.5, key_added="other", overwrite=True,
                                 show_progress=False)  # fmt: skip
    assert sdata.images[key].shape[0] == 28


def test_an_image_smaller_than_one_tile_is_padded(caplog):
    image = stationary_texture(100)  # 50 µm: 6 x 6 bins, less than one 14 x 14-bin tile
    sdata = image_sdata(image, pyramid=False)
    with caplog.at_level(logging.INFO, logger="histex"):
        key = hx.pp.extract_features(sdata, model=PatchConv(16), patch_size=16, mpp=0.5, show_progress=False)
    assert "smaller than one tile" in caplog.text
    feats = np.asarray(sdata.images[key].data)
    assert feats.shape == (8, 6, 6) and np.isfinite(feats).all()


BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "features.py"


@pytest.mark.slow
@pytest.mark.realdata
def test_peak_memory_does_not_grow_with_slide_area():
    """A slide with four times the area (real H&E, mirrored) costs about the same memory: the image is streamed
    from the zarr store and the features are written back to it block by block."""
    out = subprocess.run([sys.executable, str(BENCHMARK), "--slide-px", "3000", "6000", "--json"], check=True,
                         capture_output=True, text=True)  # fmt: skip
    rows = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("JSON ")).removeprefix("JSON "))
    small, large = (r["peak_rss_mib"] for r in rows)
    image_mib = 6000 * 6000 * 3 / 2**20  # what holding the larger image alone would add: 103 MiB
    assert large - small < 0.3 * image_mib, (small, large)


@pytest.mark.gpu
def test_extraction_on_cuda_matches_cpu():
    """bfloat16 autocast, channels-last, pinned memory and worker processes give the CPU's features."""
    sdata = image_sdata(stationary_texture(900))
    cpu = hx.pp.extract_features(sdata, model=tiny_vit(), mpp=0.5, device="cpu", precision="float32",
                                 key_added="cpu_features", show_progress=False)  # fmt: skip
    gpu = hx.pp.extract_features(sdata, model=tiny_vit(), mpp=0.5, device="cuda", num_workers=2, batch_size=7,
                                 key_added="gpu_features", show_progress=False)  # fmt: skip
    a, b = np.asarray(sdata.images[cpu].data), np.asarray(sdata.images[gpu].data)
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_blocks_survive_pickling_for_spawned_workers(tmp_path):
    """macOS and Windows start DataLoader workers by spawning: the dataset travels pickled, with its lazy image."""
    import pickle

    from histex.pp._image import image_source
    from histex.pp._tiling import BlockTiles, plan_tiling

    path = tmp_path / "s.zarr"
    image_sdata(stationary_texture(600)).write(path)
    element = sd.read_zarr(path).images["he"]
    source = image_source(element, 0.5)
    grid = geometry.BinGrid.for_image(source.shape_yx, mpp=0.5, bin_size_um=8)
    encoder = hx.encoders.TextureEncoder()
    tiling, _ = plan_tiling(grid, encoder, n_shifts=1, batch_size=8, n_features=28)
    dataset = BlockTiles(source, grid, tiling, 16, 0.5)
    clone = pickle.loads(pickle.dumps(dataset))
    a, b = dataset[len(dataset) - 1], clone[len(dataset) - 1]
    assert torch.equal(a["tiles"], b["tiles"]) and torch.equal(a["rgb"], b["rgb"])
    assert a["tiles"].shape[1:] == (3, 256 + 2 * 64, 256 + 2 * 64)


def test_pyramid_levels_are_used_by_their_transformations():
    from histex.pp._image import image_source

    rgb = stationary_texture(600)
    element = Image2DModel.parse(np.moveaxis(rgb, -1, 0), dims=("c", "y", "x"), scale_factors=[2, 3])
    source = image_source(element, 0.25)
    assert source.factors == [1, 2, 6]
    assert source.level_for(0.5) == 1 and source.level_for(0.4) == 0 and source.level_for(2.0) == 2
    # reading through the 0.5 µm/px level gives the features of the full-resolution image, within rounding
    single = image_sdata(rgb, pyramid=False)
    pyramid = sd.SpatialData(images={"he": element})
    a = hx.pp.extract_features(single, mpp=0.25, show_progress=False)
    b = hx.pp.extract_features(pyramid, mpp=0.25, show_progress=False)
    x, y = np.asarray(single.images[a].data), np.asarray(pyramid.images[b].data)
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.999
