"""Features from any depth: which stages, pooled how, and what the columns are called.

A backbone's stages (input to output) each give an activation; pooled over
space (a CNN's ``(N, C, h, w)``) or over tokens (a ViT's ``(N, T, D)``) it
becomes a vector per image. :class:`StagePooling` runs the stages once and
returns, side by side, the pooled outputs a :class:`Plan` asks for: every
stage's average and maximum (so any later choice of layers and pooling is a
slice of what was stored) and the model's own pooled features (its
pre-logits: a ViT's class token, a ConvNeXt's pooled and normed output).

An *entry* is one ``(stage, pooling)`` pair: ``pooling`` is ``"avg"``,
``"max"`` or ``"own"`` (the model's own pooling, last stage only). Each
entry is one vector per image and one cache key.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from numbers import Integral

import numpy as np
import torch
from torch import nn

#: Values of the featurizer's ``pooling`` parameter.
POOLINGS = ("auto", "avg", "max", "avgmax")
#: The poolings every stage is stored with.
STAGE_POOLINGS = ("avg", "max")
OWN = "own"


def _stage_list(stages: Sequence[str]) -> str:
    return ", ".join(f"{i} or -{len(stages) - i} = {name!r}" for i, name in enumerate(stages))


def resolve_layers(layers, stages: Sequence[str]) -> tuple[int, ...]:
    """Indices (input to output) of the stages named by ``layers``.

    Parameters
    ----------
    layers : int, str or tuple/list of them
        A stage index (negative counts from the output) or name, or several,
        kept in the order given.
    stages : sequence of str
        The backbone's stage names, input to output.

    Returns
    -------
    indices : tuple of int
        Non-negative, one per requested layer.

    Raises
    ------
    ValueError
        An unknown index or name, a repeated layer or an empty tuple; the
        message lists the stages.
    """
    requested = tuple(layers) if isinstance(layers, tuple | list) else (layers,)
    if not requested:
        raise ValueError(f"layers is empty; choose among the stages: {_stage_list(stages)}")
    indices = []
    for layer in requested:
        if isinstance(layer, Integral) and not isinstance(layer, bool):
            if not -len(stages) <= layer < len(stages):
                raise ValueError(
                    f"layers={layers!r}: there is no stage {layer} in a backbone of "
                    f"{len(stages)} stages: {_stage_list(stages)}"
                )
            indices.append(int(layer) % len(stages))
        elif isinstance(layer, str) and layer in stages:
            indices.append(stages.index(layer))
        else:
            raise ValueError(
                f"layers={layers!r}: {layer!r} is not a stage index or name of this "
                f"backbone; its stages are: {_stage_list(stages)}"
            )
    if len(set(indices)) < len(indices):
        raise ValueError(
            f"layers={layers!r} names a stage twice; its stages are: {_stage_list(stages)}"
        )
    return tuple(indices)


def selected_entries(
    indices: Sequence[int], pooling: str, stages: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """The ``(stage, pooling)`` entries of a request, in output order.

    ``"auto"`` is the model's own pooling for the last stage and the
    average for every other; ``"avgmax"`` is the average then the maximum.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    last = len(stages) - 1
    entries = []
    for index in indices:
        if pooling == "auto":
            entries.append((stages[index], OWN if index == last else "avg"))
        elif pooling == "avgmax":
            entries.extend((stages[index], p) for p in STAGE_POOLINGS)
        else:
            entries.append((stages[index], pooling))
    return tuple(entries)


@dataclass(frozen=True)
class Plan:
    """What one forward pass computes: each stage up to ``depth`` pooled, and maybe ``own``.

    Attributes
    ----------
    stages : tuple of str
        All the backbone's stage names.
    depth : int
        Index of the deepest stage run; later stages are skipped.
    own : bool
        Whether the model's own pooled features (of the last stage) are computed.
    """

    stages: tuple[str, ...]
    depth: int
    own: bool

    @classmethod
    def complete(cls, stages: Sequence[str]) -> Plan:
        """Every stage with every pooling: what the store keeps."""
        return cls(tuple(stages), len(stages) - 1, True)

    @classmethod
    def covering(cls, stages: Sequence[str], entries) -> Plan:
        """The least a pass must run to give ``entries``."""
        depth = max(stages.index(stage) for stage, _ in entries)
        return cls(tuple(stages), depth, any(p == OWN for _, p in entries))

    @property
    def entries(self) -> tuple[tuple[str, str], ...]:
        """The entries of the output, in column order."""
        entries = [(s, p) for s in self.stages[: self.depth + 1] for p in STAGE_POOLINGS]
        return (*entries, (self.stages[-1], OWN)) if self.own else tuple(entries)

    @property
    def label(self) -> str:
        """Names what the pass computes, for an exported engine's identity."""
        return f"depth={self.depth}|own={int(self.own)}|pool={'+'.join(STAGE_POOLINGS)}"


