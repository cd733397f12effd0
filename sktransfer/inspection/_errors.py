"""ImageErrorsDisplay: the images a model gets most wrong, with what it predicted."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import is_classifier, is_regressor
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from ._grid import decode_images, image_axes

# Probabilities are clipped here before the log, as sklearn.metrics.log_loss clips them.
_EPS = np.finfo(np.float64).eps


class ImageErrorsDisplay:
    """The images with the highest loss, each titled with its true and predicted target.

    The loss of a classifier with ``predict_proba`` is the log loss of the true
    class, :math:`-\\log p(y_i)`: confident mistakes first, then hesitant
    ones. Without probabilities it is 1 for a mistake and 0 otherwise. A
    regressor's is the absolute error (averaged over outputs). Build it with
    :meth:`from_estimator` or :meth:`from_predictions`; both draw it.

    Parameters
    ----------
    images : list of ndarray
        The images shown, decoded: uint8 RGB ``(H, W, 3)``, upright.
    indices : ndarray of int
        Their positions in ``X``, highest loss first.
    losses : ndarray of float
        Their losses.
    y_true, y_pred : ndarray
        Their true and predicted targets.
    proba_true, proba_pred : ndarray of float, default=None
        The probability the classifier gave to the true and to the predicted
        class, when it gives probabilities.

    Attributes
    ----------
    figure_ : matplotlib Figure
    axes_ : ndarray of matplotlib Axes
        One per image (a grid; spare ones hidden).

    See Also
    --------
    sklearn.metrics.ConfusionMatrixDisplay : Which classes are confused.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import PretrainedFeaturizer
    >>> from sktransfer.datasets import load_textures
    >>> from sktransfer.inspection import ImageErrorsDisplay
    >>> X, y = load_textures(patch_size=64, stride=256)
    >>> pipe = make_pipeline(PretrainedFeaturizer(progress=False), LogisticRegression())
    >>> display = ImageErrorsDisplay.from_estimator(pipe.fit(X, y), X, y, n=4)
    >>> len(display.indices), display.axes_.size
    (4, 4)
    """

    def __init__(self, images, indices, losses, y_true, y_pred, proba_true=None, proba_pred=None):
        self.images = images
        self.indices = indices
        self.losses = losses
        self.y_true = y_true
        self.y_pred = y_pred
        self.proba_true = proba_true
        self.proba_pred = proba_pred

    @classmethod
    def from_estimator(cls, estimator, X, y, *, n=9, ax=None, n_cols=None):
        """Predict ``X`` with a fitted estimator and show the ``n`` images it gets most wrong.

        Parameters
        ----------
        estimator : fitted classifier or regressor
            Any scikit-learn estimator whose input is images: a pipeline that
            starts with :class:`~sktransfer.PretrainedFeaturizer`, a
            :class:`~sktransfer.FineTuneClassifier` or
            :class:`~sktransfer.FineTuneRegressor`. A classifier's prediction
            is the class of highest ``predict_proba`` when it has one.
        X : collection of images
            Paths, PIL images, arrays or tensors, as the estimator takes them;
            shown as given, upright.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The true targets; a regressor may have several outputs.
        n : int, default=9
            How many images to show (fewer when ``X`` has fewer).
        ax : matplotlib Axes or array-like of Axes, default=None
            Where to draw; see :meth:`plot`.
        n_cols : int, default=None
            Columns of a new grid; default up to 5.

        Returns
        -------
        display : ImageErrorsDisplay
        """
        check_is_fitted(estimator)
        if is_classifier(estimator):
            if hasattr(estimator, "predict_proba"):
                classes = np.asarray(estimator.classes_)
                proba = np.asarray(estimator.predict_proba(X))
                return cls.from_predictions(
                    y,
                    classes[proba.argmax(axis=1)],
                    X=X,
                    y_proba=proba,
                    classes=classes,
                    n=n,
                    ax=ax,
                    n_cols=n_cols,
                )
            task = "classification"
        elif is_regressor(estimator):
            task = "regression"
        else:
            raise TypeError(
                f"{type(estimator).__name__} is neither a classifier nor a regressor "
                "(sklearn.base.is_classifier / is_regressor)"
            )
        return cls._from_predictions(
            y, estimator.predict(X), X, None, None, n, ax, n_cols, task=task
        )

    @classmethod
    def from_predictions(
        cls, y_true, y_pred, *, X, y_proba=None, classes=None, n=9, ax=None, n_cols=None
    ):
        """Show the ``n`` images with the highest loss, from predictions made elsewhere.

        For instance out-of-fold predictions from
        :func:`~sklearn.model_selection.cross_val_predict`, so that no image
        is judged by a model that trained on it.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The true targets. Continuous values (``type_of_target``) are
            regression targets, anything else class labels: pass integer
            regression targets as floats.
        y_pred : array-like of the same shape
            The predicted targets.
        X : collection of images
            The images, in the same order.
        y_proba : array-like of shape (n_samples, n_classes), default=None
            Predicted class probabilities, columns in the order of ``classes``;
            the loss is then the log loss of the true class.
        classes : array-like, default=None
            The labels of ``y_proba``'s columns (a classifier's ``classes_``);
            default: the sorted labels of ``y_true``, which must then number
            as many as the columns.
        n : int, default=9
            How many images to show (fewer when ``X`` has fewer).
        ax : matplotlib Axes or array-like of Axes, default=None
            Where to draw; see :meth:`plot`.
        n_cols : int, default=None
            Columns of a new grid; default up to 5.

        Returns
        -------
        display : ImageErrorsDisplay
        """
        return cls._from_predictions(y_true, y_pred, X, y_proba, classes, n, ax, n_cols)

    @classmethod
    def _from_predictions(cls, y_true, y_pred, X, y_proba, classes, n, ax, n_cols, task=None):
        if not isinstance(n, Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        if task is None:
            continuous = type_of_target(y_true) in ("continuous", "continuous-multioutput")
            task = "regression" if continuous and y_proba is None else "classification"
        if task == "classification" and y_true.ndim != 1:
            raise ValueError(
                f"y_true has shape {y_true.shape}: multi-label targets are not supported; "
                "show one label's errors at a time"
            )
        if y_true.shape != y_pred.shape:
            raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
        proba_true = proba_pred = None
        if task == "regression":
            errors = np.abs(y_true.astype(float) - y_pred.astype(float))
            losses = errors.reshape(len(errors), -1).mean(axis=1)
        elif y_proba is None:
            losses = (y_true != y_pred).astype(float)
        else:
            proba_true, proba_pred = _class_probabilities(y_true, y_pred, y_proba, classes)
            losses = -np.log(np.clip(proba_true, _EPS, 1))
        indices = np.argsort(-losses, kind="stable")[:n]
        display = cls(
            decode_images(X, indices),
            indices,
            losses[indices],
            y_true[indices],
            y_pred[indices],
            None if proba_true is None else proba_true[indices],
            None if proba_pred is None else proba_pred[indices],
        )
        return display.plot(ax=ax, n_cols=n_cols)

    def plot(self, *, ax=None, n_cols=None, fontsize=9):
        """Draw each image with its true and predicted target as its title.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            None: a new figure. One Axes: its place is split into a grid.
            Several: one per image, in order.
        n_cols : int, default=None
            Columns of a new grid; default up to 5.
        fontsize : float, default=9
            Of the titles.

        Returns
        -------
        display : ImageErrorsDisplay
        """
        self.figure_, self.axes_ = image_axes(len(self.images), ax, n_cols)
        for i, (axis, image) in enumerate(zip(self.axes_.flat, self.images)):
            axis.imshow(image)
            axis.set_title(self._title(i), fontsize=fontsize)
        return self

    def _title(self, i: int) -> str:
        true, predicted = _label(self.y_true[i]), _label(self.y_pred[i])
        if self.proba_true is None:
            return f"true: {true}\npredicted: {predicted}"
        return (
            f"true: {true} (p={self.proba_true[i]:.2f})\n"
            f"predicted: {predicted} (p={self.proba_pred[i]:.2f})"
        )


def _class_probabilities(y_true, y_pred, y_proba, classes):
    """The probability each sample's true class and predicted class got."""
    y_proba = np.asarray(y_proba, dtype=float)
    classes = np.unique(y_true) if classes is None else np.asarray(classes)
    if y_proba.shape != (len(y_true), len(classes)):
        raise ValueError(
            f"y_proba has shape {y_proba.shape}, expected ({len(y_true)}, {len(classes)}): one "
            "column per class, in the order of classes (pass classes=estimator.classes_)"
        )
    columns = {label: j for j, label in enumerate(classes.tolist())}
    rows = np.arange(len(y_true))
    picked = []
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        unknown = sorted({label for label in labels.tolist() if label not in columns}, key=str)
        if unknown:
            raise ValueError(f"{name} holds labels not in classes {classes.tolist()}: {unknown}")
        picked.append(y_proba[rows, [columns[label] for label in labels.tolist()]])
    return picked


def _label(value) -> str:
    """A target as a title shows it: a label as is, numbers to 3 significant digits."""
    values = np.atleast_1d(value)
    if values.dtype.kind == "f":
        return ", ".join(f"{v:.3g}" for v in values)
    return ", ".join(str(v) for v in values.tolist())
