"""The fine-tuning network: backbone stages, the backbone's pooling and a new head.

Freezing counts the backbone's stages (see :class:`~sktransfer.BackboneSpec`).
Frozen stages get ``requires_grad=False`` and stay in eval mode, so they
compute a fixed function of the image.
"""

from __future__ import annotations

from fnmatch import fnmatch
from numbers import Integral

import torch
from torch import nn

from .._backbones import GlobalAveragePool
from .._engines.device import autocast


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # channels_last makes convolutions markedly faster on CPU and on tensor cores.
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


class FineTuneNetwork(nn.Module):
    """Backbone stages, the backbone's pooling and a new head; the first stages frozen.

    Parameters
    ----------
    stages : nn.Sequential
        The backbone's stages, input to output.
    head : nn.Module
        Maps pooled features ``(N, D)`` to logits.
    n_frozen : int
        How many leading stages are frozen: their parameters get
        ``requires_grad=False`` and they stay in eval mode even when the
        network trains, so BatchNorm keeps its running statistics and
        dropout stays off.
    precision : torch.dtype, default=torch.float32
        Compute dtype (autocast when not float32) of every stage, in training
        as in prediction, and of the head unless ``fp32_head``. Parameters,
        gradients and the optimizer's state stay float32; outputs are float32.
    pool : nn.Module, default=None
        The backbone's pooling (``Backbone.pool``), frozen with the last
        stage; None: global average pooling.
    fp32_head : bool, default=False
        Compute the head in float32 whatever ``precision`` is.
    """

    def __init__(
        self,
        stages: nn.Sequential,
        head: nn.Module,
        n_frozen: int,
        precision: torch.dtype = torch.float32,
        pool: nn.Module | None = None,
        fp32_head: bool = False,
    ):
        super().__init__()
        self.stages = stages
        self.pool = pool if pool is not None else GlobalAveragePool()
        self.head = head
        self.precision = precision
        self.fp32_head = fp32_head
        self.set_frozen(n_frozen)

    def set_frozen(self, n_frozen: int) -> None:
        """Freeze the first ``n_frozen`` stages and let the others train."""
        self.n_frozen = n_frozen
        for index, stage in enumerate(self.stages):
            stage.requires_grad_(index >= n_frozen)
        self.pool.requires_grad_(n_frozen < len(self.stages))
        self.train(self.training)

    @property
    def frozen_stages(self) -> nn.Sequential:
        return self.stages[: self.n_frozen]

    @property
    def trainable_stages(self) -> nn.Sequential:
        return self.stages[self.n_frozen :]

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen_stages.eval()
        if self.n_frozen == len(self.stages):
            self.pool.eval()
        return self

    def forward_frozen(self, images: torch.Tensor) -> torch.Tensor:
        """Output of the frozen stages (float32); pooled when the whole backbone is frozen."""
        if self.n_frozen == 0:
            return images
        with torch.no_grad(), autocast(images.device, self.precision):
            x = self.frozen_stages(_channels_last(images))
            # A fully frozen backbone hands over its (N, D) features.
            x = self.pool(x) if self.n_frozen == len(self.stages) else x
        return x.float()

    def forward_trainable(self, activations: torch.Tensor) -> torch.Tensor:
        """Logits (float32) from the output of :meth:`forward_frozen`, under autocast."""
        x = activations
        with autocast(x.device, self.precision):
            if self.n_frozen < len(self.stages):
                x = self.pool(self.trainable_stages(_channels_last(x)))
            if not self.fp32_head:
                return self.head(x).float()
        with autocast(x.device, torch.float32):
            return self.head(x.float())

    def forward(self, images=None, activations=None):
        """Logits from preprocessed ``images``, or from frozen-stage ``activations``."""
        if activations is None:
            activations = self.forward_frozen(images)
        return self.forward_trainable(activations)


def make_head(head, in_features: int, n_outputs: int, dropout: float) -> nn.Sequential:
    """A linear layer, or an MLP with ReLU; dropout on the input of every linear layer."""
    hidden = () if head == "linear" else tuple(head)
    layers = []
    for width in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers += [nn.Dropout(dropout), nn.Linear(in_features, n_outputs)]
    return nn.Sequential(*layers)


def frozen_stage_count(freeze, name: str, stages: tuple[str, ...]) -> int:
    """How many leading stages ``freeze`` freezes; a clear error naming the stages if invalid."""
    n = len(stages)
    if freeze == "backbone":
        return n
    if isinstance(freeze, Integral) and not isinstance(freeze, bool):
        if 0 <= freeze <= n:
            return int(freeze)
        if -n <= freeze < 0:
            return n + int(freeze)
    listed = ", ".join(f"{i}={stage}" for i, stage in enumerate(stages))
    raise ValueError(
        f"freeze={freeze!r} is not valid for backbone {name!r}, whose {n} stages are "
        f"[{listed}]. Use 'backbone' (only the head trains), an int k in 0..{n} "
        f"(the first k stages frozen, 0 = train everything) or -k in -{n}..-1 "
        "(all but the last k stages frozen)"
    )


def param_groups(network: FineTuneNetwork, lr: float, scale: float, extra=()) -> list[dict]:
    """Optimizer groups of the trainable parameters: the backbone's at ``lr * scale``.

    ``extra`` (skorch's ``optimizer__param_groups``: ``(pattern, options)``
    pairs) matches first; each backbone group records its ``lr_scale`` so a
    new ``lr`` keeps it.
    """
    patterns = [
        *extra,
        ("stages.*", {"lr": lr * scale, "lr_scale": scale}),
        ("pool.*", {"lr": lr * scale, "lr_scale": scale}),
    ]
    remaining = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
    groups = []
    for pattern, options in patterns:
        matched = [p for n, p in remaining if fnmatch(n, pattern)]
        remaining = [(n, p) for n, p in remaining if not fnmatch(n, pattern)]
        if matched:
            groups.append({"params": matched, **options})
    if remaining:
        groups.append({"params": [p for _, p in remaining]})
    return groups
