"""Grad-CAM (Selvaraju et al., 2017) over a backbone's stages, mapped back onto the images.

A classifier's class score is written as a differentiable function of the
outputs of its backbone's stages: a fine-tuner's own network, or, for a
pipeline, the featurizer's pooled stages through an optional
``StandardScaler`` into a linear model's ``coef_`` and ``intercept_``. The
heat map of a stage is the ReLU of its channels weighted by the spatial mean
of the score's gradient; it covers the square the network saw, which is
mapped back through the evaluation transform's resize and centre crop to the
image's own pixels (zero outside the crop, which the network never saw).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional

from .._backbones import Preprocessing, load_backbone
from .._engines.device import resolve_device
from .._featurizer import PretrainedFeaturizer
from .._finetune import FineTuneClassifier
from .._input.transforms import centre_of_elongated, eval_transform
from .._layers import OWN, pool_stage

_BATCH_SIZE = 16
_SUPPORTED = (
    "a fitted FineTuneClassifier, or a Pipeline of a PretrainedFeaturizer, optionally "
    "StandardScaler, and a linear classifier with coef_ and intercept_ (LogisticRegression, "
    "RidgeClassifier, LinearSVC, SGDClassifier, ...)"
)


@dataclass
class ClassScores:
    """A classifier's class scores as a function of its backbone's stage outputs.

    Attributes
    ----------
    network : nn.Module
        Holds every module the scores go through; put in eval mode meanwhile.
    stages : nn.Sequential
        The backbone's stages, input to output.
    stage_names : tuple of str
    head : callable
        Maps the list of every stage's output to class scores ``(N, n_classes)``.
    classes : ndarray
        The labels of the score columns.
    preprocessing : Preprocessing
        The evaluation transform the classifier sees images through.
    channels_last : bool
        Whether 4-D stage outputs are ``(N, h, w, C)``.
    device : torch.device
    """

    network: nn.Module
    stages: nn.Sequential
    stage_names: tuple[str, ...]
    head: Callable[[list[torch.Tensor]], torch.Tensor]
    classes: np.ndarray
    preprocessing: Preprocessing
    channels_last: bool
    device: torch.device


def class_scores(estimator) -> ClassScores:
    """The :class:`ClassScores` of a supported classifier; a clear error for any other."""
    if isinstance(estimator, FineTuneClassifier):
        return _finetuner_scores(estimator)
    if isinstance(estimator, Pipeline):
        return _pipeline_scores(estimator)
    raise TypeError(f"Grad-CAM needs {_SUPPORTED}; got {type(estimator).__name__}")


def _finetuner_scores(clf: FineTuneClassifier) -> ClassScores:
    clf.check_is_fitted()
    if clf.multilabel_:
        raise ValueError("Grad-CAM explains single-label classifiers; this one is multi-label")
    network = clf.module_
    return ClassScores(
        network=network,
        stages=network.stages,
        stage_names=tuple(clf.stages_),
        head=lambda outputs: network.head(network.pool(outputs[-1])),
        classes=np.asarray(clf.classes_),
        preprocessing=clf.spec_.preprocessing,
        channels_last=clf.spec_.stage_format == "NHWC",
        device=next(network.parameters()).device,
    )


def _pipeline_scores(pipeline: Pipeline) -> ClassScores:
    steps = [step for _, step in pipeline.steps if step not in (None, "passthrough")]
    names = [type(step).__name__ for step in steps]
    featurizer, *scalers, linear = steps if len(steps) >= 2 else (None, None)
    if (
        not isinstance(featurizer, PretrainedFeaturizer)
        or not all(isinstance(scaler, StandardScaler) for scaler in scalers)
        or not is_classifier(linear)
        or not hasattr(linear, "coef_")
    ):
        raise TypeError(f"Grad-CAM needs {_SUPPORTED}; got a Pipeline of {names}")
    check_is_fitted(featurizer)
    spec = featurizer.spec_
    device = resolve_device(featurizer.device)
    backbone = load_backbone(spec).to(device)
    channels_last = spec.stage_format == "NHWC"
    stage_names = spec.stages
    blocks = [(stage_names.index(stage), pooling) for stage, pooling, _ in featurizer.layers_]

    def as_tensor(values):
        return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)

    affine = []  # each scaler as (x - mean) / scale
    for scaler in scalers:
        mean = as_tensor(scaler.mean_) if scaler.with_mean else 0.0
        scale = as_tensor(scaler.scale_) if scaler.with_std else 1.0
        affine.append((mean, scale))
    coef, intercept = as_tensor(linear.coef_), as_tensor(np.ravel(linear.intercept_))
    if coef.ndim == 1:
        coef = coef[None]

    def head(outputs):
        parts = []
        for index, pooling in blocks:
            if pooling == OWN:
                parts.append(backbone.pool(outputs[index]).float().flatten(1))
            else:
                average, maximum = pool_stage(outputs[index], channels_last)
                parts.append(average if pooling == "avg" else maximum)
        features = torch.cat(parts, dim=1)
        for mean, scale in affine:
            features = (features - mean) / scale
        scores = features @ coef.T + intercept
        # A binary linear model scores its second class; the first gets the opposite.
        return torch.cat([-scores, scores], dim=1) if scores.shape[1] == 1 else scores

    return ClassScores(
        network=backbone,
        stages=backbone.stages,
        stage_names=stage_names,
        head=head,
        classes=np.asarray(linear.classes_),
        preprocessing=spec.preprocessing,
        channels_last=channels_last,
        device=device,
    )


def grad_cam(
    scores: ClassScores, images: Sequence[np.ndarray], target=None, stage=None
) -> tuple[list[np.ndarray], np.ndarray, str]:
    """Grad-CAM heat maps of ``images``, each at its own height and width, scaled to [0, 1].

    Parameters
    ----------
    scores : ClassScores
    images : sequence of ndarray
        Decoded uint8 RGB images ``(H, W, 3)``.
    target : label or None, default=None
        The class explained; None: each image's highest-scoring class.
    stage : str, int or None, default=None
        A stage name or index (negative counts from the output); None: the
        last stage whose output has spatial extent.

    Returns
    -------
    maps : list of ndarray of shape (H, W), float32
    targets : ndarray
        The class explained for each image.
    stage : str
        The stage name.
    """
    target_index = None if target is None else _class_index(target, scores.classes)
    transform = eval_transform(scores.preprocessing)
    maps, targets, name = [], [], None
    for start in range(0, len(images), _BATCH_SIZE):
        chunk = images[start : start + _BATCH_SIZE]
        batch = torch.stack([transform(image) for image in chunk])
        cams, chosen, name = _batch_cams(scores, batch, target_index, stage)
        targets.extend(scores.classes[chosen])
        for cam, image in zip(cams, chunk):
            maps.append(to_image(cam, image.shape[:2], scores.preprocessing))
    return maps, np.asarray(targets), name


def _batch_cams(scores: ClassScores, batch: torch.Tensor, target_index, stage):
    was_training = scores.network.training
    scores.network.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # Gradients reach every stage's output through the input, frozen stages included.
            x = batch.to(scores.device).requires_grad_()
            outputs = []
            for module in scores.stages:
                x = module(x)
                outputs.append(x)
            logits = scores.head(outputs).float()
            if target_index is None:
                chosen = logits.argmax(dim=1)
            else:
                chosen = torch.full((len(batch),), target_index, device=logits.device)
            activations = [_channels_first(out, scores.channels_last) for out in outputs]
            index = _stage_index(stage, scores.stage_names, activations)
            (gradient,) = torch.autograd.grad(
                logits.gather(1, chosen[:, None]).sum(), outputs[index]
            )
    finally:
        scores.network.train(was_training)
    activation = activations[index].detach().float()
    gradient = _channels_first(gradient, scores.channels_last).float()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activation).sum(dim=1))
    return cams.cpu().numpy(), chosen.cpu().numpy(), scores.stage_names[index]


def _channels_first(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if channels_last and x.ndim == 4 else x


def _has_extent(activation: torch.Tensor) -> bool:
    return activation.ndim == 4 and activation.shape[2] * activation.shape[3] > 1


def _stage_index(stage, names: tuple[str, ...], activations) -> int:
    """The stage asked for, by name or index; it must have spatial extent."""
    shapes = ", ".join(
        f"{i}={name} {tuple(a.shape[1:])}" for i, (name, a) in enumerate(zip(names, activations))
    )
    if stage is None:
        spatial = [i for i, a in enumerate(activations) if _has_extent(a)]
        if not spatial:
            raise ValueError(
                "no stage of this backbone outputs a spatial map (C, h, w) for Grad-CAM "
                f"(a vision transformer's are tokens); its stages (output shapes): {shapes}"
            )
        return spatial[-1]
    if isinstance(stage, str) and stage in names:
        index = names.index(stage)
    elif isinstance(stage, Integral) and not isinstance(stage, bool) and -len(names) <= stage:
        if stage >= len(names):
            raise ValueError(f"stage={stage!r} is not a stage of this backbone: {shapes}")
        index = int(stage) % len(names)
    else:
        raise ValueError(f"stage={stage!r} is not a stage name or index of this backbone: {shapes}")
    if not _has_extent(activations[index]):
        raise ValueError(
            f"stage {names[index]!r} has no spatial extent for Grad-CAM; choose a stage whose "
            f"output is (C, h, w) with h * w > 1: {shapes}"
        )
    return index


def _class_index(target, classes: np.ndarray) -> int:
    matches = np.flatnonzero(classes == target)
    if len(matches) != 1:
        raise ValueError(f"target={target!r} is not one of the classes {classes.tolist()}")
    return int(matches[0])


def to_image(cam: np.ndarray, shape: tuple[int, int], preprocessing: Preprocessing) -> np.ndarray:
    """A heat map over the network's input square, in the image's pixels, scaled to [0, 1].

    Undoes the evaluation transform's geometry: the cut of an elongated image
    to 4:1, the resize of its shorter side (both sides with
    ``crop_mode="squash"``) and the centre crop. Pixels outside the crop get 0.

    Parameters
    ----------
    cam : ndarray of shape (h, w)
        Non-negative, over the network's ``input_size`` square.
    shape : (int, int)
        The image's height and width.
    preprocessing : Preprocessing

    Returns
    -------
    heat : ndarray of shape ``shape``, float32
    """
    height, width = shape
    # Where the kept centre of an elongated image lies (centre_of_elongated's cut).
    kept = centre_of_elongated(np.broadcast_to(np.zeros(1, np.uint8), (height, width)))
    kept_h, kept_w = kept.shape
    top0, left0 = (height - kept_h) // 2, (width - kept_w) // 2
    size, resize = preprocessing.input_size, preprocessing.resize_size
    if preprocessing.crop_mode == "squash":
        new_h = new_w = resize
    elif kept_h <= kept_w:  # torchvision's Resize: the shorter side to `resize`
        new_h, new_w = resize, int(resize * kept_w / kept_h)
    else:
        new_h, new_w = int(resize * kept_h / kept_w), resize
    crop_top, crop_left = round((new_h - size) / 2), round((new_w - size) / 2)
    # The crop square, in the image's pixels.
    top = top0 + crop_top * kept_h / new_h
    left = left0 + crop_left * kept_w / new_w
    rows = max(1, round(size * kept_h / new_h))
    cols = max(1, round(size * kept_w / new_w))
    resized = functional.interpolate(
        torch.as_tensor(cam, dtype=torch.float32)[None, None],
        size=(rows, cols),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    heat = np.zeros((height, width), dtype=np.float32)
    top, left = round(top), round(left)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + rows, height), min(left + cols, width)
    if y1 > y0 and x1 > x0:
        heat[y0:y1, x0:x1] = resized[y0 - top : y1 - top, x0 - left : x1 - left]
    peak = heat.max()
    return heat / peak if peak > 0 else heat
