"""Device and numeric precision selection, from what the hardware runs natively."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# CPU flags (Linux /proc/cpuinfo names) that mean a dtype is computed in hardware;
# without them torch emulates it, and lite0 ran 20x slower in bf16 than in fp32.
_NATIVE_FLAGS = {
    torch.bfloat16: {"avx512_bf16", "amx_bf16", "bf16"},  # x86; "bf16" is Arm's FEAT_BF16
    torch.float16: {"avx512_fp16", "amx_fp16", "asimdhp"},  # x86; "asimdhp" is Arm's FP16 SIMD
}

#: Whether ``precision="auto"`` is bf16 on CPUs that compute it natively. Decided by
#: measurement (benchmarks/quality_precision.py and bench_finetune.py; the table is in
#: the user guide's "Engines and precision"): on an amx_bf16 CPU, bf16 features kept a
#: median cosine of only 0.996-0.998 to fp32's on three real-photo sets (0.999 needed),
#: and fine-tuning ran 0.65-0.73x as fast as in fp32.
AUTO_BF16_ON_NATIVE_CPU = False

_warned: set[torch.dtype] = set()


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


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def cpu_native_dtypes() -> frozenset[torch.dtype]:
    """Reduced-precision dtypes this CPU computes in hardware, not by emulation.

    Read from the CPU's flags (/proc/cpuinfo) and from torch's own probe of the
    CPU (cpuinfo), never from torch accepting the dtype: it accepts bf16 on
    every CPU, emulating it where the hardware lacks it.
    """
    flags = set(cpu_flags())
    probes = {
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_bf16": "_is_amx_tile_supported",  # every AMX CPU has AMX-BF16
        "amx_fp16": "_is_amx_fp16_supported",
    }
    for flag, probe in probes.items():
        function = getattr(torch.cpu, probe, None)
        if function is not None and function():
            flags.add(flag)
    return frozenset(dtype for dtype, names in _NATIVE_FLAGS.items() if flags & names)


def _native(dtype: torch.dtype, device: torch.device) -> bool:
    if dtype == torch.float32:
        return True
    if device.type == "cpu":
        return dtype in cpu_native_dtypes()
    if device.type == "cuda" and dtype == torch.bfloat16:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True


def _emulation_message(precision: str, device: torch.device) -> str:
    if device.type == "cuda":
        return (
            f'precision="{precision}": this GPU has no native {precision} (compute capability '
            'below 8.0), so torch emulates it, which is slow; "fp16" or "auto" is faster here.'
        )
    flags = ", ".join(sorted(_NATIVE_FLAGS[_PRECISIONS[precision]]))
    return (
        f'precision="{precision}": this CPU has no native {precision} (none of the CPU flags '
        f"{flags}), so torch emulates it: EfficientNet-Lite0 ran 20x or more slower than in "
        'fp32 on such a CPU. precision="fp32" (or "auto") is faster here, and exact.'
    )


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Return the compute dtype; ``"auto"`` picks only what runs fast and accurately.

    ``"auto"`` is bf16 on CUDA GPUs that compute it natively, fp16 on older
    ones; on CPUs with native bf16 it is what ``AUTO_BF16_ON_NATIVE_CPU``
    says, and fp32 on every other CPU, where bf16 is emulated and much slower. An explicit
    ``"bf16"``/``"fp16"`` that the hardware would emulate is honoured, with
    a warning (once per process) saying why it is slow.
    """
    if precision == "auto":
        if device.type == "cuda":
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
            return torch.bfloat16 if native_bf16 else torch.float16
        if device.type == "cpu" and AUTO_BF16_ON_NATIVE_CPU:
            return torch.bfloat16 if torch.bfloat16 in cpu_native_dtypes() else torch.float32
        return torch.float32
    dtype = _PRECISIONS[precision]
    if not _native(dtype, device) and dtype not in _warned:
        _warned.add(dtype)
        warnings.warn(_emulation_message(precision, device), UserWarning, stacklevel=3)
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context computing in ``dtype``; for fp32, autocast off, even inside another."""
    if dtype == torch.float32:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, state: dict | None = None) -> torch.amp.GradScaler:
    """A GradScaler for fp16 training on ``device``, continuing from ``state`` when given.

    fp16 underflows to zero below 6e-8, where small gradients fall; the scaler
    multiplies the loss before backward and divides the gradients after, skipping
    steps whose gradients overflowed. bf16 has float32's range and needs none.
    """
    scaler = torch.amp.GradScaler(device.type)
    if state is not None:
        scaler.load_state_dict(state)
    return scaler


def precision_name(dtype: torch.dtype) -> str:
    """Short name of a compute dtype (``"fp32"``, ``"bf16"``, ``"fp16"``)."""
    return next(name for name, value in _PRECISIONS.items() if value == dtype)
