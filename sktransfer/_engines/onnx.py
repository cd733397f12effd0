"""ONNX Runtime engine: a backbone exported once, then batches streamed through a session.

On CPUs, ONNX Runtime runs EfficientNet-Lite0 two to three times faster than
PyTorch eager (it fuses BatchNorm and activations into the convolutions and
picks kernels for the machine), computing the same function to float
rounding. A model is exported once per process; with a disk cache it is kept
beside the features, named by the hash of its key, and used only if its
sha256 is the one the cache's database recorded when it was exported.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._store import resolve_store
from .._store.disk import ENGINES_FOLDER, CacheWarning
from .._store.trust import check_private
from .torch import Engine

_INSTALL_HINT = 'engine="onnxruntime" needs ONNX Runtime: pip install "sktransfer[onnx]"'
_KEY_PROPERTY = "sktransfer_key"
_OPSET = 17
_SESSIONS_KEPT = 4

_sessions: OrderedDict[tuple, OnnxEngine] = OrderedDict()
_lock = threading.Lock()


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return onnxruntime


def check_engine(engine: str, precision: str) -> None:
    """Fail at ``fit``, not mid-``transform``: the extra must be installed, precision fp32."""
    if engine != "onnxruntime":
        return
    _import_onnxruntime()
    if precision not in ("auto", "fp32"):
        raise ValueError(
            f'precision="{precision}" needs engine="torch"; engine="onnxruntime" '
            'computes in fp32 (precision="auto" or "fp32")'
        )


class _Call(nn.Module):
    """A module calling ``function``, such as a network's method for its frozen prefix."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.function = function
        owner = getattr(function, "__self__", None)
        # Registered, so that the exporter sees its tensors as parameters.
        self.owner = owner if isinstance(owner, nn.Module) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def export_onnx(model, input_size: int, key: str) -> bytes:
    """Serialise ``model`` (``(N, 3, S, S)`` -> outputs) as ONNX, with a dynamic batch axis.

    ``model`` is a module, or a function such as a module's bound method; it
    is traced in eval mode, and every module's mode is left as it was.
    ``key`` is stored in the model's metadata, to say what function it is.

    Raises RuntimeError when the module cannot be exported, or not
    faithfully: where its ``forward`` branches on tensor values, which a
    trace would freeze.
    """
    _import_onnxruntime()
    import onnx

    module = model if isinstance(model, nn.Module) else _Call(model)
    parameter = next(module.parameters(), None)
    device = torch.device("cpu") if parameter is None else parameter.device
    example = torch.zeros(1, 3, input_size, input_size, device=device)
    # The exporter switches every submodule to eval, then all back to the top
    # module's mode: a training network's frozen stages must come back in eval.
    modes = {submodule: submodule.training for submodule in module.modules()}
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        # The TorchScript exporter needs no onnxscript; its deprecation notice is not the user's.
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                module,
                example,
                buffer,
                dynamo=False,
                opset_version=_OPSET,
                input_names=["images"],
                output_names=["outputs"],
                dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
            )
        except Exception as exc:
            raise RuntimeError(
                f'could not export the backbone to ONNX ({exc}); engine="torch" runs it as it is'
            ) from exc
        else:
            tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
            if tracer:
                _check_faithful(module, example, tracer[0])
        finally:
            for submodule, training in modes.items():
                submodule.training = training
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {_KEY_PROPERTY: key})
    return proto.SerializeToString()


def _check_faithful(module: nn.Module, example: torch.Tensor, warning) -> None:
    """Raise unless the trace's Python values come from shapes, which the export fixes anyway.

    The tracer records one path through ``forward``: where a tensor became a
    Python value (``if x.mean() > 0``, ``float(x.max())``), it warned, and
    that branch would be frozen for every image. Shapes are fixed by the
    input size (ViTs and Swin check them so); values are not. ``torch.export``
    tells them apart: it refuses to decide on a value it cannot know.
    """
    module.eval()
    try:
        torch.export.export(module, (example,), strict=False)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(
            "this module cannot be exported faithfully to ONNX: its forward turns a tensor "
            f"into a Python value ({warning.filename}:{warning.lineno}: "
            f"{str(warning.message).split('.')[0]}), so the export would take one branch for "
            f"every image ({reason}); use engine='torch', which runs it as it is"
        ) from exc


