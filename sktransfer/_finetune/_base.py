"""FineTuneBase: what every fine-tuner shares, whatever its targets.

Parameters and skorch plumbing, building and freezing the network, seeding
and warm-up, the datasets of frozen-stage outputs, prediction over test-time
views and persistence. A task (:class:`FineTuneClassifier`,
:class:`FineTuneRegressor`) adds its targets, its criterion and what
``predict`` returns.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_random_state
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import TeeGenerator, to_numpy
from torch import nn

from .._backbones import load_backbone, resolve_spec
from .._engines.device import grad_scaler, resolve_device, resolve_precision
from .._engines.torch import run_batches
from .._input.images import ImageCollection, InvalidImageError
from .._input.transforms import EvalView, eval_views
from .._versions import check_versions, record_versions
from ._callbacks import EpochProgress
from ._decoded import DecodedImages
from ._frozen import ActivationDataset, FrozenDatasetsMixin
from ._network import FineTuneNetwork, frozen_stage_count, make_head, param_groups
from ._params import (
    FINETUNE_CONSTRAINTS,
    SKORCH_CONSTRAINTS,
    check_params,
    set_learning_rate,
    valid_callbacks,
)

#: Parameters the network is built from: changing one rebuilds it, even with warm_start.
NETWORK_PARAMS = ("backbone", "weights", "preprocessing", "head", "dropout", "freeze")


def _stacklevel_outside_package() -> int:
    """``stacklevel`` that attributes a warning to the first caller outside sktransfer.

    So it is shown once per line of the user's code (Python's default filter), not
    once per process; fit and partial_fit reach the caller by different paths.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


