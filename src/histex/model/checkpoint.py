"""Checkpoints of a training run: everything needed to resume it exactly, in one safetensors file.

A checkpoint holds the parameters of every state, the optimiser's moments, the random generators (dropout masks,
each state's order of spots) and the history so far. It is written to a temporary file and moved over the
previous one (an atomic rename), so that an interruption at any moment leaves the last complete checkpoint.
Nothing is pickled: tensors go into safetensors, the rest into its JSON metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
_SCHEMA = 1


@dataclass
class TrainingState:
    """Where a training run stands after ``epoch`` epochs."""

    epoch: int
    loss: np.ndarray  # (n_states, epochs) float32, filled up to ``epoch``
    validation: np.ndarray  # (n_states, epochs or 0)
    best_loss: np.ndarray  # (n_states,) float64
    best_epoch: np.ndarray  # (n_states,) int
    best: dict[str, torch.Tensor] | None  # parameters of each state's best epoch (stopping rule)
    stopped: bool  # the stopping rule ended the run


class Checkpoint:
    """Saves a training run every ``every`` epochs (and at its end) into ``folder``, and resumes from it.

    A checkpoint belongs to one problem and one set of settings: resuming from another's is refused.
    """

    def __init__(self, folder: str | Path, every: int = 5):
        if int(every) != every or every < 1:
            raise ValueError(f"checkpoint_every must be a positive number of epochs, got {every}.")
        self.folder = Path(folder)
        self.every = int(every)
        self.fingerprint: dict | None = None

    @property
    def path(self) -> Path:
        """The checkpoint file in the folder."""
        return self.folder / CHECKPOINT_FILE

    def bind(self, config, targets: torch.Tensor, problems) -> None:
        """What the checkpoint must match to be resumed: the settings and a digest of the data."""
        skip = {"device", "show_progress", "predict_batch_size"}
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k not in skip}
        digest = hashlib.sha256(targets.detach().cpu().numpy().tobytes())
        for p in problems:
            digest.update(np.asarray(p.features.shape, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(p.spot_rc, dtype=np.float64).tobytes())
        self.fingerprint = {"settings": settings, "data": digest.hexdigest()}

    def due(self, epoch: int, last: int) -> bool:
        """Whether ``epoch`` (of ``last``) is one to checkpoint: every ``every`` epochs and the last."""
        return epoch % self.every == 0 or epoch == last

    def save(self, state: TrainingState, ensemble, optimiser, orders) -> None:
        """Write the training state, the ensemble's parameters, the optimiser's moments and the batch orders."""
        from safetensors.torch import save_file

        tensors = {f"param/{name}": p.detach() for name, p in ensemble.params.items()}
        for i, moments in optimiser.state_dict()["state"].items():
            tensors.update({f"adam/{i}/{key}": torch.as_tensor(v) for key, v in moments.items()})
        tensors["rng/torch"] = torch.get_rng_state()
        if ensemble.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(ensemble.device)
        for s, generator in enumerate(orders):
            tensors[f"rng/order/{s}"] = generator.get_state()
        tensors["history/loss"] = torch.from_numpy(state.loss)
        tensors["history/validation"] = torch.from_numpy(state.validation)
        tensors["best_loss"] = torch.from_numpy(state.best_loss)
        tensors["best_epoch"] = torch.from_numpy(np.asarray(state.best_epoch, dtype=np.int64))
        for name, p in (state.best or {}).items():
            tensors[f"best/{name}"] = p
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        meta = {"schema": _SCHEMA, "epoch": state.epoch, "stopped": state.stopped, "fingerprint": self.fingerprint}
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{CHECKPOINT_FILE}.{os.getpid()}.partial"
        save_file(tensors, str(partial), metadata={"histex": json.dumps(meta)})
        os.replace(partial, self.path)  # atomic: the previous checkpoint stays until this one is complete
        logger.info("Checkpoint after epoch %d in %s.", state.epoch, self.path)

    def restore(self, state: TrainingState, ensemble, optimiser, orders) -> TrainingState:
        """Load the checkpoint into the run's objects, or leave them as they are when there is none."""
        if not self.path.is_file():
            return state
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:  # one read: the metadata and the tensors
                meta = json.loads((f.metadata() or {}).get("histex", "{}"))
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"The checkpoint {self.path} cannot be read ({error}); delete it to start the fit afresh."
            ) from error
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.folder} holds a checkpoint of another fit (other settings or data); pass another "
                "checkpoint_dir, or delete that one to start afresh."
            )
        device = ensemble.device
        with torch.no_grad():
            for name, p in ensemble.params.items():
                p.copy_(tensors[f"param/{name}"])
        optimiser_state = optimiser.state_dict()
        optimiser_state["state"] = {
            i: {k.split("/")[2]: v.to(device) for k, v in tensors.items() if k.startswith(f"adam/{i}/")}
            for i in range(len(ensemble.params))
            if f"adam/{i}/exp_avg" in tensors
        }
        optimiser.load_state_dict(optimiser_state)
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], device)
        for s, generator in enumerate(orders):
            generator.set_state(tensors[f"rng/order/{s}"])
        best = {k.removeprefix("best/"): v.to(device) for k, v in tensors.items() if k.startswith("best/")}
        logger.info("Resuming after epoch %d from %s.", meta["epoch"], self.path)
        return TrainingState(
            epoch=int(meta["epoch"]),
            loss=tensors["history/loss"].numpy().copy(),
            validation=tensors["history/validation"].numpy().copy(),
            best_loss=tensors["best_loss"].numpy().copy(),
            best_epoch=tensors["best_epoch"].numpy().copy(),
            best=best or None,
            stopped=bool(meta["stopped"]),
        )
