"""FineTuneClassifier: a pretrained backbone and a new classification head, trained with skorch."""

from __future__ import annotations

from functools import partial
from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from skorch import NeuralNetClassifier
from skorch.utils import is_dataset
from torch import nn

from ._base import FineTuneBase
from ._docs import compose_doc
from ._params import check_params
from ._targets import encode_targets, learn_targets


@compose_doc(
    tta="""\
tta : {False, "flip", "ten_crop"}, default=False
    Test-time augmentation: ``predict_proba`` averages the probabilities
    of several views of each image. ``"flip"``: the centre crop and its
    mirror image (2 passes); ``"ten_crop"``: the centre and four corner
    crops of the resized image and their mirror images (10 passes, as
    torchvision's ``TenCrop``). Each view's frozen outputs are cached
    like the plain view's.""",
    class_weight="""\
class_weight : "balanced", dict or None, default=None
    Weights of the classes in the loss, as in scikit-learn:
    ``"balanced"`` weights each class by ``n_samples / (n_classes *
    count)`` of the ``y`` given to ``fit``; a dict maps labels to weights
    (others get 1). Single-label ``y`` and the default criterion only.""",
    label_smoothing="""\
label_smoothing : float, default=0.0
    Mix the one-hot targets with the uniform distribution (torch's
    ``CrossEntropyLoss(label_smoothing=)``). Single-label ``y`` and the
    default criterion only.""",
    classes="""\
classes : array-like, default=None
    The class labels, in the order of ``predict_proba``'s columns (for
    multi-label ``y``: one name per column). Default: the sorted labels
    of ``y``. Given, it lets ``initialize()`` build a single-label network
    before ``fit``, for instance to ``load_params`` from a checkpoint.""",
    criterion="""\
criterion : torch loss class or None, default=None
    A loss on logits; ``None`` is ``CrossEntropyLoss``, or
    ``BCEWithLogitsLoss`` for multi-label ``y``.""",
    train_split="""\
train_split : callable or None, default=None
    None trains on everything ``fit`` gets: validation is the job of
    cross-validation around the estimator, as in scikit-learn. Pass a
    skorch split such as ``ValidSplit(5, stratified=True)`` for
    validation scores per epoch (and ``EarlyStopping``); a stratified
    split needs enough samples of every class, and says so. Multi-label
    ``y`` is split without stratification.""",
)
class FineTuneClassifier(FineTuneBase, NeuralNetClassifier):
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
    {parameters}

    Attributes
    ----------
    classes_ : ndarray
        The class labels (multi-label: the column names, default 0..L-1).
    multilabel_ : bool
        Whether ``y`` was a 2-D 0/1 matrix.
    class_weight_ : ndarray or None
        The weight of each class in the loss, in the order of ``classes_``.
    {attributes}

    See Also
    --------
    FineTuneRegressor : The same fine-tuning for numeric targets.
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

    _parameter_constraints = {
        **FineTuneBase._parameter_constraints,
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "classes": ["array-like", None],
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
        decode="fast",
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
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        super().__init__(
            backbone,
            weights=weights,
            preprocessing=preprocessing,
            head=head,
            dropout=dropout,
            freeze=freeze,
            warmup_epochs=warmup_epochs,
            backbone_lr_scale=backbone_lr_scale,
            augment=augment,
            tta=tta,
            decode=decode,
            precision=precision,
            engine=engine,
            cache=cache,
            cache_frozen=cache_frozen,
            random_state=random_state,
            progress=progress,
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

    # --- targets and loss ---

    def _n_outputs(self) -> int:
        """One logit per class; ``classes`` sizes a network built before ``fit``."""
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
        return len(self.classes_)

    def _learn_targets(self, y, classes=None):
        """Set ``classes_``, ``multilabel_`` and ``class_weight_`` from ``y`` (and ``classes``)."""
        classes, self.multilabel_, self.class_weight_ = learn_targets(
            y, self.classes if classes is None else classes, self.class_weight
        )
        self.classes_inferred_ = classes

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train the current network further (build it first if needed).

        Parameters
        ----------
        X : collection of images
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels among ``classes_``.
        classes : array-like, default=None
            As scikit-learn's ``partial_fit``: on the first call, every label
            any later call may give (default: the ``classes`` parameter, else
            the labels of ``y``); on later calls, None or the same labels.
        **fit_params : dict
            Passed to ``train_split``.

        Returns
        -------
        self : FineTuneClassifier
        """
        check_params(self)
        if classes is not None and self.initialized_:
            if not np.array_equal(np.asarray(classes), self.classes_):
                raise ValueError(
                    f"classes={np.asarray(classes).tolist()} differs from classes_ "
                    f"{self.classes_.tolist()}, set by the first fit or partial_fit; "
                    "fit again to start afresh with other classes"
                )
        elif classes is not None:
            self._learn_targets(y, classes)
            self.initialize()
        return super().partial_fit(X, y, **fit_params)

    def _encode_targets(self, y) -> np.ndarray:
        """Class indices (int64), or the 0/1 matrix as float32 for multi-label."""
        return encode_targets(y, self.classes_, self.multilabel_)

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

    def _split(self, dataset, y, **fit_params):
        """``train_split``, unstratified for multi-label ``y``; says why it cannot stratify."""
        train_split = self.train_split
        stratified = getattr(train_split, "stratified", False)
        if self.multilabel_ and stratified:
            # scikit-learn cannot stratify multi-label targets.
            train_split = type(train_split)(train_split.cv, stratified=False)
        try:
            return train_split(dataset, y, **fit_params) if train_split else (dataset, None)
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
        return self._predict_views(X, self._get_predict_nonlinearity())

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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
