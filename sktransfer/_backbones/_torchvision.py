"""torchvision classifiers: built by ``get_model`` without weights, cut along the module tree.

The builder is given the arguments its weights would set (``num_classes``,
``transform_input``, ``aux_logits``, the image size) and the model loads the
state dict of :func:`~sktransfer._weights.load_state_dict` (torch hub cache,
hash-checked download, ``weights_only=True``). The stages are the model's
top-level children (``features``, ``layers``, ``trunk_output`` and ``blocks``
opened up): runs of plain layers are grouped, each block is a stage. The pooling
is what the model's ``forward`` does between its trunk and its last
``nn.Linear`` (average pool, norm, flatten, hidden layers).
"""

from __future__ import annotations

import copy
import functools
import re
from collections import OrderedDict

import torch
from torch import nn

from .._weights import FileWeights, HubWeights
from ._meta import build_on_meta
from ._spec import BackboneSpec, GlobalAveragePool, Preprocessing, has_weighted_layers

_HEADS = ("fc", "classifier", "head", "heads")
_AUXILIARY = ("aux1", "aux2", "AuxLogits")  # run only in training, never part of features
_POOLING = ("avgpool", "dropout", "norm", "permute", "flatten")
_OPENED = ("features", "layers", "trunk_output", "blocks")


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def default_weights_enum(name: str):
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def torchvision_source(name: str) -> HubWeights:
    """Where torchvision's default pretrained weights for ``name`` live."""
    return HubWeights(default_weights_enum(name).url)


def _builder_overrides(name: str) -> dict:
    """The builder arguments torchvision's weights set (they fit the weights' checkpoint).

    Given its weights enum, a builder sets ``num_classes`` from the weights'
    categories, GoogLeNet and Inception-v3 their input transform (and build
    without initialising), a ViT its image size and MaxViT its input size.
    """
    meta = default_weights_enum(name).meta
    overrides = dict(num_classes=len(meta["categories"]))
    if name in ("googlenet", "inception_v3"):
        # Given weights, googlenet drops its auxiliary heads and inception_v3 keeps them
        # (they run only in training; the stages leave them out).
        aux_logits = name == "inception_v3"
        overrides.update(transform_input=True, aux_logits=aux_logits, init_weights=False)
    elif name.startswith("vit_"):
        overrides.update(image_size=meta["min_size"][0])
    elif name.startswith("maxvit_"):
        overrides.update(input_size=meta["min_size"])
    return overrides


# DenseNet checkpoints published before module names lost their dots ("norm.1" for "norm1"):
# torchvision's builder renames them the same way.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _fit_checkpoint(model: nn.Module, state: dict) -> dict:
    """``state`` as the model names it: legacy DenseNet keys renamed, absent aux heads dropped."""
    fitted = {}
    for key, tensor in state.items():
        top = key.split(".", 1)[0]
        if top in _AUXILIARY and getattr(model, top, None) is None:
            continue  # googlenet's builder loads its auxiliary heads, then removes them
        legacy = _DENSENET_LEGACY.match(key)
        fitted[legacy.group(1) + legacy.group(2) if legacy else key] = tensor
    return fitted


def build_torchvision(spec: BackboneSpec, state: dict | None) -> nn.Module:
    """Build ``spec.name`` as its builder does for its weights, and load ``state`` (None: random).

    The builder is never given the weights enum: it would fetch the checkpoint
    itself, and ``state`` comes from the checked loader.
    """
    import torchvision

    model = torchvision.models.get_model(spec.name, weights=None, **_builder_overrides(spec.name))
    if state is not None:
        model.load_state_dict(_fit_checkpoint(model, state))
    return model.eval()


def _is_plain(module: nn.Module) -> bool:
    """A layer or a small sequence of layers (conv-norm-act), not a block of them."""
    return all(next(child.children(), None) is None for child in module.children())


def _as_stage(modules):
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def group_stages(children: list[tuple[str, nn.Module]]) -> OrderedDict:
    """Stages from modules run in order: each block a stage, runs of plain layers grouped.

    A run of plain layers ends after a max pooling (VGG, AlexNet, SqueezeNet);
    a run without parameters joins the stage before it, as does a trailing
    run without a convolution or linear layer (a final norm).
    """
    groups, run = [], []
    for name, module in children:
        if _is_plain(module):
            run.append((name, module))
            if isinstance(module, nn.MaxPool2d) and has_weighted_layers(*(m for _, m in run)):
                groups.append(run)
                run = []
        else:
            if run:
                groups.append(run)
                run = []
            groups.append([(name, module)])
    if run:
        groups.append(run)
    stages = []
    for index, group in enumerate(groups):
        modules = [m for _, m in group]
        plain = len(group) > 1 or _is_plain(modules[0])
        last = index == len(groups) - 1
        weightless = not any(p.numel() for m in modules for p in m.parameters())
        if stages and plain and (weightless or (last and not has_weighted_layers(*modules))):
            stage_name, stage_modules = stages[-1]
            stages[-1] = (stage_name, stage_modules + modules)
            continue
        stages.append(("stem" if not stages and plain else group[0][0], modules))
    return OrderedDict((name, _as_stage(modules)) for name, modules in stages)


