"""A user's ``torch.nn.Module`` used as a backbone: copied, never modified.

Its identity is its structure (every submodule's type and ``repr``) and its
tensors, so two modules that compute different functions never share cached
features, and clones of one module do.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections import OrderedDict

import torch
from torch import nn

from ._spec import BackboneSpec, GlobalAveragePool, Preprocessing


def module_stages(module: nn.Module) -> OrderedDict:
    """Stages of a user module: a Sequential's children, else the module itself."""
    if isinstance(module, nn.Sequential):
        return OrderedDict(module.named_children())
    return OrderedDict(body=module)


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's structure and tensors, identifying the function it computes."""
    digest = hashlib.sha256()
    for name, submodule in module.named_modules():
        kind = type(submodule)
        digest.update(
            f"{name}:{kind.__module__}.{kind.__qualname__}:{submodule.extra_repr()}".encode()
        )
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


_PROBED_FEATURE_DIMS: dict[tuple[str, int], int] = {}


def _probe_feature_dim(module: nn.Module, input_size: int) -> int:
    """Width of the pooled output, from one blank image through a copy in eval mode."""
    probe = copy.deepcopy(module).eval()
    parameter = next(probe.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.inference_mode():
        blank = torch.zeros(1, 3, input_size, input_size, device=device)
        return int(GlobalAveragePool()(probe(blank)).shape[1])


def _copy_module(module: nn.Module, spec: BackboneSpec, state) -> nn.Module:
    return copy.deepcopy(module).eval()


def _cut_module(network: nn.Module) -> tuple[OrderedDict, nn.Module]:
    return module_stages(network), GlobalAveragePool()


def module_spec(module: nn.Module, preprocessing: Preprocessing | None = None) -> BackboneSpec:
    """Spec for a user's ``nn.Module`` used as a backbone as it is.

    An ``nn.Sequential``'s children are its stages; any other module is one
    stage. Its output, ``(N, D)`` or ``(N, C, h, w)``, is average-pooled to
    ``(N, D)``. Preprocessing defaults to ImageNet's (224 px, its mean and std).
    The module is copied when built, so the caller's object never changes.
    """
    preprocessing = preprocessing or Preprocessing()
    fingerprint = module_fingerprint(module)
    probe = (fingerprint, preprocessing.input_size)
    if probe not in _PROBED_FEATURE_DIMS:  # once per module state, not once per clone
        _PROBED_FEATURE_DIMS[probe] = _probe_feature_dim(module, preprocessing.input_size)
    return BackboneSpec(
        name=type(module).__name__,
        preprocessing=preprocessing,
        feature_dim=_PROBED_FEATURE_DIMS[probe],
        stages=tuple(module_stages(module)),
        weights=None,
        library="module",
        architecture=fingerprint,
        # A copy taken now: the spec keeps naming this function if the caller's module changes.
        build_network=functools.partial(_copy_module, copy.deepcopy(module)),
        cut=_cut_module,
    )
