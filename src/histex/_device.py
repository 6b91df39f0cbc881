"""Choosing a torch device and a compute precision, the same way for feature extraction and for training."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks cuda, then mps, then cpu; a requested device that is absent is an error."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<n>', 'mps' or None; got {device!r}.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available; use device='cpu' or None.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' was requested but MPS is not available; use device='cpu' or None.")
    return device


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> torch.dtype:
    """The dtype the forward pass computes in, for encoders and for the HISTEX network alike.

    ``"auto"`` is bfloat16 where the hardware computes it natively (CUDA devices that support it, CPUs with AMX or
    AVX-512 BF16 units), on which a pass takes about half the time; elsewhere emulated bfloat16 is slower than
    float32, so ``"auto"`` is float32. ``"float16"`` is refused for training: without loss scaling its gradients
    underflow.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}.")
    if precision == "float16" and training:
        raise ValueError("precision='float16' cannot train (its gradients underflow); use 'bfloat16' or 'float32'.")
    if precision != "auto":
        return getattr(torch, precision)
    return torch.bfloat16 if native_bfloat16(device) else torch.float32


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware."""
    if device.type == "cuda":  # natively from Ampere (compute capability 8) on; older GPUs emulate it, slowly
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return amx or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return False


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is the accelerator running out of memory."""
    if isinstance(error, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
