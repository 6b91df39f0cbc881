"""Finding and loading model weights: a local file, else the Hugging Face cache, else a download that is announced.

Nothing downloads silently. Gated models (UNI, UNI2-h, Virchow2, ...) need the user to accept the terms on the hub
and to log in (``hf auth login`` or ``HF_TOKEN``); the errors say so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_CHUNK = 1 << 24
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so that a multi-GB file is hashed once per session.

    The Hugging Face cache names each large file by its SHA-256; that name is used when it is one.
    """
    path = Path(path)
    resolved = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", resolved.name) and "blobs" in resolved.parts:
        return resolved.name
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(resolved, "rb") as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(constants.HF_HUB_OFFLINE)


def _access_help(repo_id: str, gated: bool) -> str:
    steps = (
        f"accept the model's terms at https://huggingface.co/{repo_id} with your account, then log in "
        "(`hf auth login`, or set HF_TOKEN) so that the weights can be fetched into the Hugging Face cache"
        if gated
        else f"let the weights be fetched once from https://huggingface.co/{repo_id} into the Hugging Face cache"
    )
    return f"To use it, {steps}; or download the weight file yourself and pass weights='path/to/file'."


def locate_weights(repo_id: str, filenames: tuple[str, ...], *, gated: bool, model: str) -> Path:
    """The weight file of a hub model: from the Hugging Face cache, else downloaded with a log line.

    Raises
    ------
    FileNotFoundError
        When the file is not cached and cannot be fetched (offline, no access, no network), with what to do.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            logger.info("Weights of %s from the Hugging Face cache: %s.", model, cached)
            return Path(cached)
    if hub_offline():
        raise FileNotFoundError(
            f"The weights of {model!r} ({repo_id}) are not in the Hugging Face cache and HF_HUB_OFFLINE is set. "
            + _access_help(repo_id, gated)
        )
    errors = []
    for filename in filenames:
        logger.warning(
            "Downloading the weights of %s (%s/%s) from the Hugging Face hub into its cache.", model, repo_id, filename
        )
        try:
            return Path(hf_hub_download(repo_id, filename))
        except Exception as error:  # noqa: BLE001 - every failure leads to the same advice, with its reason
            errors.append(f"{filename}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    raise FileNotFoundError(
        f"Could not get the weights of {model!r} from the Hugging Face hub ({'; '.join(errors)}). "
        + _access_help(repo_id, gated)
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a torch file (``.bin``, ``.pt``, ``.pth``) read without pickled
    code; a checkpoint that wraps the state dict (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weight file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            logger.info("Using the %r entry of the checkpoint %s.", wrapper, path.name)
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
    prefix = "module."  # saved from DataParallel / DistributedDataParallel
    if state and all(k.startswith(prefix) for k in state):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _listing(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}{', ...' if len(keys) > limit else ''} ({len(keys)})"


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, model: str) -> None:
    """Load ``state`` into ``module`` strictly, assigning the tensors (the module may live on the meta device).

    Raises
    ------
    ValueError
        Naming the missing, unexpected and mis-shaped keys when the weights belong to another architecture.
    """
    expected = module.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in {model}"
        for k in sorted(expected.keys() & state.keys())
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:4])}{'; ...' if len(shapes) > 4 else ''}")
        raise ValueError(f"The weights in {source} do not fit the {model} architecture: {'; '.join(parts)}.")
    module.load_state_dict(state, strict=True, assign=True)
    on_meta = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if on_meta:
        raise ValueError(f"The weights in {source} leave {model} incomplete: {_listing(on_meta)} were not loaded.")
    module.float()  # half-precision files run under autocast, not in half
