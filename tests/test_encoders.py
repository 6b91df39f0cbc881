"""The encoder registry, weight loading, and the torch encoder's handling of tokens, devices and precision."""

import logging

import numpy as np
import pytest
import torch

import histex as hx
from histex.encoders import MODELS, TorchEncoder, get_encoder
from histex.encoders._weights import file_digest

# Published values (model cards and official code), checked independently of the registry's own table.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PUBLISHED = {
    # name: (patch, tokens per 224 px tile incl. prefix, prefix tokens, dim, (mean, std), parameters in millions)
    "uni": (16, 197, 1, 1024, IMAGENET, 303.4),
    "uni2-h": (14, 265, 9, 1536, IMAGENET, 681.4),
    "h-optimus-0": (14, 261, 5, 1536, ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)), 1134.8),
    "h-optimus-1": (14, 261, 5, 1536, ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)), 1134.8),
    "virchow2": (14, 261, 5, 1280, IMAGENET, 631.2),
    "gigapath": (16, 197, 1, 1536, IMAGENET, 1135.0),
}


def small(name):
    """The registry entry with two transformer blocks: the same widths, tokens and key names, quick to build."""
    spec = MODELS[name]
    return spec if name == "resnet50" else spec.replace(depth=2)


def random_tiles(spec, n=2, seed=0):
    side = spec.tile_size + 2 * spec.margin
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


def reference_encoder(spec, module):
    """The encoder around an in-memory module, without going through any file."""
    return spec.encoder(module, digest="in-memory")


def test_registry_lists_every_model():
    assert hx.pp.available_models() == sorted(
        ["gigapath", "h-optimus-0", "h-optimus-1", "resnet50", "texture", "uni", "uni2-h", "virchow2"]
    )


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_vit_entries_match_the_published_architecture(name):
    patch, n_tokens, n_prefix, dim, (mean, std), millions = PUBLISHED[name]
    spec = MODELS[name]
    assert (spec.patch_size, spec.n_prefix_tokens, spec.feature_dim, spec.tile_size) == (patch, n_prefix, dim, 224)
    assert np.allclose(spec.mean, mean) and np.allclose(spec.std, std)
    # the full architecture, built without memory on the meta device, has the published size
    full = spec.build_module(meta=True)
    assert sum(p.numel() for p in full.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    module = small(name).build_module()
    assert module.num_prefix_tokens == n_prefix
    assert module.embed_dim == dim
    with torch.no_grad():
        tokens = module.forward_features(torch.zeros(1, 3, 224, 224))
    assert tokens.shape == (1, n_tokens, dim)


def test_resnet50_gives_its_stride_16_stage():
    spec = MODELS["resnet50"]
    encoder = reference_encoder(spec, spec.build_module())
    out = encoder.encode(random_tiles(spec, n=1))
    assert out.shape == (1, 1024, 14, 14)  # 224 px core + 2 x 32 px margin -> 18 x 18 map, cropped to the core


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("uni", ".bin"), ("resnet50", ".safetensors")]
    + [pytest.param(name, suffix, marks=pytest.mark.slow)  # the same path: the development tier takes two
       for name, suffix in [("uni2-h", ".pt"), ("h-optimus-0", ".safetensors"), ("h-optimus-1", ".bin"),
                            ("virchow2", ".pth"), ("gigapath", ".bin")]],
)  # fmt: skip
def test_weights_load_back_through_the_real_path(name, suffix, tmp_path):
    spec = small(name)
    torch.manual_seed(0)
    module = spec.build_module()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(module.state_dict(), str(path))
    else:
        torch.save(module.state_dict(), path)
    loaded = get_encoder(spec, weights=path)
    tiles = random_tiles(spec)
    expected = reference_encoder(spec, module).encode(tiles)
    got = loaded.encode(tiles)
    assert got.shape == (2, spec.feature_dim, 14 if spec.patch_size == 16 else 16, 14 if spec.patch_size == 16 else 16)
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.std() > 1e-3  # not a constant map that would match anything
    assert loaded.digest == file_digest(path)
    # a different random model gives different features: the comparison can fail
    torch.manual_seed(1)
    other = reference_encoder(spec, spec.build_module()).encode(tiles)
    assert not torch.allclose(other, expected, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_size_weights_load_back(name, tmp_path):
    """The published architectures at full size: a random state dict saved and loaded through ``weights=``."""
    spec = MODELS[name]
    torch.manual_seed(0)
    module = spec.build_module()
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file(module.state_dict(), str(path))
    tiles = random_tiles(spec, n=1)
    expected = reference_encoder(spec, module).encode(tiles)
    del module
    try:
        got = get_encoder(name, weights=path).encode(tiles)
    finally:
        path.unlink()  # up to 4.3 GB each: never more than one on disk
    assert torch.allclose(got, expected, atol=1e-4)


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    path = tmp_path / "resnet.bin"
    torch.save(MODELS["resnet50"].build_module().state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"do not fit the uni architecture: missing keys: blocks\.0\..*\(34\); unexpected keys: bn1\..*conv1\.weight",
    ):
        get_encoder(small("uni"), weights=path)
    # same family, other width: the shapes are named
    torch.save(small("uni").replace(embed_dim=512, num_heads=8).build_module().state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches: .*\(512,\) in the file, \(1024,\) in uni"):
        get_encoder(small("uni"), weights=path)


def test_a_checkpoint_wrapping_its_state_dict_is_unwrapped(tmp_path):
    spec = small("uni")
    module = spec.build_module()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}, "epoch": 3}, path)
    tiles = random_tiles(spec, n=1)
    assert torch.allclose(get_encoder(spec, weights=path).encode(tiles), reference_encoder(spec, module).encode(tiles))


