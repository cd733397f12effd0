"""Networks built without their weights, on PyTorch's meta device.

Stages, widths, parameter counts and FLOPs need a network's structure only: on
the meta device its tensors have shapes and no data, so nothing is allocated
or initialised, and a 600-million-parameter model builds in a fraction of a second.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()``, its parameters and buffers on the meta device where it can be.

    Under ``torch.device("meta")`` every tensor is made there. A builder that
    reads tensor values while it builds (torchvision's RegNet computes its
    widths with torch) fails so; it then builds on the CPU with each parameter
    and buffer moved to meta as it is registered, before any initialiser fills
    it (only in this thread, so a network built meanwhile elsewhere is left alone).
    A network that cannot be built either way is built on the CPU.
    """
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):
        pass
    builder = threading.get_ident()

    def to_meta(module, name, tensor):
        if tensor is None or threading.get_ident() != builder:
            return None
        moved = tensor.to("meta")
        return (
            nn.Parameter(moved, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else moved
        )

    hooks = (
        register_module_parameter_registration_hook(to_meta),
        register_module_buffer_registration_hook(to_meta),
    )
    try:
        return build()
    except (NotImplementedError, RuntimeError):
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return build()
