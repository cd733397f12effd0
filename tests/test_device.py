"""Precision from what the hardware computes natively, never a silent 20x slowdown."""

import warnings
from pathlib import Path

import pytest
import torch

from sktransfer._engines import device as _device
from sktransfer._engines.device import cpu_flags, cpu_native_dtypes, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_supports(monkeypatch):
    """Pretend the CPU natively computes the given dtypes; warnings start afresh."""
    monkeypatch.setattr(_device, "_warned", set())

    def pretend(*dtypes):
        monkeypatch.setattr(_device, "cpu_native_dtypes", lambda: frozenset(dtypes))

    return pretend


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads Linux CPU flags")
def test_the_probe_reads_this_cpu():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    assert cpu_flags() == flags
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert (torch.bfloat16 in cpu_native_dtypes()) == has_bf16
    has_fp16 = bool(flags & {"avx512_fp16", "amx_fp16", "asimdhp"})
    assert (torch.float16 in cpu_native_dtypes()) == has_fp16


@pytest.mark.parametrize("native", [(), (torch.bfloat16, torch.float16)])
def test_auto_is_fp32_on_cpu_whatever_it_supports(cpu_supports, native):
    cpu_supports(*native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("auto", CPU) == torch.float32
        assert resolve_precision("fp32", CPU) == torch.float32


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_emulated_precision_warns_once_and_says_why(cpu_supports, precision, dtype):
    cpu_supports()
    with pytest.warns(UserWarning, match=f"no native {precision}.*20x") as record:
        assert resolve_precision(precision, CPU) == dtype
    assert "fp32" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision(precision, CPU) == dtype


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_native_precision_is_silent(cpu_supports, precision, dtype):
    cpu_supports(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision(precision, CPU) == dtype


def test_the_featurizer_warns_on_emulated_bf16(cpu_supports, tiny_backbone, small_images):
    from sktransfer import PretrainedFeaturizer

    from .conftest import TINY_PREPROCESSING

    cpu_supports()
    featurizer = PretrainedFeaturizer(
        tiny_backbone,
        preprocessing=TINY_PREPROCESSING,
        precision="bf16",
        device="cpu",
        cache=None,
        progress=False,
    ).fit(small_images[:2])
    with pytest.warns(UserWarning, match="no native bf16"):
        featurizer.transform(small_images[:2])