def _fake_hub_cache(root, repo_id, filename, module):
    """The layout of the Hugging Face hub cache: refs/main names a snapshot that holds the file."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    torch.save(module.state_dict(), snapshot / filename)


def test_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = small("uni")
    module = spec.build_module()
    _fake_hub_cache(tmp_path, spec.repo_id, spec.filenames[0], module)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _no_download)
    with caplog.at_level(logging.INFO, logger="histex"):
        encoder = get_encoder(spec)
    assert "from the Hugging Face cache" in caplog.text
    tiles = random_tiles(spec, n=1)
    assert torch.allclose(encoder.encode(tiles), reference_encoder(spec, module).encode(tiles))


def _no_download(*args, **kwargs):
    raise AssertionError("no download may happen")


def test_offline_without_cached_weights_says_how_to_get_them(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _no_download)
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set.*accept the model's terms.*hf auth login"):
        get_encoder("uni")


def test_a_refused_download_is_announced_and_explained(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def refuse(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        raise PermissionError("401 Client Error: access to model MahmoodLab/uni is restricted")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)
    with caplog.at_level(logging.WARNING, logger="histex"), pytest.raises(FileNotFoundError) as info:
        get_encoder("uni")
    assert calls == [("MahmoodLab/uni", "pytorch_model.bin")]
    assert "Downloading the weights of uni" in caplog.text  # said before trying
    message = str(info.value)
    assert "restricted" in message and "https://huggingface.co/MahmoodLab/uni" in message and "weights=" in message


def test_weights_that_are_not_a_file_are_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        get_encoder("uni", weights=tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="weights= applies to the foundation models"):
        get_encoder("texture", weights=tmp_path / "missing.bin")


class PatchMean(torch.nn.Module):
    """A user's model: a strided convolution, one token per 16 px patch, as ``(batch, tokens, dim)``."""

    def __init__(self, patch=16, dim=6):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def test_user_modules_and_callables_plug_in():
    torch.manual_seed(0)
    module = PatchMean()
    encoder = get_encoder(module, patch_size=16, tile_size=64)
    tiles = random_tiles(encoder, n=3)
    out = encoder.encode(tiles)
    assert out.shape == (3, 6, 4, 4) and len(encoder.feature_names) == 6
    # a plain callable returning a (batch, dim, rows, cols) map, and one with a class token in front
    as_map = get_encoder(lambda x: module.proj(x), patch_size=16, tile_size=64)
    assert torch.allclose(as_map.encode(tiles), out)
    with_cls = get_encoder(lambda x: torch.cat([x.new_zeros(len(x), 1, 6), module(x)], 1), patch_size=16, tile_size=64)
    assert torch.allclose(with_cls.encode(tiles), out)
    assert encoder.digest is not None and as_map.digest is None
    with pytest.raises(ValueError, match="needs its patch_size"):
        get_encoder(module)
    wrong = get_encoder(module, patch_size=8, tile_size=64)
    with pytest.raises(ValueError, match="expected 64 patch tokens of 8 px"):
        wrong.encode(tiles)


def test_a_user_cnn_with_batch_norm_gets_a_digest():
    """Batch norm keeps a 0-d counter among its buffers; the digest covers it, and changes with the weights."""
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 16, stride=16), torch.nn.BatchNorm2d(4))
    encoder = get_encoder(cnn, patch_size=16, tile_size=64)
    first = encoder.digest
    assert first == get_encoder(cnn, patch_size=16, tile_size=64).digest
    with torch.no_grad():
        cnn[0].weight.add_(1.0)  # trained in place: the features must not be reused
    assert encoder.digest != first
    assert encoder.encode(random_tiles(encoder, n=2)).shape == (2, 4, 4, 4)


def test_bfloat16_autocast_on_cpu_matches_float32():
    spec = small("uni")
    torch.manual_seed(0)
    module = spec.build_module()
    tiles = random_tiles(spec, n=1)
    full = reference_encoder(spec, module).to(torch.device("cpu"), precision="float32").encode(tiles)
    half = reference_encoder(spec, module).to(torch.device("cpu"), precision="bfloat16").encode(tiles)
    assert half.dtype == torch.float32
    assert np.corrcoef(full.ravel(), half.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="precision must be one of"):
        reference_encoder(spec, module).to(torch.device("cpu"), precision="half")


@pytest.mark.gpu
def test_cuda_encoder_matches_cpu():
    spec = small("uni")
    torch.manual_seed(0)
    module = spec.build_module()
    tiles = random_tiles(spec, n=4)
    cpu = reference_encoder(spec, module).to(torch.device("cpu"), precision="float32").encode(tiles)
    gpu = TorchEncoder.encode(
        reference_encoder(spec, module).to(torch.device("cuda"), precision="auto", channels_last=True), tiles
    ).cpu()
    assert np.corrcoef(cpu.ravel(), gpu.ravel())[0, 1] > 0.99


@pytest.mark.gpu
def test_compiled_cuda_encoder_matches_eager():
    torch.manual_seed(0)
    module = PatchMean()
    tiles = random_tiles(get_encoder(module, patch_size=16, tile_size=64), n=4)
    eager = get_encoder(module, patch_size=16, tile_size=64).to(torch.device("cuda"), precision="float32")
    compiled = get_encoder(PatchMean(), patch_size=16, tile_size=64)
    compiled.module.load_state_dict(module.state_dict())
    compiled.to(torch.device("cuda"), precision="float32", compile=True)
    assert torch.allclose(eager.encode(tiles), compiled.encode(tiles), atol=1e-4)