def model_path(directory: os.PathLike, key: str) -> Path:
    """Where the model of ``key`` is kept in a cache directory."""
    name = hashlib.sha256(key.encode()).hexdigest()
    return Path(directory) / ENGINES_FOLDER / f"{name}.onnx"


def _load_or_export(key: str, build: Callable[[], nn.Module], input_size: int, directory):
    if directory is None:
        return export_onnx(build(), input_size, key)
    store = resolve_store(directory)
    recorded = store.model_digest(key)  # first, so the store checks whose folder it is
    path = model_path(directory, key)
    check_private(path.parent, "folder")
    if recorded is not None and path.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).digest() == recorded:
            return data
        warnings.warn(
            f"the ONNX model {path} is not the one this cache recorded (its sha256 differs); "
            "exporting it again",
            CacheWarning,
            stacklevel=4,
        )
    data = export_onnx(build(), input_size, key)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written whole then renamed: a killed process never leaves half a model.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            f.write(data)
        os.replace(f.name, path)
    except OSError as exc:
        warnings.warn(f"could not keep the ONNX model in {path} ({exc})", stacklevel=4)
    else:
        store.record_model(key, hashlib.sha256(data).digest())
    return data


class OnnxEngine(Engine):
    """Run an ONNX model with ONNX Runtime, on the CUDA provider when asked and present.

    Parameters
    ----------
    model : bytes
        A serialised ONNX model with one input ``(N, 3, S, S)``.
    device : torch.device
        ``cuda`` uses ONNX Runtime's CUDA provider when it is installed
        (package ``onnxruntime-gpu``); anything else runs on the CPU.
    """

    def __init__(self, model: bytes, device: torch.device):
        ort = _import_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                warnings.warn(
                    "ONNX Runtime has no CUDA provider here (it comes with the package "
                    "onnxruntime-gpu); running on the CPU",
                    UserWarning,
                    stacklevel=4,
                )
        options = ort.SessionOptions()
        # ORT ignores OMP_NUM_THREADS; following torch keeps joblib workers from oversubscribing.
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(model, options, providers=providers)
        self.device = torch.device("cuda" if providers[0].startswith("CUDA") else "cpu")
        self._input = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        (outputs,) = self.session.run(None, {self._input: images})
        return torch.from_numpy(outputs)


def onnx_engine(
    key: str,
    build: Callable[[], nn.Module],
    input_size: int,
    device: torch.device,
    directory: os.PathLike | None = None,
) -> OnnxEngine:
    """The engine of ``key``, exported at most once per process.

    Parameters
    ----------
    key : str
        Identity of the function ``build()`` computes (like the features' key).
    build : callable
        Returns what to export (see :func:`export_onnx`), in fp32 and eval
        mode; called only when the model is neither in this process nor on
        disk.
    input_size : int
        Side of the square images the module takes.
    device : torch.device
    directory : path or None, default=None
        A feature-cache directory: the model is kept there and reused by
        later processes.
    """
    _import_onnxruntime()
    where = None if directory is None else os.fspath(directory)
    entry = (key, input_size, torch.device(device).type, where)
    with _lock:
        if entry in _sessions:
            _sessions.move_to_end(entry)
            return _sessions[entry]
        engine = OnnxEngine(_load_or_export(key, build, input_size, directory), device)
        _sessions[entry] = engine
        while len(_sessions) > _SESSIONS_KEPT:
            _sessions.popitem(last=False)
        return engine