def _without_last_linear(module: nn.Module | None) -> list[nn.Module]:
    """The layers of a classifier before its final ``nn.Linear`` (none when it has none)."""
    if module is None or isinstance(module, nn.Linear):
        return []
    layers = list(module.children()) if isinstance(module, nn.Sequential) else [module]
    last = max((i for i, m in enumerate(layers) if isinstance(m, nn.Linear)), default=None)
    return [] if last is None else layers[:last]


class InputTransform(nn.Module):
    """GoogLeNet's and Inception-v3's ``_transform_input``: ImageNet to their own normalisation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.copy(model)
        self.model._modules, self.model._parameters, self.model._buffers = {}, {}, {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model._transform_input(x)


class ClassTokenEmbedding(nn.Module):
    """A torchvision ViT's patch projection followed by its class token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.copy(model)
        self.model._modules = {"conv_proj": model.conv_proj}
        self.model._buffers = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model._process_input(x)
        return torch.cat([self.model.class_token.expand(x.shape[0], -1, -1), x], dim=1)


class ClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _cut_vit(model: nn.Module) -> tuple[OrderedDict, nn.Module]:
    encoder = copy.copy(model.encoder)
    encoder._modules = dict(encoder._modules, layers=nn.Sequential(), ln=nn.Identity())
    stages = OrderedDict(stem=nn.Sequential(ClassTokenEmbedding(model), encoder))
    layers = list(model.encoder.layers.children())
    stages.update((f"layer{i}", layer) for i, layer in enumerate(layers[:-1]))
    stages[f"layer{len(layers) - 1}"] = nn.Sequential(layers[-1], model.encoder.ln)
    return stages, nn.Sequential(ClassToken(), *_without_last_linear(model.heads))


def torchvision_cut(model: nn.Module) -> tuple[OrderedDict, nn.Module]:
    """Stages and pooling of a torchvision classifier (see the module docstring)."""
    if type(model).__name__ == "VisionTransformer":
        return _cut_vit(model)
    children = [
        (name, child)
        for name, child in model.named_children()
        if child is not None and name not in _AUXILIARY
    ]
    head_at = next(i for i, (name, _) in enumerate(children) if name in _HEADS)
    head = children[head_at][1]
    trunk = children[:head_at]
    pool_at = next((i for i, (name, _) in enumerate(trunk) if name in _POOLING), len(trunk))
    opened = []
    for name, child in trunk[:pool_at]:
        if name in _OPENED:
            opened += [(f"{name}{n}" if n.isdigit() else n, m) for n, m in child.named_children()]
        else:
            opened.append((name, child))
    stages = group_stages(opened)
    if getattr(model, "transform_input", False):
        stages["stem"] = nn.Sequential(InputTransform(model), stages["stem"])
    pooling = [m for _, m in trunk[pool_at:]]
    if type(model).__name__ == "DenseNet":  # its forward applies these as functions
        pooling = [nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    hidden = _without_last_linear(head)
    if not pooling and not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in hidden):
        pooling = [GlobalAveragePool()]
    layers = [*pooling, *hidden]
    if not any(isinstance(m, nn.Flatten) for m in layers):
        layers.insert(len(pooling), nn.Flatten(1))
    return stages, nn.Sequential(*layers)


def _feature_width(model: nn.Module) -> int:
    if type(model).__name__ == "VisionTransformer":
        head = model.heads
    else:
        head = next(model._modules[n] for n in _HEADS if model._modules.get(n) is not None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].in_features
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]  # SqueezeNet
    return convs[-1].in_channels


@functools.cache
def _structure(name: str) -> tuple[tuple[str, ...], int, str]:
    """Stage names, feature width and stage layout of a torchvision model."""
    import torchvision

    model = build_on_meta(
        lambda: torchvision.models.get_model(name, weights=None, **_builder_overrides(name))
    )
    stages, _ = torchvision_cut(model)
    # Swin's blocks work on (N, H, W, C); its head permutes to channels-first at the end.
    layout = "NHWC" if type(model).__name__ == "SwinTransformer" else "NCHW"
    return tuple(stages), _feature_width(model), layout


def torchvision_spec(name: str, weights: str | None) -> BackboneSpec:
    """Spec of a torchvision classifier; ``weights`` is "default", None or a path."""
    transforms = default_weights_enum(name).transforms()
    stages, width, layout = _structure(name)
    if weights == "default":
        source = torchvision_source(name)
    else:
        source = None if weights is None else FileWeights(str(weights))
    return BackboneSpec(
        name=name,
        preprocessing=Preprocessing(
            input_size=transforms.crop_size[0],
            resize_size=transforms.resize_size[0],
            interpolation=transforms.interpolation.value,
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
        ),
        feature_dim=width,
        stages=stages,
        weights=source,
        library="torchvision",
        architecture=name,
        stage_format=layout,
        build_network=build_torchvision,
        cut=torchvision_cut,
    )
