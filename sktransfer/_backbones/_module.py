"""A user's ``torch.nn.Module`` used as a backbone: copied, never modified.

Its identity (:func:`module_fingerprint`) is what decides the function it
computes, as far as the module itself holds it, so two modules that compute
different functions never share cached features, and clones of one module do.
What is derived from the identity (features, probed widths, an ONNX export)
is shared; a built copy is not: each estimator builds its own from its module.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import types
import weakref
from collections import OrderedDict
from itertools import chain

import numpy as np
import torch
from torch import nn

from ._spec import BackboneSpec, GlobalAveragePool, Preprocessing

#: What ``nn.Module`` itself keeps in every instance: the tensors and children
#: (hashed on their own) and the mode (a backbone always runs in eval mode).
_OWN_STATE = ("_parameters", "_buffers", "_modules", "training")
#: How deep plain attributes are followed (a dict of lists of objects...).
_DEPTH = 6

CONTRACT = (
    "a backbone module must map a float32 batch (N, 3, S, S) to one tensor, (N, D) or "
    "(N, C, h, w), with float32 parameters and buffers (precision= chooses the compute "
    "precision)"
)


def module_stages(module: nn.Module) -> OrderedDict:
    """Stages of a user module: a Sequential's children, else the module itself."""
    if isinstance(module, nn.Sequential):
        return OrderedDict(module.named_children())
    return OrderedDict(body=module)


def module_fingerprint(module: nn.Module) -> str:
    """sha256 identifying the function a module computes.

    It covers, for the module and every submodule: its class (qualified name
    and the source of every class it inherits from below ``nn.Module``), its
    plain attributes (numbers, strings, containers, tensors, functions by
    their code, closure and defaults, hooks included), and all of its parameters and buffers,
    non-persistent ones included. Not covered: globals or closures that
    ``forward`` reads outside the module.
    """
    digest = hashlib.sha256()
    _update(digest, module, 0, set())
    return digest.hexdigest()


def _update(digest, value, depth: int, seen: set) -> None:
    """Feed ``value`` to ``digest``, by content where it can be read, by type otherwise."""
    put = digest.update
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        put(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, torch.dtype | torch.device | torch.Size | np.dtype):
        put(f"{value!r};".encode())
    elif isinstance(value, torch.Tensor | np.ndarray):
        tensor = torch.as_tensor(value).detach().cpu().contiguous()
        put(f"tensor:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        put(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, type):
        put(_class_identity(value).encode())
    elif isinstance(value, weakref.ref):  # what it points to is hashed where it lives
        put(b"weakref;")
    elif isinstance(value, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        put(_function_identity(value).encode())
        function = getattr(value, "__func__", value)
        cells = [_cell(cell) for cell in getattr(function, "__closure__", None) or ()]
        _update(digest, (cells, getattr(function, "__defaults__", None)), depth + 1, seen)
    elif id(value) in seen or depth > _DEPTH:
        put(f"{_class_identity(type(value))}:...;".encode())
    elif isinstance(value, nn.Module):
        seen = seen | {id(value)}
        put(_class_identity(type(value)).encode())
        # Sorted: a copy may hold its attributes in another order.
        attributes = {k: v for k, v in sorted(vars(value).items()) if k not in _OWN_STATE}
        _update(digest, attributes, depth + 1, seen)
        for name, tensor in chain(
            value.named_parameters(recurse=False), value.named_buffers(recurse=False)
        ):
            put(f"{name}=".encode())
            _update(digest, tensor, depth, seen)
        for name, child in value.named_children():
            put(f"child {name}=".encode())
            _update(digest, child, depth, seen)  # children are structure, not nesting depth
    elif isinstance(value, dict):
        put(f"{type(value).__name__}{{".encode())
        for key, item in value.items():
            _update(digest, key, depth + 1, seen)
            _update(digest, item, depth + 1, seen)
        put(b"}")
    elif isinstance(value, list | tuple):
        put(f"{type(value).__name__}[".encode())
        for item in value:
            _update(digest, item, depth + 1, seen)
        put(b"]")
    elif isinstance(value, set | frozenset):
        _update(digest, sorted(value, key=repr), depth, seen)
    elif isinstance(value, functools.partial):
        _update(digest, (value.func, value.args, value.keywords), depth + 1, seen)
    elif hasattr(value, "__dict__"):
        put(_class_identity(type(value)).encode())
        _update(digest, dict(sorted(vars(value).items())), depth + 1, seen | {id(value)})
    else:  # slots or C objects: their repr, which may carry an address (a miss, never a mix)
        put(f"{_class_identity(type(value))}:{value!r};".encode())


def _cell(cell):
    try:
        return cell.cell_contents
    except ValueError:  # not yet bound
        return None


@functools.cache
def _class_identity(cls: type) -> str:
    """Qualified name and source of a class and of the classes it inherits from."""
    digest = hashlib.sha256()
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        digest.update(f"{klass.__module__}.{klass.__qualname__}:".encode())
        try:
            digest.update(inspect.getsource(klass).encode())
        except (OSError, TypeError):  # defined in a REPL or built in C: the methods' code
            for item in vars(klass).values():
                function = getattr(item, "__func__", item)
                if isinstance(function, types.FunctionType):
                    digest.update(_function_identity(function).encode())
    return f"{cls.__module__}.{cls.__qualname__}@{digest.hexdigest()};"


def _function_identity(function) -> str:
    """A function by its qualified name and code; a bound method by its function and class."""
    owner = getattr(function, "__self__", None)
    function = getattr(function, "__func__", function)
    name = f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', function)}"
    code = getattr(function, "__code__", None)
    body = "" if code is None else hashlib.sha256(_code_bytes(code)).hexdigest()
    bound = "" if owner is None or isinstance(owner, types.ModuleType) else type(owner).__qualname__
    return f"function:{name}:{body}:{bound};"


def _code_bytes(code: types.CodeType) -> bytes:
    consts = b"".join(
        _code_bytes(c) if isinstance(c, types.CodeType) else repr(c).encode()
        for c in code.co_consts
    )
    return code.co_code + consts + repr(code.co_names).encode()


_PROBED_FEATURE_DIMS: dict[tuple[str, int], int] = {}


def _probe_feature_dim(module: nn.Module, input_size: int) -> int:
    """Width of the pooled output, from one blank image through a copy in eval mode."""
    name = type(module).__name__
    tensors = chain(module.parameters(), module.buffers())
    kinds = sorted({str(t.dtype) for t in tensors if t.is_floating_point()} - {"torch.float32"})
    if kinds:
        raise TypeError(f"backbone module {name} holds {', '.join(kinds)} tensors: {CONTRACT}")
    probe = copy.deepcopy(module).eval()
    parameter = next(probe.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    blank = torch.zeros(1, 3, input_size, input_size, device=device)
    try:
        with torch.inference_mode():
            output = probe(blank)
    except Exception as exc:  # whatever the user's forward raises
        raise ValueError(
            f"backbone module {name} failed on a blank (1, 3, {input_size}, {input_size}) "
            f"batch ({exc!r}): {CONTRACT}"
        ) from exc
    if not isinstance(output, torch.Tensor) or output.ndim < 2 or len(output) != 1:
        got = (
            f"a tensor of shape {tuple(output.shape)}"
            if isinstance(output, torch.Tensor)
            else f"a {type(output).__name__}"
        )
        raise TypeError(f"backbone module {name} returned {got} for 1 image: {CONTRACT}")
    return int(GlobalAveragePool()(output).shape[1])


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
    if probe not in _PROBED_FEATURE_DIMS:  # once per identity, as features are, not per clone
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
