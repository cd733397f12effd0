"""FineTuneClassifier: a pretrained backbone and a new head, trained with skorch."""

from __future__ import annotations

import contextlib
import os
from fnmatch import fnmatch
from functools import partial
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    Options,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.class_weight import compute_class_weight
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from skorch.utils import is_dataset
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .._backbones import Preprocessing, load_backbone, module_fingerprint, resolve_spec
from .._cache import resolve_store
from .._device import autocast, precision_name, resolve_device, resolve_precision
from .._disk_store import DiskStore
from .._images import ImageCollection, InvalidImageError
from .._inference import run_batches
from .._onnx import check_engine, onnx_engine
from .._transforms import EvalView, eval_views, train_augmentation
from ._frozen import ActivationDataset, ImageDataset, frozen_outputs, with_transform
from ._network import FineTuneNetwork, frozen_stage_count, make_head
from ._targets import encode_targets, learn_targets

#: Parameters the network is built from: changing one rebuilds it, even with warm_start.
NETWORK_PARAMS = ("backbone", "weights", "preprocessing", "head", "dropout", "freeze")


def _set_scaled_lr(net, param, value):
    """Virtual ``lr`` setter that keeps each parameter group's ``lr_scale``."""
    net.lr = value
    for group in net.optimizer_.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)


class EpochProgress(Callback):
    """A progress bar over the epochs of a fit, with the last training loss.

    Shown when the net's ``progress`` is True and the output is a terminal or
    a notebook (tqdm's own check), so it stays silent in logs and in the
    worker processes of a parallel search; it clears itself when done.
    """

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.bar_ = tqdm(
            total=net.max_epochs + net._warmup_epochs_pending(),
            desc="epochs",
            unit="epoch",
            leave=False,
            disable=not net.progress or None,
        )

    def on_epoch_end(self, net, **kwargs):
        self.bar_.update()
        self.bar_.set_postfix(train_loss=f"{net.history[-1, 'train_loss']:.4f}", refresh=False)

    def on_train_end(self, net, X=None, y=None, **kwargs):
        self.bar_.close()
        self.bar_ = None  # a fitted net pickles without a terminal handle


