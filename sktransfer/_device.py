"""Device and numeric precision selection."""

from __future__ import annotations

import contextlib

import torch

_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the device to run on; ``"auto"`` prefers CUDA, then MPS, then CPU."""
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Return the compute dtype; ``"auto"`` is bf16 (or fp16) on CUDA and fp32 elsewhere.

    fp32 stays the CPU default because reduced precision changes the features
    slightly; users opt in with ``precision="bf16"``.
    """
    if precision != "auto":
        return _PRECISIONS[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context for reduced precision, or a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype) -> str:
    """Short name of a compute dtype (``"fp32"``, ``"bf16"``, ``"fp16"``)."""
    return next(name for name, value in _PRECISIONS.items() if value == dtype)
