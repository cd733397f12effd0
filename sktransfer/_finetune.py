"""FineTuneClassifier: a pretrained backbone and a new head, trained with skorch.

Freezing counts the backbone's stages (see :class:`~sktransfer.BackboneSpec`).
Frozen stages get ``requires_grad=False`` and stay in eval mode, so they
compute a fixed function: when the inputs are fixed too (no augmentation),
``fit`` runs them once over the training images and trains the rest on the
stored outputs every epoch.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import partial
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from skorch import NeuralNetClassifier
from skorch.dataset import ValidSplit
from skorch.utils import is_dataset, to_device
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from ._backbones import Preprocessing, load_backbone, pool_features, resolve_spec
from ._device import resolve_device
from ._images import ImageCollection, InvalidImageError
from ._loading import iterate_batches

#: Largest cache of frozen-stage outputs ``fit`` keeps in memory; above it the
#: frozen stages run on every batch instead (with a warning).
FROZEN_CACHE_LIMIT_BYTES = 2 * 1024**3

#: skorch's classifier default: a stratified 80/20 split for validation scores.
DEFAULT_TRAIN_SPLIT = ValidSplit(5, stratified=True)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # channels_last makes convolutions markedly faster on CPU and on tensor cores.
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


class FineTuneNetwork(nn.Module):
    """Backbone stages, global average pooling and a new head; the first stages frozen.

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
    """

    def __init__(self, stages: nn.Sequential, head: nn.Module, n_frozen: int):
        super().__init__()
        self.stages = stages
        self.head = head
        self.n_frozen = n_frozen
        for index, stage in enumerate(stages):
            stage.requires_grad_(index >= n_frozen)
        self.train()

    @property
    def frozen_stages(self) -> nn.Sequential:
        return self.stages[: self.n_frozen]

    @property
    def trainable_stages(self) -> nn.Sequential:
        return self.stages[self.n_frozen :]

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen_stages.eval()
        return self

    def forward_frozen(self, images: torch.Tensor) -> torch.Tensor:
        """Output of the frozen stages; pooled when the whole backbone is frozen."""
        if self.n_frozen == 0:
            return images
        with torch.no_grad():
            x = self.frozen_stages(_channels_last(images))
        # Pooling has no parameters, so a fully frozen backbone can hand over (N, D) features.
        return pool_features(x) if self.n_frozen == len(self.stages) else x

    def forward_trainable(self, activations: torch.Tensor) -> torch.Tensor:
        """Logits from the output of :meth:`forward_frozen`."""
        return self.head(pool_features(self.trainable_stages(_channels_last(activations))))

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


@dataclass(frozen=True)
class TrainAugmentation:
    """Random resized crop and horizontal flip, sized and normalised like ``preprocessing``.

    Parameters
    ----------
    preprocessing : Preprocessing
        Gives the output size, interpolation, mean and std.
    scale : tuple of 2 floats, default=(0.08, 1.0)
        Range of the crop's area as a fraction of the image (torchvision's default).
    """

    preprocessing: Preprocessing
    scale: tuple[float, float] = (0.08, 1.0)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        import torchvision.transforms as T
        import torchvision.transforms.v2.functional as F

        p = self.preprocessing
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        top, left, height, width = T.RandomResizedCrop.get_params(
            image, scale=list(self.scale), ratio=[3 / 4, 4 / 3]
        )
        image = F.resized_crop(
            image,
            top,
            left,
            height,
            width,
            [p.input_size, p.input_size],
            interpolation=F.InterpolationMode(p.interpolation),
            antialias=True,
        )
        if torch.rand(()) < 0.5:
            image = F.horizontal_flip(image)
        return F.normalize(image.float().div_(255), p.mean, p.std)


class ImageDataset(Dataset):
    """``({"images": tensor}, target)`` for each image, decoded and transformed on access."""

    def __init__(self, images: ImageCollection, y, transform):
        self.images = images
        self.y = y
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        target = 0 if self.y is None else self.y[index]
        return {"images": self.transform(self.images.load(index))}, target

    def with_transform(self, transform) -> ImageDataset:
        return ImageDataset(self.images, self.y, transform)


class ActivationDataset(Dataset):
    """``({"activations": tensor}, target)`` from precomputed frozen-stage outputs."""

    def __init__(self, activations: torch.Tensor, y):
        self.activations = activations
        self.y = y

    def __len__(self) -> int:
        return len(self.activations)

    def __getitem__(self, index: int):
        return {"activations": self.activations[index]}, self.y[index]


def _with_transform(dataset, transform):
    """``dataset`` (an ImageDataset or a Subset of one) with another image transform."""
    if isinstance(dataset, Subset):
        return Subset(_with_transform(dataset.dataset, transform), dataset.indices)
    return dataset.with_transform(transform)


def _is_missing(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or type(value).__name__ in ("NAType", "NaTType")
    )


def _check_targets(y) -> np.ndarray:
    """``y`` as an array, 1-D labels or a 2-D 0/1 matrix; clear errors otherwise."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or len(y) == 0:
        raise ValueError(
            "y must be a non-empty 1-D array of labels or a 2-D 0/1 matrix (multi-label); "
            f"got shape {y.shape}"
        )
    if y.dtype.kind == "f":
        missing = np.isnan(y)
    elif y.dtype.kind == "O":
        missing = np.array([_is_missing(v) for v in y.ravel()]).reshape(y.shape)
    else:
        missing = np.zeros(y.shape, dtype=bool)
    if missing.any():
        rows = np.flatnonzero(missing.reshape(len(y), -1).any(axis=1))
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"y has missing labels (NaN or None) for {len(rows)} sample(s): {shown}; "
            "drop those samples or label them"
        )
    if y.ndim == 2 and not np.isin(y, (0, 1)).all():
        raise ValueError(
            "a 2-D y means multi-label and must hold only 0 and 1 (one column per label); "
            f"got values {np.unique(y)[:10].tolist()}"
        )
    return y