class FineTuneClassifier(NeuralNetClassifier):
    """Fine-tune a pretrained image backbone with a new classification head.

    A :class:`skorch.NeuralNetClassifier` whose module is built in ``fit``:
    the backbone (from the registry or a module), global average pooling and
    a head sized from the classes in ``y``. ``freeze`` chooses how many
    leading stages of the backbone stay fixed.

    The frozen stages compute a fixed function of the image, so their output
    for each image is computed once and kept in the feature store ``cache``,
    keyed by the backbone's identity, the number of frozen stages, the
    precision and the image's content: every epoch, every fold and parameter
    setting of a search, and every ``predict`` that freezes the same stages
    reuse it. With ``freeze="backbone"`` the entries are the ones
    :class:`PretrainedFeaturizer` stores for the same backbone, so featurizing
    first makes training the head nearly free.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        A name from :func:`sktransfer.list_backbones`, or a module mapping
        (N, 3, S, S) to (N, D) or (N, C, h, w); an ``nn.Sequential``'s
        children are its stages. The module is copied, never changed.
    weights : "default", None or path, default="default"
        ``"default"``: the registry's pretrained weights; ``None``: random
        initialisation (a baseline, seeded by ``random_state``); a path: a
        state dict file.
    preprocessing : Preprocessing, default=None
        Overrides the preprocessing that belongs to the weights; for a
        module backbone, defaults to ImageNet's (224 px).
    head : "linear" or tuple of int, default="linear"
        A linear layer, or the hidden widths of a small MLP with ReLU.
    dropout : float, default=0.2
        Dropout on the input of every linear layer of the head.
    freeze : "backbone" or int, default="backbone"
        ``"backbone"``: only the head trains. An int k >= 0: the first k
        stages are frozen (0 trains everything). A negative int -k: all but
        the last k stages are frozen. ``stages_`` lists the stages.
    warmup_epochs : int, default=0
        Probe, then tune: first train only the head for this many epochs,
        with the whole backbone frozen (on cached features, so nearly
        free), then train the stages ``freeze`` leaves trainable with it for
        ``max_epochs``. A new head trained jointly with pretrained stages
        sends large, random gradients into them; a head that already fits
        does not (Kumar et al., ICLR 2022; fastai's ``fine_tune``). No
        effect with ``freeze="backbone"`` or with ``warm_start`` fits that
        continue training.
    backbone_lr_scale : float, default=0.1
        Learning rate of the trainable backbone stages relative to ``lr``,
        the head's; pretrained weights need smaller steps than a new head.
    augment : bool, default=False
        Train on random resized crops and horizontal flips (torchvision v2),
        sized from the preprocessing. The frozen stages then run on every
        batch of training; ``predict`` still uses the store.
    tta : {False, "flip", "ten_crop"}, default=False
        Test-time augmentation: ``predict_proba`` averages the probabilities
        of several views of each image. ``"flip"``: the centre crop and its
        mirror image (2 passes); ``"ten_crop"``: the centre and four corner
        crops of the resized image and their mirror images (10 passes, as
        torchvision's ``TenCrop``). Each view's frozen outputs are cached
        like the plain view's.
    class_weight : "balanced", dict or None, default=None
        Weights of the classes in the loss, as in scikit-learn:
        ``"balanced"`` weights each class by ``n_samples / (n_classes *
        count)`` of the ``y`` given to ``fit``; a dict maps labels to weights
        (others get 1). Single-label ``y`` and the default criterion only.
    label_smoothing : float, default=0.0
        Mix the one-hot targets with the uniform distribution (torch's
        ``CrossEntropyLoss(label_smoothing=)``). Single-label ``y`` and the
        default criterion only.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Compute precision of the frozen stages and of prediction, as the
        featurizer's: ``"auto"`` is bf16 (or fp16) autocast on CUDA and fp32
        on CPU. Trainable stages and the head train in float32.
    engine : {"torch", "onnxruntime"}, default="torch"
        What computes the frozen stages' outputs when they are computed once
        (``cache_frozen``, no ``augment``), for ``fit`` and prediction:
        ``"onnxruntime"`` exports them to ONNX once per process and runs them
        with ONNX Runtime, as :class:`PretrainedFeaturizer` does (fp32 only;
        ``pip install "sktransfer[onnx]"``). Training always runs in torch.
    cache : "memory", str, os.PathLike or None, default="memory"
        Feature store for the frozen stages' outputs: ``"memory"``, the
        process-wide LRU (bounded in bytes) that the featurizer uses; a
        directory, a SQLite store shared by processes and later sessions;
        None, nothing stored across fits. Outputs larger than
        ``FROZEN_STORE_MAX_ROW_BYTES`` per image (early stages at full
        resolution) are not stored; a randomly initialised registry backbone
        is cached only when an int ``random_state`` seeds it.
    cache_frozen : bool, default=True
        Run the frozen stages once per image rather than on every batch:
        from the store, else once per ``fit`` (held in memory up to
        ``FROZEN_CACHE_LIMIT_BYTES``). ``False`` runs them on every batch.
    random_state : int, RandomState instance or None, default=None
        Seeds everything random in ``fit``: head initialisation, dropout,
        shuffling, augmentation and a randomly initialised backbone, so two
        fits give identical models and a search gives the same result with
        any ``n_jobs``. torch's global random state is restored afterwards.
        None draws from torch's global generator.
    progress : bool, default=True
        Show progress bars (frozen-stage pass, epochs, prediction) when the
        output is a terminal or a notebook; they clear themselves when done.
    classes : array-like, default=None
        The class labels, in the order of ``predict_proba``'s columns (for
        multi-label ``y``: one name per column). Default: the sorted labels
        of ``y``. Given, it lets ``initialize()`` build a single-label network
        before ``fit``, for instance to ``load_params`` from a checkpoint.
    criterion : torch loss class or None, default=None
        A loss on logits; ``None`` is ``CrossEntropyLoss``, or
        ``BCEWithLogitsLoss`` for multi-label ``y``.
    optimizer : torch optimizer class, default=torch.optim.AdamW
        Its parameters are set with the ``optimizer__`` prefix, e.g.
        ``optimizer__weight_decay=0.05``.
    lr : float, default=1e-3
        Learning rate of the head.
    max_epochs : int, default=10
        Number of epochs (after ``warmup_epochs``).
    batch_size : int, default=16
        Images per step; moderate batches are fastest on CPU.
    train_split : callable or None, default=None
        None trains on everything ``fit`` gets: validation is the job of
        cross-validation around the estimator, as in scikit-learn. Pass a
        skorch split such as ``ValidSplit(5, stratified=True)`` for
        validation scores per epoch (and ``EarlyStopping``); a stratified
        split needs enough samples of every class, and says so. Multi-label
        ``y`` is split without stratification.
    callbacks : list or None, default=None
        skorch callbacks: ``EarlyStopping``, ``Checkpoint``,
        ``LRScheduler``, ``Freezer``, ...
    warm_start : bool, default=False
        Continue training the current network on the next ``fit``, unless a
        parameter it is built from changed (``backbone``, ``weights``,
        ``preprocessing``, ``head``, ``dropout``, ``freeze``): then it is
        built afresh.
    verbose : int, default=0
        1 prints skorch's table of losses per epoch.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then CPU.
    **kwargs
        Any other :class:`skorch.NeuralNet` argument (``iterator_train__*``,
        ``criterion__*``, ``predict_nonlinearity``, ``compile``, ...).
        ``iterator_train__shuffle`` defaults to True.

    Attributes
    ----------
    classes_ : ndarray
        The class labels (multi-label: the column names, default 0..L-1).
    multilabel_ : bool
        Whether ``y`` was a 2-D 0/1 matrix.
    class_weight_ : ndarray or None
        The weight of each class in the loss, in the order of ``classes_``.
    spec_ : BackboneSpec
        The resolved backbone: preprocessing, feature dimension, stages.
    stages_ : tuple of str
        The backbone's stages, input to output; an int ``freeze`` counts these.
    frozen_stages_ : tuple of str
        The stages frozen by ``freeze``.
    module_ : FineTuneNetwork
        The network: ``stages`` (the backbone's) and ``head``.
    history_ : skorch.History
        Losses and scores per epoch and batch; the first ``warmup_epochs``
        rows are the head-only epochs.

    See Also
    --------
    PretrainedFeaturizer : Frozen features for any scikit-learn estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTuneClassifier
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    >>> labels = np.array(["cat", "dog"] * 3)
    >>> clf = FineTuneClassifier(max_epochs=2, random_state=0)
    >>> clf.fit(images, labels).predict(images[:2]).shape
    (2,)
    >>> clf.stages_[:3]
    ('stem', 'block0', 'block1')
    """

    _finetune_constraints = {
        "backbone": [str, nn.Module],
        "weights": [str, os.PathLike, None],
        "preprocessing": [Preprocessing, None],
        "head": [StrOptions({"linear"}), tuple, list],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "augment": ["boolean"],
        "tta": [StrOptions({"flip", "ten_crop"}), Options(bool, {False})],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "engine": [StrOptions({"torch", "onnxruntime"})],
        "cache": [str, os.PathLike, None],
        "cache_frozen": ["boolean"],
        "random_state": ["random_state"],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="default",
        preprocessing=None,
        head="linear",
        dropout=0.2,
        freeze="backbone",
        warmup_epochs=0,
        backbone_lr_scale=0.1,
        augment=False,
        tta=False,
        class_weight=None,
        label_smoothing=0.0,
        precision="auto",
        engine="torch",
        cache="memory",
        cache_frozen=True,
        random_state=None,
        progress=True,
        classes=None,
        criterion=None,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=10,
        batch_size=16,
        train_split=None,
        callbacks=None,
        warm_start=False,
        verbose=0,
        device="auto",
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
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.precision = precision
        self.engine = engine
        self.cache = cache
        self.cache_frozen = cache_frozen
        self.random_state = random_state
        self.progress = progress
        kwargs.setdefault("iterator_train__shuffle", True)
        super().__init__(
            FineTuneNetwork,
            criterion=criterion,
            train_split=train_split,
            classes=classes,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            callbacks=callbacks,
            warm_start=warm_start,
            verbose=verbose,
            device=device,
            **kwargs,
        )

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
        return resolve_device(device) if device == "auto" else device

    @device.setter
    def device(self, value):
        self.__dict__["device"] = value

    def _get_param_names(self):
        # The module is built from the parameters below, not given by the user.
        return [name for name in super()._get_param_names() if name != "module"]

    def get_params(self, deep=True, **kwargs):
        params = super().get_params(deep=deep, **kwargs)
        params["device"] = self.__dict__["device"]
        return params

    @property
    def _default_callbacks(self):
        return [*super()._default_callbacks, ("progress", EpochProgress())]

    # --- building the network ---

    def _check_finetune_params(self):
        validate_parameter_constraints(
            self._finetune_constraints,
            {name: getattr(self, name) for name in self._finetune_constraints},
            caller_name=type(self).__name__,
        )
        if self.head != "linear" and not all(
            isinstance(w, Integral) and not isinstance(w, bool) and w > 0 for w in self.head
        ):
            raise ValueError(
                f"head must be 'linear' or a tuple of positive ints; got {self.head!r}"
            )
        check_engine(self.engine, self.precision)

    def _torch_device(self) -> torch.device:
        # device=None (skorch's "leave tensors where they are") computes on the CPU.
        return torch.device("cpu") if self.device is None else torch.device(self.device)

    def _compute_dtype(self) -> torch.dtype:
        if self.engine == "onnxruntime":
            return torch.float32
        return resolve_precision(self.precision, self._torch_device())

    def initialize_module(self):
        """Build the network: pretrained backbone, frozen prefix and a new head."""
        self._check_finetune_params()
        if not hasattr(self, "classes_inferred_"):
            if self.classes is None:
                raise ValueError(
                    "the head is sized from the classes: call fit, or pass classes= "
                    "to initialize before fit"
                )
            self.classes_inferred_ = np.asarray(self.classes)
            self.multilabel_ = False
            self.class_weight_ = None
            if isinstance(self.class_weight, dict):
                self.class_weight_ = compute_class_weight(
                    self.class_weight, classes=self.classes_inferred_, y=self.classes_inferred_
                )
        seed = self.random_state if isinstance(self.random_state, Integral) else None
        spec = resolve_spec(self.backbone, self.weights, self.preprocessing, random_state=seed)
        n_frozen = frozen_stage_count(self.freeze, spec.name, spec.stages)
        backbone = load_backbone(spec)
        head = make_head(self.head, spec.feature_dim, len(self.classes_), self.dropout)
        self.module_ = FineTuneNetwork(
            backbone.stages, head, n_frozen, precision=self._compute_dtype(), pool=backbone.pool
        ).to(memory_format=torch.channels_last)
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

    def initialize_criterion(self):
        """``criterion``, else cross-entropy on logits (BCE with logits for multi-label).

        The default cross-entropy gets ``class_weight_`` and ``label_smoothing``.
        """
        criterion = self.criterion
        kwargs = self.get_params_for("criterion")
        weighted = self.class_weight is not None or self.label_smoothing > 0
        if weighted and (criterion is not None or self.multilabel_):
            raise ValueError(
                "class_weight and label_smoothing apply to the default criterion "
                "(cross-entropy) with single-label y; "
                + (
                    "set them in your criterion instead"
                    if criterion is not None
                    else "y is a multi-label 0/1 matrix, use criterion__pos_weight for BCE instead"
                )
            )
        if criterion is None and self.multilabel_:
            criterion = nn.BCEWithLogitsLoss
        elif criterion is None:
            criterion = nn.CrossEntropyLoss
            kwargs.setdefault("label_smoothing", float(self.label_smoothing))
            if getattr(self, "class_weight_", None) is not None:
                weight = torch.as_tensor(self.class_weight_, dtype=torch.float32)
                kwargs.setdefault("weight", weight)
        self.criterion_ = self.initialized_instance(criterion, kwargs)
        return self

    def initialize_optimizer(self, triggered_directly=None):
        """Optimizer over trainable parameters; backbone stages at ``lr * backbone_lr_scale``.

        ``optimizer__param_groups`` patterns (skorch's) match first.
        """
        kwargs = self.get_params_for("optimizer")
        lr = kwargs.setdefault("lr", self.lr)
        scale = self.backbone_lr_scale
        patterns = [
            *kwargs.pop("param_groups", []),
            ("stages.*", {"lr": lr * scale, "lr_scale": scale}),
            ("pool.*", {"lr": lr * scale, "lr_scale": scale}),
        ]
        remaining = [(n, p) for n, p in self.module_.named_parameters() if p.requires_grad]
        groups = []
        for pattern, options in patterns:
            matched = [p for n, p in remaining if fnmatch(n, pattern)]
            remaining = [(n, p) for n, p in remaining if not fnmatch(n, pattern)]
            if matched:
                groups.append({"params": matched, **options})
        if remaining:
            groups.append({"params": [p for _, p in remaining]})
        self.optimizer_ = self.optimizer(groups, **kwargs)
        return self

    def _initialize_optimizer(self, reason=None):
        super()._initialize_optimizer(reason)
        # skorch's own "lr" setter gives every group the same rate; keep the backbone's scale.
        self._register_virtual_param("lr", _set_scaled_lr)
        return self

    # --- targets ---

    def _learn_targets(self, y):
        """Set ``classes_``, ``multilabel_`` and ``class_weight_`` from ``y`` (and ``classes``)."""
        classes, self.multilabel_, self.class_weight_ = learn_targets(
            y, self.classes, self.class_weight
        )
        self.classes_inferred_ = classes

    def _encode_targets(self, y) -> np.ndarray:
        """Class indices (int64), or the 0/1 matrix as float32 for multi-label."""
        return encode_targets(y, self.classes_, self.multilabel_)

    def check_data(self, X, y):
        # Targets are checked and encoded in partial_fit; skorch would re-infer classes here.
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
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels of any type, or a 0/1 matrix for multi-label.
        **fit_params : dict
            Passed to ``train_split``, e.g. ``groups`` for a split by group;
            the network takes no extra inputs.

        Returns
        -------
        self : FineTuneClassifier
        """
        with self._seeded():
            fresh = not self.warm_start or not self.initialized_ or self._network_params_changed()
            if fresh:
                self._learn_targets(y)
                self.initialize()
            self._warmup_pending = fresh
            try:
                self.partial_fit(X, y, **fit_params)
            finally:
                self._warmup_pending = False
        return self

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train the current network further (build it first if needed).

        Parameters
        ----------
        X : collection of images
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels must be among ``classes_`` of the first fit.
        classes : ignored
            Use the ``classes`` parameter.
        **fit_params : dict
            Passed to ``train_split``.

        Returns
        -------
        self : FineTuneClassifier
        """
        images = ImageCollection(X)
        if len(np.asarray(y)) != len(images):
            raise ValueError(f"X has {len(images)} images but y has {len(np.asarray(y))} labels")
        if not self.initialized_:
            self._learn_targets(y)
        return super().partial_fit(images, self._encode_targets(y), classes, **fit_params)

    def _warmup_epochs_pending(self) -> int:
        """Head-only epochs the current fit runs before ``max_epochs``."""
        probe = getattr(self, "_warmup_pending", False) and self.module_.n_frozen < len(
            self.stages_
        )
        return self.warmup_epochs if probe else 0

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop, after ``warmup_epochs`` of training the head alone."""
        warmup = self._warmup_epochs_pending()
        self._warmup_pending = False
        if warmup:
            n_frozen = self.module_.n_frozen
            # The optimizer keeps every parameter; frozen ones get no gradient, so no step.
            self.module_.set_frozen(len(self.stages_))
            try:
                super().fit_loop(X, y, epochs=warmup, **fit_params)
            finally:
                self.module_.set_frozen(n_frozen)
        return super().fit_loop(X, y, epochs=epochs, **fit_params)

    def infer(self, x, **fit_params):
        # fit_params belong to train_split (see fit): the network takes no extra inputs.
        if torch.is_grad_enabled():
            return super().infer(x)
        with autocast(self._torch_device(), self._compute_dtype()):
            return super().infer(x).float()

    def get_split_datasets(self, X, y=None, **fit_params):
        """Training and validation datasets: frozen-stage outputs when cacheable, else images."""
        images = X if isinstance(X, ImageCollection) else ImageCollection(X)
        dataset = self._dataset(images, y, training=True)
        train_split = self.train_split
        stratified = getattr(train_split, "stratified", False)
        if self.multilabel_ and stratified:
            # scikit-learn cannot stratify multi-label targets.
            train_split = type(train_split)(train_split.cv, stratified=False)
        try:
            dataset_train, dataset_valid = (
                train_split(dataset, y, **fit_params) if train_split else (dataset, None)
            )
        except ValueError as exc:
            if not stratified or self.multilabel_:
                raise
            counts = np.bincount(np.asarray(y), minlength=len(self.classes_))
            smallest = self.classes_[counts.argmin()]
            raise ValueError(
                f"train_split={train_split!r} cannot make a stratified validation split of "
                f"these {len(y)} samples: class {smallest!r} has only {counts.min()} "
                f"({exc}). Use train_split=None (the default: train on everything and "
                "validate by cross-validation around the estimator), fewer folds, or "
                "ValidSplit(..., stratified=False)"
            ) from exc
        if self.augment:
            dataset_train = with_transform(
                dataset_train, train_augmentation(self.spec_.preprocessing)
            )
        return dataset_train, dataset_valid

    def _dataset(self, images: ImageCollection, y, training: bool, view=None) -> Dataset:
        """Frozen-stage outputs of ``images`` when they can be reused, else the images."""
        view = view or EvalView(self.spec_.preprocessing)
        recomputed = training and self.augment
        if self.cache_frozen and not recomputed and self.module_.n_frozen > 0:
            activations = self._frozen_outputs(images, view)
            if activations is not None:
                return ActivationDataset(activations, y)
        return ImageDataset(images, y, view)

    # --- the frozen stages' outputs and the feature store ---

    def _frozen_store(self):
        if self.cache is None:
            return None
        # Unseeded random weights differ at every build, so their outputs must not be reused.
        if not self.spec_.deterministic:
            return None
        return resolve_store(self.cache)

    def _frozen_model_key(self, view: EvalView) -> str:
        """Identity of the function from an image to its frozen-stage output.

        With the whole backbone frozen and the plain view, it is the
        featurizer's key for the same backbone and precision, so both share entries.
        """
        key = f"{self.spec_.key}|{precision_name(self._compute_dtype())}"
        if self.module_.n_frozen < len(self.stages_):
            key += f"|frozen-stages={self.module_.n_frozen}"
        if view.name != "center":
            key += f"|view={view.name}"
        return key

    def _frozen_outputs(self, images: ImageCollection, view: EvalView) -> torch.Tensor | None:
        """The frozen stages' output for every image (None if too large to hold)."""
        store = self._frozen_store()
        return frozen_outputs(
            self.module_,
            images,
            view,
            store=store,
            model_key=self._frozen_model_key(view) if store is not None else "",
            batch_size=self.batch_size,
            device=self._torch_device(),
            dtype=self._compute_dtype(),
            num_workers=self.get_params_for("iterator_valid").get("num_workers", 0),
            progress=self.progress,
            engine=self._frozen_engine(store),
        )

    def _frozen_engine(self, store):
        """The frozen stages on ONNX Runtime, exported once per process; None for torch."""
        if self.engine == "torch":
            return None
        network = self.module_
        key = self._frozen_model_key(EvalView(self.spec_.preprocessing))
        if not self.spec_.deterministic:
            # Unseeded random weights differ at every build: the export is of these tensors.
            key += f"|{module_fingerprint(network.frozen_stages)}"
        return onnx_engine(
            key,
            lambda: network.forward_frozen,
            self.spec_.preprocessing.input_size,
            self._torch_device(),
            store.directory if isinstance(store, DiskStore) else None,
        )

    def get_dataset(self, X, y=None):
        """Images as a dataset for prediction (a torch Dataset is used as it is)."""
        if is_dataset(X):
            return X
        return self._dataset(ImageCollection(X), y, training=False)

    # --- prediction ---

    def _get_predict_nonlinearity(self):
        if self.predict_nonlinearity == "auto":
            self.check_is_fitted()
            return torch.sigmoid if self.multilabel_ else partial(torch.softmax, dim=-1)
        return super()._get_predict_nonlinearity()

    def predict_proba(self, X):
        """Class probabilities (softmax), or per-label probabilities (sigmoid) for multi-label.

        With ``tta``, the mean of the probabilities of each view.

        Parameters
        ----------
        X : collection of images

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        self.check_is_fitted()
        if is_dataset(X):
            return super().predict_proba(X)
        images = ImageCollection(X)
        views = eval_views(self.spec_.preprocessing, self.tta)
        total = 0
        for view in views:
            total = total + self._predict_view(images, view)
        return total / len(views) if len(views) > 1 else total

    def _predict_view(self, images: ImageCollection, view: EvalView) -> np.ndarray:
        """Probabilities for one view: the trainable part on cached outputs, else the network."""
        dataset = self._dataset(images, None, training=False, view=view)
        if isinstance(dataset, ActivationDataset):
            return super().predict_proba(dataset)
        nonlinearity = self._get_predict_nonlinearity()
        network = self.module_.eval()
        proba, failures = None, []
        batches = run_batches(
            lambda batch: nonlinearity(network(images=batch)),
            images,
            transform=view,
            batch_size=self.batch_size,
            device=self._torch_device(),
            dtype=self._compute_dtype(),
            num_workers=self.get_params_for("iterator_valid").get("num_workers", 0),
            progress="predicting" if self.progress else None,
        )
        for indices, rows, bad in batches:
            failures.extend(bad)
            if rows is None:
                continue
            if proba is None:
                proba = np.empty((len(images), rows.shape[1]), dtype=np.float32)
            proba[indices] = rows
        if failures:
            raise InvalidImageError(failures)
        return proba

    def predict(self, X):
        """Predicted labels, or a 0/1 matrix for multi-label.

        Parameters
        ----------
        X : collection of images

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_labels)
            Labels from ``classes_``. For a torch ``Dataset`` (what skorch's
            scoring callbacks pass, with targets encoded as class indices),
            class indices instead.
        """
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba > 0.5).astype(np.int64)
        indices = proba.argmax(axis=1)
        return indices if is_dataset(X) else self.classes_[indices]

    # --- persistence ---

    def __setstate__(self, state):
        # skorch maps CUDA tensors to the CPU when the saved device is missing here;
        # it needs a concrete device for that, so "auto" is resolved on this machine.
        requested = state["device"]
        if requested == "auto":
            state["device"] = resolve_device("auto")
        super().__setstate__(state)
        if requested == "auto":
            self.__dict__["device"] = "auto"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.classifier_tags.multi_label = True
        return tags
