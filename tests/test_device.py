"""Precision from what the hardware computes natively, never a silent 20x slowdown."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

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


@pytest.fixture
def auto_bf16_on_native_cpu(monkeypatch):
    """The other outcome of the measurement "auto" is decided by, whichever was taken."""

    def decide(value):
        monkeypatch.setattr(_device, "AUTO_BF16_ON_NATIVE_CPU", value)

    return decide


@pytest.mark.parametrize("decided", [False, True])
@pytest.mark.parametrize("native", [(), (torch.bfloat16,)])
def test_auto_is_bf16_only_on_a_native_cpu_and_only_if_measured_so(
    cpu_supports, auto_bf16_on_native_cpu, decided, native
):
    cpu_supports(*native)
    auto_bf16_on_native_cpu(decided)
    expected = torch.bfloat16 if decided and native else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # never the emulation warning
        assert resolve_precision("auto", CPU) == expected


def test_an_auto_featurizer_shares_rows_with_its_resolved_precision_only(
    cpu_supports, auto_bf16_on_native_cpu, small_images, tmp_path
):
    from sktransfer import PretrainedFeaturizer

    from ._helpers import CountingStage
    from .conftest import TINY_PREPROCESSING, make_tiny_backbone

    cpu_supports(torch.bfloat16)
    auto_bf16_on_native_cpu(True)
    backbone = nn.Sequential(CountingStage(), *make_tiny_backbone())

    def computed(precision):
        featurizer = PretrainedFeaturizer(
            backbone,
            preprocessing=TINY_PREPROCESSING,
            precision=precision,
            cache=tmp_path,
            progress=False,
        )
        featurizer.fit(small_images)
        CountingStage.images_seen = 0
        features = featurizer.transform(small_images)
        return CountingStage.images_seen, features

    seen, auto = computed("auto")
    assert seen == len(small_images)
    seen, bf16 = computed("bf16")
    assert seen == 0  # "auto" stored them as the bf16 rows they are
    np.testing.assert_array_equal(bf16, auto)
    seen, fp32 = computed("fp32")
    assert seen == len(small_images)  # never served bf16 rows as fp32 ones
    assert not np.array_equal(fp32, auto)