def _set_scaled_lr(net, param, value):
    """Virtual ``lr`` setter that keeps each parameter group's ``lr_scale``."""
    net.lr = value
    for group in net.optimizer_.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)


class FineTuneClassifier(NeuralNetClassifier):
    """Fine-tune a pretrained image backbone with a new classification head.

    A :class:`skorch.NeuralNetClassifier` whose module is built in ``fit``:
    the backbone (from the registry or a module), global average pooling and
    a head sized from the classes in ``y``. ``freeze`` chooses how many
    leading stages of the backbone stay fixed. When the frozen stages see
    fixed inputs (``augment=False``), ``fit`` runs them once over the images
    and trains the rest on their outputs every epoch, so a
    ``freeze="backbone"`` epoch costs about as much as training a linear
    model on features.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        A name from :func:`sktransfer.list_backbones`, or a module mapping
        (N, 3, S, S) to (N, D) or (N, C, h, w); an ``nn.Sequential``'s
        children are its stages. The module is copied, never changed.
    weights : "default", None or path, default="default"
        ``"default"``: the registry's pretrained weights; ``None``: random
        initialisation (a baseline); a path: a state dict file.
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
    backbone_lr_scale : float, default=0.1
        Learning rate of the trainable backbone stages relative to ``lr``,
        the head's; pretrained weights need smaller steps than a new head.
    augment : bool, default=False
        Train on random resized crops and horizontal flips, sized from the
        preprocessing. The frozen stages then run on every batch.
    cache_frozen : bool, default=True
        Run the frozen stages once per ``fit`` (when ``augment=False``) and
        keep their outputs in memory, up to ``FROZEN_CACHE_LIMIT_BYTES``.
        ``False`` runs them on every batch.
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
        Number of epochs.
    batch_size : int, default=16
        Images per step; moderate batches are fastest on CPU.
    train_split : callable or None, default=ValidSplit(5, stratified=True)
        Internal validation split (skorch's); ``None`` trains on all data.
        Multi-label ``y`` is split without stratification.
    callbacks : list or None, default=None
        skorch callbacks: ``EarlyStopping``, ``Checkpoint``,
        ``LRScheduler``, ``Freezer``, ...
    warm_start : bool, default=False
        Continue training the current network on the next ``fit``.
    verbose : int, default=1
        Print a table of losses per epoch.
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
    spec_ : BackboneSpec
        The resolved backbone: preprocessing, feature dimension, stages.
    stages_ : tuple of str
        The backbone's stages, input to output; an int ``freeze`` counts these.
    frozen_stages_ : tuple of str
        The stages frozen by ``freeze``.
    module_ : FineTuneNetwork
        The network: ``stages`` (the backbone's) and ``head``.
    history_ : skorch.History
        Losses and scores per epoch and batch.

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
    >>> clf = FineTuneClassifier(max_epochs=2, train_split=None, verbose=0)
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
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "augment": ["boolean"],
        "cache_frozen": ["boolean"],
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
        backbone_lr_scale=0.1,
        augment=False,
        cache_frozen=True,
        classes=None,
        criterion=None,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=10,
        batch_size=16,
        train_split=DEFAULT_TRAIN_SPLIT,
        callbacks=None,
        warm_start=False,
        verbose=1,
        device="auto",
        **kwargs,
    ):
        # Set before skorch's __init__, which would take a module backbone for a component.
        self.backbone = backbone
        self.weights = weights
        self.preprocessing = preprocessing
        self.head = head
        self.dropout = dropout
        self.freeze = freeze
        self.backbone_lr_scale = backbone_lr_scale
        self.augment = augment
        self.cache_frozen = cache_frozen
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
        spec = resolve_spec(self.backbone, self.weights, self.preprocessing)
        n_frozen = frozen_stage_count(self.freeze, spec.name, spec.stages)
        backbone = load_backbone(spec)
        head = make_head(self.head, spec.feature_dim, len(self.classes_), self.dropout)
        self.module_ = FineTuneNetwork(backbone.stages, head, n_frozen).to(
            memory_format=torch.channels_last
        )
        self.spec_ = spec
        self.stages_ = spec.stages
        self.frozen_stages_ = spec.stages[:n_frozen]
        return self

    def initialize_criterion(self):
        """``criterion``, else cross-entropy on logits (BCE with logits for multi-label)."""
        criterion = self.criterion
        if criterion is None:
            criterion = nn.BCEWithLogitsLoss if self.multilabel_ else nn.CrossEntropyLoss
        self.criterion_ = self.initialized_instance(criterion, self.get_params_for("criterion"))
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
        """Set ``classes_`` and ``multilabel_`` from ``y`` (and ``classes``)."""
        y = _check_targets(y)
        self.multilabel_ = y.ndim == 2
        if self.multilabel_:
            classes = np.arange(y.shape[1]) if self.classes is None else np.asarray(self.classes)
            if len(classes) != y.shape[1]:
                raise ValueError(
                    f"classes has {len(classes)} names but the multi-label y has "
                    f"{y.shape[1]} columns"
                )
        else:
            classes = np.unique(y) if self.classes is None else np.asarray(self.classes)
            if len(classes) < 2:
                raise ValueError(
                    f"y has a single class ({classes.tolist()[0]!r}); a classifier needs at least "
                    "two classes"
                )
        self.classes_inferred_ = classes

    def _encode_targets(self, y) -> np.ndarray:
        """Class indices (int64), or the 0/1 matrix as float32 for multi-label."""
        y = _check_targets(y)
        if self.multilabel_:
            if y.ndim != 2 or y.shape[1] != len(self.classes_):
                raise ValueError(
                    f"expected a 0/1 matrix with {len(self.classes_)} columns, as in the "
                    f"first fit; got y of shape {y.shape}"
                )
            return y.astype(np.float32)
        if y.ndim != 1:
            raise ValueError(f"expected 1-D labels, as in the first fit; got shape {y.shape}")
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        encoded = np.array([index.get(label, -1) for label in y.tolist()], dtype=np.int64)
        unknown = np.flatnonzero(encoded < 0)
        if len(unknown):
            raise ValueError(
                f"y has labels not in classes_ {self.classes_.tolist()}: "
                f"{np.unique(y[unknown]).tolist()[:10]} (samples {unknown[:10].tolist()})"
            )
        return encoded

    def check_data(self, X, y):
        # Targets are checked and encoded in partial_fit; skorch would re-infer classes here.
        pass

    # --- training ---

    def fit(self, X, y, **fit_params):
        """Build the network and train it.

        Parameters
        ----------
        X : collection of images
            Paths, PIL images, arrays (N, H, W[, C]) or tensors (N, C, H, W).
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels of any type, or a 0/1 matrix for multi-label.
        **fit_params : dict
            Passed to ``train_split``.

        Returns
        -------
        self : FineTuneClassifier
        """
        if not self.warm_start or not self.initialized_:
            self._learn_targets(y)
        return super().fit(X, y, **fit_params)

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

    def get_split_datasets(self, X, y=None, **fit_params):
        """Training and validation datasets: frozen-stage outputs when cacheable, else images."""
        images = X if isinstance(X, ImageCollection) else ImageCollection(X)
        dataset = self._training_dataset(images, y)
        train_split = self.train_split
        if self.multilabel_ and getattr(train_split, "stratified", False):
            # scikit-learn cannot stratify multi-label targets.
            train_split = copy.copy(train_split)
            train_split.stratified = False
        if train_split:
            dataset_train, dataset_valid = train_split(dataset, y, **fit_params)
        else:
            dataset_train, dataset_valid = dataset, None
        if self.augment:
            augmentation = TrainAugmentation(self.spec_.preprocessing)
            dataset_train = _with_transform(dataset_train, augmentation)
        return dataset_train, dataset_valid

    def _training_dataset(self, images: ImageCollection, y) -> Dataset:
        if self.cache_frozen and not self.augment and self.module_.n_frozen > 0:
            activations = self._frozen_outputs(images)
            if activations is not None:
                return ActivationDataset(activations, y)
        return ImageDataset(images, y, self.spec_.preprocessing)

    def _frozen_outputs(self, images: ImageCollection) -> torch.Tensor | None:
        """Run the frozen stages once over all images; None if the result would be too large."""
        network = self.module_
        device = self.device
        batches = iterate_batches(
            images,
            self.spec_.preprocessing,
            batch_size=self.batch_size,
            num_workers=self.get_params_for("iterator_valid").get("num_workers", 0),
            pin_memory=device is not None and torch.device(device).type == "cuda",
        )
        outputs, failures = None, []
        # The pass is deterministic; restoring the RNG keeps training's random draws
        # (shuffling, dropout) the same as without the cache.
        with torch.random.fork_rng(devices=[]):
            for indices, batch, bad in tqdm(
                batches,
                total=-(-len(images) // self.batch_size),
                disable=not self.verbose or None,
                desc="frozen stages",
                unit="batch",
            ):
                failures.extend(bad)
                if batch is None:
                    continue
                result = network.forward_frozen(to_device(batch, device)).float().cpu()
                if outputs is None:
                    size = len(images) * result[0].numel() * result.element_size()
                    if size > FROZEN_CACHE_LIMIT_BYTES:
                        warnings.warn(
                            f"the frozen stages' outputs would take {size / 2**30:.1f} GiB, more "
                            f"than FROZEN_CACHE_LIMIT_BYTES; they run on every batch instead "
                            "(freeze more stages, or set cache_frozen=False)",
                            UserWarning,
                            stacklevel=2,
                        )
                        return None
                    outputs = torch.empty((len(images), *result.shape[1:]), dtype=result.dtype)
                outputs[torch.from_numpy(indices)] = result
        if failures:
            raise InvalidImageError(failures)
        return outputs

    def get_dataset(self, X, y=None):
        """Images as a dataset for prediction (a torch Dataset is used as it is)."""
        if is_dataset(X):
            return X
        return ImageDataset(ImageCollection(X), y, self.spec_.preprocessing)

    # --- prediction ---

    def _get_predict_nonlinearity(self):
        if self.predict_nonlinearity == "auto":
            self.check_is_fitted()
            return torch.sigmoid if self.multilabel_ else partial(torch.softmax, dim=-1)
        return super()._get_predict_nonlinearity()

    def predict_proba(self, X):
        """Class probabilities (softmax), or per-label probabilities (sigmoid) for multi-label.

        Parameters
        ----------
        X : collection of images

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        self.check_is_fitted()
        return super().predict_proba(X)

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
