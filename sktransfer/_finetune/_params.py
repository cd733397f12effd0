"""The fine-tuners' parameters: their constraints, and the setters that keep learning rates scaled.

One ``_parameter_constraints`` dict covers our parameters and skorch's, as
scikit-learn declares its own; :func:`check_params` checks them at the start
of every ``fit`` and ``partial_fit``, so a bad value is named before anything
is built, trained or lost. The constraint machinery is scikit-learn's
(private in 1.6 to 1.9, the versions tested).
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_parameter_constraints,
)
from skorch.callbacks import Callback
from skorch.setter import optimizer_setter
from torch import nn

from .._backbones import Preprocessing
from .._engines.onnx import check_engine
from .._input.transforms import DECODES

FINETUNE_CONSTRAINTS = {
    "backbone": [str, nn.Module],
    "weights": [str, os.PathLike, None],
    "preprocessing": [Preprocessing, None],
    "head": [StrOptions({"linear"}), tuple, list],
    "dropout": [Interval(Real, 0, 1, closed="left")],
    # Checked when the network is built, against the backbone's stages, which the error lists.
    "freeze": "no_validation",
    "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
    "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
    "augment": ["boolean"],
    "tta": [StrOptions({"flip", "ten_crop"}), Options(bool, {False})],
    "decode": [StrOptions(set(DECODES))],
    "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
    "engine": [StrOptions({"torch", "onnxruntime"})],
    "cache": [str, os.PathLike, None],
    "cache_frozen": ["boolean"],
    "random_state": ["random_state"],
    "progress": ["boolean"],
}

#: skorch's own parameters, as its NeuralNet accepts them (batch_size=-1, "one batch
#: of everything", is refused: the frozen stages and prediction run in batches of it).
SKORCH_CONSTRAINTS = {
    "criterion": [callable, None],
    "optimizer": [callable],
    "lr": [Interval(Real, 0, None, closed="neither")],
    "max_epochs": [Interval(Integral, 0, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "iterator_train": [callable],
    "iterator_valid": [callable],
    "iterator_train__shuffle": ["boolean"],
    "dataset": [callable],
    "train_split": [callable, None],
    "callbacks": [list, StrOptions({"disable"}), None],
    "predict_nonlinearity": [StrOptions({"auto"}), callable, None],
    "warm_start": ["boolean"],
    "verbose": ["verbose"],
    "device": [str, torch.device, None],
    "compile": ["boolean"],
    "use_caching": [StrOptions({"auto"}), "boolean"],
    "torch_load_kwargs": [dict, None],
}


def check_params(estimator) -> None:
    """Raise ``InvalidParameterError`` (a ValueError) naming the first invalid parameter."""
    constraints = estimator._parameter_constraints
    params = estimator.get_params(deep=False)
    name = type(estimator).__name__
    validate_parameter_constraints(
        constraints, {key: params[key] for key in constraints}, caller_name=name
    )
    head, device = params["head"], params["device"]
    if head != "linear" and not all(
        isinstance(w, Integral) and not isinstance(w, bool) and w > 0 for w in head
    ):
        raise InvalidParameterError(
            f"The 'head' parameter of {name} must be 'linear' or a tuple of positive ints. "
            f"Got {head!r} instead."
        )
    if isinstance(device, str) and device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise InvalidParameterError(
                f"The 'device' parameter of {name} must be 'auto', a torch device name "
                f"such as 'cpu', 'cuda' or 'cuda:1', a torch.device or None. Got {device!r} "
                "instead."
            ) from None
    callbacks = params["callbacks"]
    if not valid_callbacks(callbacks):
        raise InvalidParameterError(
            f"The 'callbacks' parameter of {name} must be a list of skorch callbacks "
            f"(instances or classes) or of (name, callback) pairs. Got {callbacks!r} instead."
        )
    check_engine(params["engine"], params["precision"])


def _is_callback_entry(entry) -> bool:
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
        entry = entry[1]
    is_class = isinstance(entry, type) and issubclass(entry, Callback)
    return entry is None or is_class or isinstance(entry, Callback)


def valid_callbacks(callbacks) -> bool:
    """Whether skorch can build ``callbacks``: None, "disable", or a list of callbacks."""
    if isinstance(callbacks, list):
        return all(map(_is_callback_entry, callbacks))
    return callbacks is None or (isinstance(callbacks, str) and callbacks == "disable")


def _base_lr(net) -> float:
    """The head's learning rate: ``optimizer__lr`` when set, else ``lr`` (as skorch reads them)."""
    return net.get_params_for("optimizer").get("lr", net.lr)


def _scale_groups(net) -> None:
    lr = _base_lr(net)
    for group in net.optimizer_.param_groups:
        if "lr_scale" in group:
            group["lr_scale"] = net.backbone_lr_scale
        group["lr"] = lr * group.get("lr_scale", 1.0)


def set_learning_rate(net, param, value) -> None:
    """Virtual setter of ``lr``, ``optimizer__*`` and ``backbone_lr_scale`` on a built net.

    skorch's own setter gives every parameter group the new ``lr``; here the
    backbone's groups keep ``lr * backbone_lr_scale``, whichever way the rate
    is set, and the value is kept where a new optimizer reads it (``fit``
    without ``warm_start``, ``clone``). Other optimizer parameters go to skorch.
    """
    if param not in ("lr", "optimizer__lr", "backbone_lr_scale"):
        optimizer_setter(net, param, value)
        return
    setattr(net, param, value)
    if param == "lr" and "optimizer__lr" in vars(net):
        # optimizer__lr wins when an optimizer is built: keep it equal to the rate set last.
        net.optimizer__lr = value
    _scale_groups(net)
