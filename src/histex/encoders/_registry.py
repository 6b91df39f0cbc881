"""The pathology foundation models histex knows, with their published architectures and input normalisation.

Values are those of the model cards and the official code (UNI: mahmoodlab/UNI; UNI2-h: MahmoodLab/UNI2-h model
card; H-optimus-0: bioptimus/releases; H-optimus-1: bioptimus/H-optimus-1 model card; Virchow2: paige-ai/Virchow2 config; Prov-GigaPath: prov-gigapath config).
timm's own pretrained config of a bare architecture carries other normalisation values (0.5 for ``vit_*_224``,
518 px for DINOv2), so each entry states its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from histex.encoders._torch import IMAGENET_MEAN, IMAGENET_STD, TorchEncoder
from histex.encoders._weights import file_digest, load_weights, locate_weights, read_state_dict

logger = logging.getLogger(__name__)


def _swiglu() -> dict:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


def _import_timm():
    try:
        import timm
    except ImportError as error:  # pragma: no cover - timm is a dependency, but may be removed
        raise ImportError("Foundation models need timm: pip install timm (or pip install histex).") from error
    return timm


class _FeatureMap(torch.nn.Module):
    """A CNN's intermediate feature map (e.g. ResNet stage 3, stride 16) as the encoder's output."""

    def __init__(self, model: torch.nn.Module, index: int):
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_intermediates(x, indices=[self.index], intermediates_only=True, stop_early=True)[0]


@dataclass(frozen=True)
class FoundationModel:
    """A registry entry: how to build a model with timm, feed it, and read one token per bin out of it.

    Parameters
    ----------
    name
        Registry name (``model=`` of :func:`histex.pp.extract_features`).
    architecture
        timm architecture; ``timm_kwargs`` override its arguments as the model card does.
    repo_id, filenames
        Hugging Face hub repository and the weight files it holds, in order of preference.
    gated
        Whether the hub repository asks users to accept terms before download.
    patch_size, tile_size, margin
        Pixels per token, per tile, and of context per side (dropped after encoding).
    mean, std
        Input normalisation of the published model.
    n_prefix_tokens
        Class and register tokens before the patch tokens.
    feature_dim
        Channels per token.
    stage
        For CNNs: the index of the intermediate feature map taken (ResNet stage 3 has stride 16).
    """

    name: str
    architecture: str
    repo_id: str
    filenames: tuple[str, ...]
    gated: bool
    patch_size: int
    feature_dim: int
    n_prefix_tokens: int = 0
    tile_size: int = 224
    margin: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    timm_kwargs: dict = field(default_factory=dict)
    extra_kwargs: Callable[[], dict] | None = None  # kwargs that need timm imported (layer classes)
    stage: int | None = None
    description: str = ""

    def replace(self, **timm_kwargs) -> FoundationModel:
        """The same entry with some architecture arguments changed (e.g. ``depth=2`` for a quick check)."""
        return dataclasses.replace(self, timm_kwargs={**self.timm_kwargs, **timm_kwargs})

    def build_module(self, *, meta: bool = False) -> torch.nn.Module:
        """The architecture as a timm model, randomly initialised (or on the meta device, for loading weights)."""
        timm = _import_timm()
        kwargs = {**self.timm_kwargs, **(self.extra_kwargs() if self.extra_kwargs else {})}
        if meta:
            with torch.device("meta"):
                return timm.create_model(self.architecture, pretrained=False, **kwargs)
        return timm.create_model(self.architecture, pretrained=False, **kwargs)

    def weights_file(self, weights: str | Path | None) -> Path:
        """The given file, else the Hugging Face cache, else an announced download (see :mod:`._weights`)."""
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"weights={str(weights)!r} is not a file.")
            return path
        return locate_weights(self.repo_id, self.filenames, gated=self.gated, model=self.name)

    def encoder(
        self, weights: str | Path | torch.nn.Module | None = None, *, digest: str | None = None
    ) -> TorchEncoder:
        """The encoder with loaded weights: from a file path, the hub cache, or a module of this architecture."""
        if isinstance(weights, torch.nn.Module):
            module = weights
        else:
            path = self.weights_file(weights)
            module = self.build_module(meta=True)
            load_weights(module, read_state_dict(path), source=str(path), model=self.name)
            digest = digest or file_digest(path)
        if self.stage is not None:
            module, forward = _FeatureMap(module, self.stage), None
        else:
            forward = "forward_features"  # final-norm tokens: prefix tokens, then patches
        return TorchEncoder(
            module,
            patch_size=self.patch_size,
            tile_size=self.tile_size,
            margin=self.margin,
            mean=self.mean,
            std=self.std,
            n_prefix_tokens=self.n_prefix_tokens,
            feature_dim=self.feature_dim,
            name=self.name,
            forward=forward,
            digest=digest,
        )


# H-optimus-1 is H-optimus-0's architecture and normalisation with other weights
_H_OPTIMUS_0 = FoundationModel(
    name="h-optimus-0",
    architecture="vit_giant_patch14_reg4_dinov2",
    repo_id="bioptimus/H-optimus-0",
    filenames=("pytorch_model.bin", "model.safetensors"),
    gated=True,
    patch_size=14,
    feature_dim=1536,
    n_prefix_tokens=5,
    mean=(0.707223, 0.578729, 0.703617),
    std=(0.211883, 0.230117, 0.177517),
    timm_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": False},
    description="H-optimus-0, ViT-g/14 with 4 register tokens (Bioptimus), 1536 features",
)


MODELS: dict[str, FoundationModel] = {
    m.name: m
    for m in [
        FoundationModel(
            name="uni",
            architecture="vit_large_patch16_224",
            repo_id="MahmoodLab/uni",
            filenames=("pytorch_model.bin",),
            gated=True,
            patch_size=16,
            feature_dim=1024,
            n_prefix_tokens=1,
            timm_kwargs={
                "img_size": 224,
                "patch_size": 16,
                "init_values": 1e-5,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            description="UNI, ViT-L/16 (Chen et al. 2024), 1024 features",
        ),
        FoundationModel(
            name="uni2-h",
            architecture="vit_giant_patch14_224",
            repo_id="MahmoodLab/UNI2-h",
            filenames=("pytorch_model.bin",),
            gated=True,
            patch_size=14,
            feature_dim=1536,
            n_prefix_tokens=9,
            timm_kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "num_classes": 0,
                "no_embed_class": True,
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            extra_kwargs=_swiglu,
            description="UNI2-h, ViT-H/14 with 8 register tokens, 1536 features",
        ),
        _H_OPTIMUS_0,
        dataclasses.replace(
            _H_OPTIMUS_0,
            name="h-optimus-1",
            repo_id="bioptimus/H-optimus-1",
            description="H-optimus-1, ViT-g/14 with 4 register tokens (Bioptimus, trained on over a million slides), "
            "1536 features",
        ),
        FoundationModel(
            name="virchow2",
            architecture="vit_huge_patch14_224",
            repo_id="paige-ai/Virchow2",
            filenames=("pytorch_model.bin", "model.safetensors"),
            gated=True,
            patch_size=14,
            feature_dim=1280,
            n_prefix_tokens=5,
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "num_classes": 0,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                "dynamic_img_size": True,
                "reg_tokens": 4,
            },
            extra_kwargs=_swiglu,
            description="Virchow2, ViT-H/14 with class and 4 register tokens (Paige), 1280 features",
        ),
        FoundationModel(
            name="gigapath",
            architecture="vit_giant_patch14_dinov2",
            repo_id="prov-gigapath/prov-gigapath",
            filenames=("pytorch_model.bin",),
            gated=True,
            patch_size=16,  # the published tile encoder overrides the architecture's 14 px patches
            feature_dim=1536,
            n_prefix_tokens=1,
            timm_kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            description="Prov-GigaPath tile encoder, ViT-g with 16 px patches, 1536 features",
        ),
        FoundationModel(
            name="resnet50",
            architecture="resnet50",
            repo_id="timm/resnet50.a1_in1k",
            filenames=("model.safetensors", "pytorch_model.bin"),
            gated=False,
            patch_size=16,
            feature_dim=1024,
            margin=32,  # two bins of context: a CNN's features fade towards zero padding at tile borders
            stage=3,
            description="ResNet-50 (ImageNet, timm), stage-3 feature map at stride 16, 1024 features",
        ),
    ]
}