def pool_stage(x: torch.Tensor, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Average and maximum of an activation over space or tokens, as float32 ``(N, C)``.

    ``(N, C, h, w)`` pools over ``h, w`` (``(N, h, w, C)`` when ``channels_last``);
    ``(N, T, D)`` (tokens) over ``T``; anything else is flattened, and both
    poolings are the flattened vector.
    """
    x = x.float()
    if x.ndim == 4:
        space = (1, 2) if channels_last else (2, 3)
        return x.mean(dim=space), x.amax(dim=space)
    if x.ndim == 3:
        return x.mean(dim=1), x.amax(dim=1)
    flat = x.flatten(1)
    return flat, flat


class StagePooling(nn.Module):
    """A backbone run once, returning the pooled outputs of a :class:`Plan`, concatenated.

    Parameters
    ----------
    backbone : Backbone
        Its ``stages`` (an ``nn.Sequential``) and ``pool`` (the model's own pooling).
    plan : Plan
    channels_last : bool, default=False
        Whether the stages output ``(N, h, w, C)`` (the spec's ``stage_format``).
    """

    def __init__(self, backbone: nn.Module, plan: Plan, channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.plan = plan
        self.channels_last = channels_last
        # In eval mode like the backbone: an exporter that restores the wrapper's mode
        # afterwards must not switch the shared backbone's BatchNorm to training.
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for stage in self.backbone.stages[: self.plan.depth + 1]:
            x = stage(x)
            parts.extend(pool_stage(x, self.channels_last))
        if self.plan.own:
            parts.append(self.backbone.pool(x).float().flatten(1))
        return torch.cat(parts, dim=1)


@functools.lru_cache(maxsize=32)
def stage_widths(spec) -> tuple[int, ...]:
    """Pooled width of each stage of a spec's backbone, probed once per process and spec.

    The network is built without weights on the meta device, where a pass
    costs nothing; networks that cannot run there are loaded and run on one
    blank image on the CPU.
    """
    blank = torch.zeros(1, 3, spec.preprocessing.input_size, spec.preprocessing.input_size)
    try:
        with torch.device("meta"):
            network = spec.build_network(replace(spec, weights=None), None)
        stages, _ = spec.cut(network.to("meta"))
        outputs = _run_stages(nn.Sequential(stages), blank.to("meta"))
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        from ._backbones import load_backbone

        outputs = _run_stages(load_backbone(spec).stages, blank)
    channels_last = spec.stage_format == "NHWC"
    return tuple(pool_stage(output, channels_last)[0].shape[1] for output in outputs)


def _run_stages(stages: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    with torch.inference_mode():
        for stage in stages.eval():
            x = stage(x)
            outputs.append(x)
    return outputs


def entry_widths(stages: Sequence[str], widths: Sequence[int], own_width: int) -> dict:
    """Width of every entry, from each stage's pooled width and the model's own features'."""
    entries = {(stage, p): width for stage, width in zip(stages, widths) for p in STAGE_POOLINGS}
    entries[(stages[-1], OWN)] = own_width
    return entries


def entry_model_key(model_key: str, entry: tuple[str, str], stages: Sequence[str]) -> str:
    """Identity of one entry's function; the model's own features keep the plain key.

    So the default features share entries with earlier versions and with the
    fine-tuner's fully frozen backbone.
    """
    stage, pooling = entry
    if entry == (stages[-1], OWN):
        return model_key
    return f"{model_key}|layer={stage}|pool={pooling}"


def columns(plan_entries, entries, widths) -> list[int]:
    """Positions, in a pass's output laid out as ``plan_entries``, of ``entries`` in order."""
    offsets, start = {}, 0
    for entry in plan_entries:
        offsets[entry] = start
        start += widths[entry]
    return [offsets[e] + j for e in entries for j in range(widths[e])]


def fill_from_store(store, keys, features) -> list[int]:
    """Copy stored rows into ``features``; return the images still to compute.

    ``keys[i]`` holds image ``i``'s keys, one per requested entry in column
    order, or None when its content is unknown. An image is found only when
    every one of its entries is.
    """
    known = [i for i, image_keys in enumerate(keys) if image_keys is not None]
    if store is None or not known:
        return list(range(len(keys)))
    per_image = len(keys[known[0]])
    rows = store.get_many([key for i in known for key in keys[i]])
    missing = [i for i, image_keys in enumerate(keys) if image_keys is None]
    for n, index in enumerate(known):
        parts = rows[n * per_image : (n + 1) * per_image]
        if any(part is None for part in parts):
            missing.append(index)
        else:
            features[index] = np.concatenate(parts)
    return sorted(missing)


def save_to_store(store, keys, rows, plan_entries, widths) -> None:
    """Store each entry of a pass's ``rows`` under its own key.

    ``keys[j]`` holds row ``j``'s keys, one per entry of ``plan_entries``, or
    None to skip that row. Entries of equal width go in one ``put_many``.
    """
    known = [j for j, row_keys in enumerate(keys) if row_keys is not None]
    if store is None or not known:
        return
    by_width: dict[int, tuple[list, list]] = {}
    start = 0
    for e, entry in enumerate(plan_entries):
        width = widths[entry]
        entry_keys, blocks = by_width.setdefault(width, ([], []))
        entry_keys.extend(keys[j][e] for j in known)
        blocks.append(rows[known, start : start + width])
        start += width
    for entry_keys, blocks in by_width.values():
        store.put_many(entry_keys, np.concatenate(blocks))
