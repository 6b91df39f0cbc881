"""A trained model on disk: a folder of safetensors weights and a JSON manifest, written atomically.

Layout::

    model/
        manifest.json          schema, versions, settings, genes, scalings, encoder, training data, history
        state_0.safetensors    one file per ensemble state: the network's state dict
        ...
        image_state_0.safetensors   the image-only states, for a model that keeps them (he_only="image_states")
        arrays.safetensors     larger arrays of the manifest (principal axes of the features), if any

Loading never unpickles: safetensors holds only tensors, JSON only plain values. Every file's SHA-256 is in the
manifest, so that a truncated or altered file is refused before any of it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.safetensors"


def write_model(
    path: str | Path,
    manifest: dict,
    weights: dict[str, dict[str, torch.Tensor]],
    arrays: dict[str, np.ndarray],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the model folder at ``path``: complete, or not at all.

    ``weights`` maps a file name (without ``.safetensors``) to a state dict; ``arrays`` go into one more file.
    The files go into a hidden folder beside ``path`` which is renamed to ``path`` once everything is written; with
    ``overwrite``, an existing folder is moved aside first and removed only after the rename.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or choose another path.")
    if path.exists() and not (path / MANIFEST).is_file():
        raise ValueError(f"{path} exists and is not a saved histex model; it is left alone. Choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        files = {}
        for stem, tensors in weights.items():
            name = f"{stem}.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(staging / name))
            files[name] = _sha256(staging / name)
        for file in staging.iterdir():
            file.chmod(0o644)  # safetensors writes owner-only files; a model folder is meant to be shared
        if arrays:
            save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(staging / ARRAYS))
            files[ARRAYS] = _sha256(staging / ARRAYS)
        full = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
        (staging / MANIFEST).write_text(json.dumps(full, indent=1, allow_nan=True))
        _fsync_folder(staging)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(path, old)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_model(path: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict[str, np.ndarray]]:
    """The manifest, the state dicts (by file name without ``.safetensors``) and the arrays of a model folder,
    checked file by file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir() or not (path / MANIFEST).is_file():
        what = "does not exist" if not path.exists() else f"has no {MANIFEST}"
        raise ValueError(f"{path} is not a saved histex model: it {what}. Save one with HistexModel.save(path).")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path / MANIFEST} is not valid JSON ({error}); the model folder is damaged.") from error
    schema = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(schema, int):  # a damaged file, not a wrong argument: ValueError like the others
        raise ValueError(f"{path / MANIFEST} has no schema_version: it is not a histex model manifest.")
    if schema > SCHEMA_VERSION:
        raise ValueError(
            f"{path} was saved by histex {manifest.get('histex_version', '?')} in model schema {schema}; this histex "
            f"reads schema {SCHEMA_VERSION} and older. Upgrade histex (pip install -U histex) to load it."
        )
    files = manifest.get("files", {})
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"{file} is missing: the model folder is incomplete. Save the model again.")
        if _sha256(file) != digest:
            raise ValueError(
                f"{file} is truncated or corrupt (its SHA-256 differs from the manifest's). Save the model again, "
                "or copy the folder anew."
            )
    try:
        weights = {name.removesuffix(".safetensors"): load_file(str(path / name)) for name in files if name != ARRAYS}
        arrays = {k: v.numpy() for k, v in load_file(str(path / ARRAYS)).items()} if ARRAYS in files else {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"The weights in {path} cannot be read ({error}). Save the model again.") from error
    return manifest, weights, arrays


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    """Flush the folder's files to disk before it takes its final name."""
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