class FineTuneBase(FrozenDatasetsMixin, NeuralNet):
    """A pretrained backbone and a new head, trained with skorch; the task-agnostic part.

    Not used directly: a fine-tuner subclasses it and a skorch task class,
    e.g. ``FineTuneClassifier(FineTuneBase, NeuralNetClassifier)``, and
    provides ``_learn_targets``, ``_encode_targets``, ``_n_outputs`` and
    ``initialize_criterion``.
    """

    _parameter_constraints = {**FINETUNE_CONSTRAINTS, **SKORCH_CONSTRAINTS}

    def __init__(
        self,
        backbone,
        *,
        weights,
        preprocessing,
        head,
        dropout,
        freeze,
        warmup_epochs,
        backbone_lr_scale,
        augment,
        tta,
        decode,
        precision,
        engine,
        cache,
        cache_frozen,
        random_state,
        progress,
        **kwargs,
    ):
        self.backbone = backbone
        self.weights = weights
        self.preprocessing = preprocessing
        self.head = head
        self.dropout = dropout
        self.freeze = freeze
        self.warmup_epochs = warmup_epochs
        self.backbone_lr_scale = backbone_lr_scale
        self.augment = augment
        self.tta = tta
        self.decode = decode
        self.precision = precision
        self.engine = engine
        self.cache = cache
        self.cache_frozen = cache_frozen
        self.random_state = random_state
        self.progress = progress
        kwargs.setdefault("iterator_train__shuffle", True)
        super().__init__(FineTuneNetwork, **kwargs)

    def __setattr__(self, name, value):
        # skorch refuses an nn.Module set outside initialize() as an untracked
        # component; a module backbone is a parameter, copied when the network is built.
        if name == "backbone":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # skorch reads self.device wherever it moves data and needs a concrete device;
    # "auto" resolves here, while get_params and pickles keep what the user gave.
    @property
    def device(self):
        device = self.__dict__["device"]
        return resolve_device(device) if isinstance(device, str) and device == "auto" else device

    @device.setter
    def device(self, value):
        self.__dict__["device"] = value

    def _get_param_names(self):
        # The module is built from the parameters below, not given by the user; names
        # with a leading underscore (skorch's _params_to_validate, ours) are not parameters.
        return [
            name
            for name in super()._get_param_names()
            if name != "module" and not name.startswith("_")
        ]

    def get_params(self, deep=True, **kwargs):
        params = super().get_params(deep=deep, **kwargs)
        params["device"] = self.__dict__["device"]
        return params

    def set_params(self, **params):
        # skorch builds the callbacks in set_params and fails there on a bad value; as
        # in scikit-learn, set_params keeps any value and fit refuses it by name.
        if not valid_callbacks(params.get("callbacks")):
            self.__dict__["callbacks"] = params.pop("callbacks")
        return super().set_params(**params)

    @property
    def _default_callbacks(self):
        return [*super()._default_callbacks, ("progress", EpochProgress())]

    # --- building the network ---

    def _torch_device(self) -> torch.device:
        # device=None (skorch's "leave tensors where they are") computes on the CPU.
        return torch.device("cpu") if self.device is None else torch.device(self.device)

    def _compute_dtype(self) -> torch.dtype:
        """The network's dtype: ``precision`` for ``engine``, on this device.

        Resolved at every use and set on the network, so the frozen stages run
        in the precision their stored outputs are keyed by, and the trainable
        ones train in it: one set after ``fit``, or what ``"auto"`` means
        where a pickled model is loaded.
        """
        if self.engine == "onnxruntime":
            dtype = torch.float32
        else:
            dtype = resolve_precision(self.precision, self._torch_device())
        if getattr(self, "module_", None) is not None:
            self.module_.precision = dtype
        return dtype

    #: Whether the head computes in float32 whatever ``precision`` is (see FineTuneNetwork).
    _fp32_head = False

    def initialize_module(self):
        """Build the network: pretrained backbone, frozen prefix and a new head."""
        check_params(self)
        n_outputs = self._n_outputs()
        seed = self.random_state if isinstance(self.random_state, Integral) else None
        spec = resolve_spec(self.backbone, self.weights, self.preprocessing, random_state=seed)
        n_frozen = frozen_stage_count(self.freeze, spec.name, spec.stages)
        backbone = load_backbone(spec)
        head = make_head(self.head, spec.feature_dim, n_outputs, self.dropout)
        self.module_ = FineTuneNetwork(
            backbone.stages,
            head,
            n_frozen,
            precision=self._compute_dtype(),
            pool=backbone.pool,
            fp32_head=self._fp32_head,
        ).to(memory_format=torch.channels_last)
        # A new network starts with a new loss scale (fp16 training).
        self.grad_scaler_ = None
        self.spec_ = spec
        self.stages_ = spec.stages
        self.frozen_stages_ = spec.stages[:n_frozen]
        self._built_from = {name: getattr(self, name) for name in NETWORK_PARAMS}
        return self

    def _network_params_changed(self) -> bool:
        """Whether a parameter the network was built from has changed since."""
        built = getattr(self, "_built_from", None)
        if built is None:
            return True
        for name, before in built.items():
            now = getattr(self, name)
            if isinstance(now, nn.Module) or isinstance(before, nn.Module):
                if now is not before:
                    return True
            elif type(now) is not type(before) or now != before:
                return True
        return False

    def initialize_optimizer(self, triggered_directly=None):
        """Optimizer over trainable parameters; backbone stages at ``lr * backbone_lr_scale``.

        ``optimizer__param_groups`` patterns (skorch's) match first.
        """
        kwargs = self.get_params_for("optimizer")
        lr = kwargs.setdefault("lr", self.lr)
        extra = kwargs.pop("param_groups", [])
        groups = param_groups(self.module_, lr, self.backbone_lr_scale, extra)
        self.optimizer_ = self.optimizer(groups, **kwargs)
        return self

    def _initialize_optimizer(self, reason=None):
        super()._initialize_optimizer(reason)
        # skorch's own setter gives every group the same rate; keep the backbone's scale.
        self._register_virtual_param(["lr", "optimizer__*", "backbone_lr_scale"], set_learning_rate)
        return self

    def check_data(self, X, y):
        # Targets are checked and encoded in partial_fit; skorch would re-infer them here.
        pass

    # --- training ---

    @contextlib.contextmanager
    def _seeded(self):
        """Seed torch from ``random_state`` for the block, then restore its global state."""
        if self.random_state is None:
            yield
            return
        if isinstance(self.random_state, Integral):
            seed = int(self.random_state)
        else:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        # Fork CUDA's generators too when this fit may draw from them.
        cuda = torch.cuda.is_available() and (
            torch.cuda.is_initialized() or self._torch_device().type == "cuda"
        )
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
            torch.manual_seed(seed)
            yield

    def fit(self, X, y, **fit_params):
        """Build the network and train it.

        Parameters
        ----------
        X : collection of images
            Paths, PIL images, arrays (N, H, W[, C]) or tensors (N, C, H, W).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The targets, as the class describes them.
        **fit_params : dict
            Passed to ``train_split``, e.g. ``groups`` for a split by group;
            the network takes no extra inputs.

        Returns
        -------
        self : object

        Raises
        ------
        KeyboardInterrupt
            Interrupted (Ctrl-C) before the first epoch finished, while the
            images were decoded or the frozen stages computed: the estimator
            is left unfitted. Interrupted later, ``fit`` keeps the finished
            epochs, as skorch does, and warns how many ran.
        """
        check_params(self)
        with self._seeded():
            fresh = not self.warm_start or not self.initialized_ or self._network_params_changed()
            try:
                if fresh:
                    self._learn_targets(y)
                    self.initialize()
                self._warmup_pending = fresh
                self.partial_fit(X, y, **fit_params)
            except KeyboardInterrupt:
                if fresh:
                    self._discard_network()
                raise
            finally:
                self._warmup_pending = False
        return self

    def _discard_network(self) -> None:
        """Back to a new estimator's state: a fit interrupted before its first epoch.

        Its network has the random new head, which ``predict`` would use as if
        trained; so the estimator becomes a new one with the same parameters, unfitted.
        """
        unfitted = type(self)(**self.get_params(deep=False))
        vars(self).clear()
        vars(self).update(vars(unfitted))

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train the current network further (build it first if needed).

        Parameters
        ----------
        X : collection of images
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The targets, as in the first fit.
        classes : ignored
            A classifier takes the ``classes`` parameter instead.
        **fit_params : dict
            Passed to ``train_split``.

        Returns
        -------
        self : object

        Raises
        ------
        KeyboardInterrupt
            Interrupted before an epoch of this call finished. Interrupted
            later, the finished epochs are kept, with a warning.
        """
        check_params(self)
        images = ImageCollection(X)
        if len(np.asarray(y)) != len(images):
            raise ValueError(f"X has {len(images)} images but y has {len(np.asarray(y))} targets")
        if not self.initialized_:
            self._learn_targets(y)
            self.initialize()
        # One set of decoded images for the warm-up and every epoch of this call.
        images = self._decoded_images(images)
        finished = self._finished_epochs()
        planned = self.max_epochs + self._warmup_epochs_pending()
        self._interrupt = self._callback_stop = None
        super().partial_fit(images, self._encode_targets(y), classes, **fit_params)
        interrupt, stop = self._interrupt, self._callback_stop
        self._interrupt = self._callback_stop = None
        if interrupt is not None:
            finished = self._finished_epochs() - finished
            if not finished:
                raise interrupt
            if interrupt is stop:
                return self  # a callback ended training, as EarlyStopping does
            warnings.warn(
                f"training was interrupted after {finished} of {planned} epochs; the model "
                "keeps what they learned (history_ lists them; partial_fit trains further)",
                UserWarning,
                stacklevel=_stacklevel_outside_package(),
            )
        return self

    def _finished_epochs(self) -> int:
        """Epochs in ``history`` whose training ran to the end."""
        return sum("train_loss" in epoch for epoch in self.history)

    def _warmup_epochs_pending(self) -> int:
        """Head-only epochs the current fit runs before ``max_epochs``."""
        probe = getattr(self, "_warmup_pending", False) and self.module_.n_frozen < len(
            self.stages_
        )
        return self.warmup_epochs if probe else 0

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop, after ``warmup_epochs`` of training the head alone."""
        if self._compute_dtype() == torch.float16:  # trains in the current precision
            # The loss scale learnt so far carries on, on this fit's device.
            state = None if self.grad_scaler_ is None else self.grad_scaler_.state_dict()
            self.grad_scaler_ = grad_scaler(self._torch_device(), state)
        warmup = self._warmup_epochs_pending()
        self._warmup_pending = False
        try:
            if warmup:
                n_frozen = self.module_.n_frozen
                # The optimizer keeps every parameter; frozen ones get no gradient, so no step.
                self.module_.set_frozen(len(self.stages_))
                try:
                    super().fit_loop(X, y, epochs=warmup, **fit_params)
                finally:
                    self.module_.set_frozen(n_frozen)
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt as interrupt:
            # skorch's partial_fit swallows it, even before the first epoch (while the
            # frozen stages run); partial_fit raises it again when no epoch finished.
            self._interrupt = interrupt
            raise

    def notify(self, method_name, **cb_kwargs):
        try:
            super().notify(method_name, **cb_kwargs)
        except KeyboardInterrupt as stop:
            # skorch's way for a callback to end training (EarlyStopping), not a Ctrl-C.
            self._callback_stop = stop
            raise

    def _loss_scaler(self):
        """The GradScaler while training in fp16, else None (bf16 and fp32 need none)."""
        return self.grad_scaler_ if self.module_.precision == torch.float16 else None

    def train_step_single(self, batch, **fit_params):
        """skorch's step, with the loss scaled before backward when training in fp16."""
        scaler = self._loss_scaler()
        if scaler is None:
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        scaler.scale(loss).backward()
        return {"loss": loss, "y_pred": y_pred}

    def train_step(self, batch, **fit_params):
        """skorch's step; in fp16, the GradScaler's (which takes no closure) instead."""
        scaler = self._loss_scaler()
        if scaler is None:
            return super().train_step(batch, **fit_params)
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        optimizers = [getattr(self, name + "_") for name in self._optimizers]
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        # Callbacks (gradient clipping, norms) see the true gradients.
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        for optimizer in optimizers:
            scaler.step(optimizer)  # skipped when a gradient overflowed
        scaler.update()
        return step

    def infer(self, x, **fit_params):
        # fit_params belong to train_split (see fit): the network takes no extra inputs.
        if not torch.is_grad_enabled():
            self._compute_dtype()  # a precision set after fit applies to prediction
        return super().infer(x)

    # --- prediction ---

    def _predict_views(self, X, nonlinearity) -> np.ndarray:
        """``nonlinearity`` of the network's outputs, averaged over the views of ``tta``."""
        self._compute_dtype()  # a precision set after fit applies to prediction
        images = self._decoded_images(X)  # each image decoded once for all the views
        views = eval_views(self.spec_.preprocessing, self.tta)
        total = 0
        for view in views:
            total = total + self._predict_view(images, view, nonlinearity)
        return total / len(views) if len(views) > 1 else total

    def _predict_view(self, images: DecodedImages, view: EvalView, nonlinearity) -> np.ndarray:
        """Outputs for one view: the trainable part on cached outputs, else the network."""
        dataset = self._dataset(images, None, training=False, view=view)
        if isinstance(dataset, ActivationDataset):
            batches = self.forward_iter(dataset, training=False)
            return np.concatenate([to_numpy(nonlinearity(batch)) for batch in batches])
        network = self.module_.eval()
        outputs, failures = None, []
        batches = run_batches(
            lambda batch: nonlinearity(network(images=batch)),
            images,
            transform=view,
            batch_size=self.batch_size,
            device=self._torch_device(),
            num_workers=self.get_params_for("iterator_valid").get("num_workers", 0),
            progress="predicting" if self.progress else None,
        )
        for indices, rows, bad in batches:
            failures.extend(bad)
            if rows is None:
                continue
            if outputs is None:
                outputs = np.empty((len(images), rows.shape[1]), dtype=np.float32)
            outputs[indices] = rows
        if failures:
            raise InvalidImageError(failures)
        return outputs

    # --- persistence and tags ---

    def __getstate__(self):
        return record_versions(super().__getstate__())

    def __setstate__(self, state):
        check_versions(state, type(self).__name__)
        # skorch maps CUDA tensors to the CPU when the saved device is missing here;
        # it needs a concrete device for that, so "auto" is resolved on this machine.
        requested = state["device"]
        if requested == "auto":
            state["device"] = resolve_device("auto")
        super().__setstate__(state)
        if requested == "auto":
            self.__dict__["device"] = "auto"
        # Fitted before mixed-precision training: no loss scale yet, and the regressor's
        # head computed in float32 by its class, as fp32_head now says.
        self.__dict__.setdefault("grad_scaler_", None)
        module = self.__dict__.get("module_")
        if module is not None and not hasattr(module, "fp32_head"):
            module.fp32_head = self._fp32_head

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        return tags
