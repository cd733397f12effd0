"""Targets: labels checked, classes learned and encoded for the loss, class weights;
numeric targets checked for regression.

Single-label ``y`` (labels of any type) is encoded as class indices in the
order of ``classes``; a 2-D 0/1 matrix (scikit-learn's "multilabel-indicator")
is multi-label. A regressor's ``y`` is 1-D or 2-D (one column per output) and
finite.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import type_of_target

from .._input.images import is_missing


def _samples(rows) -> str:
    return ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")


def check_targets(y) -> np.ndarray:
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
        missing = np.array([is_missing(v) for v in y.ravel()]).reshape(y.shape)
    else:
        missing = np.zeros(y.shape, dtype=bool)
    if missing.any():
        rows = np.flatnonzero(missing.reshape(len(y), -1).any(axis=1))
        raise ValueError(
            f"y has missing labels (NaN or None) for {len(rows)} sample(s): {_samples(rows)}; "
            "drop those samples or label them"
        )
    # scikit-learn's "multilabel-indicator" admits any two values; the loss needs 0 and 1.
    if y.ndim == 2 and (
        type_of_target(y) != "multilabel-indicator" or not np.isin(y, (0, 1)).all()
    ):
        raise ValueError(
            "a 2-D y means multi-label and must hold only 0 and 1 (one column per label); "
            f"got values {np.unique(y)[:10].tolist()}"
        )
    return y


def learn_targets(y, classes=None, class_weight=None):
    """Classes, whether ``y`` is multi-label, and the class weights, from ``y``.

    Parameters
    ----------
    y : array-like of shape (n_samples,) or (n_samples, n_labels)
    classes : array-like or None
        The labels in column order; default: the sorted labels of ``y`` (for
        multi-label, 0..L-1).
    class_weight : "balanced", dict or None
        As in scikit-learn; single-label only.

    Returns
    -------
    classes : ndarray
    multilabel : bool
    weights : ndarray of float or None
        One weight per class, in the order of ``classes``.
    """
    y = check_targets(y)
    if y.ndim == 2:
        classes = np.arange(y.shape[1]) if classes is None else np.asarray(classes)
        if len(classes) != y.shape[1]:
            raise ValueError(
                f"classes has {len(classes)} names but the multi-label y has {y.shape[1]} columns"
            )
        return classes, True, None
    if type_of_target(y) == "continuous":
        raise ValueError(
            "Unknown label type: continuous. y holds fractional numbers, which a "
            "classifier cannot take as class labels; to predict numbers, use FineTuneRegressor"
        )
    classes = np.unique(y) if classes is None else np.asarray(classes)
    if len(classes) < 2:
        raise ValueError(
            f"y has a single class ({classes.tolist()[0]!r}); a classifier needs at least "
            "two classes"
        )
    weights = None
    if class_weight is not None:
        weights = compute_class_weight(class_weight, classes=classes, y=y)
    return classes, False, weights


def encode_targets(y, classes, multilabel: bool) -> np.ndarray:
    """Class indices (int64) in the order of ``classes``, or the 0/1 matrix as float32."""
    y = check_targets(y)
    if multilabel:
        if y.ndim != 2 or y.shape[1] != len(classes):
            raise ValueError(
                f"expected a 0/1 matrix with {len(classes)} columns, as in the "
                f"first fit; got y of shape {y.shape}"
            )
        return y.astype(np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected 1-D labels, as in the first fit; got shape {y.shape}")
    # Not LabelEncoder: it sorts, and a user's ``classes`` fixes another column order.
    index = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    encoded = np.array([index.get(label, -1) for label in y.tolist()], dtype=np.int64)
    unknown = np.flatnonzero(encoded < 0)
    if len(unknown):
        raise ValueError(
            f"y has labels not in classes_ {np.asarray(classes).tolist()}: "
            f"{np.unique(y[unknown]).tolist()[:10]} (samples {unknown[:10].tolist()}). "
            "The classes are fixed by the first fit: to add labels later, give them all "
            "up front, as the classes= parameter or partial_fit's classes= on its first call"
        )
    return encoded


def check_regression_targets(y) -> np.ndarray:
    """``y`` as float64 of shape (n,) or (n, k), all finite; clear errors otherwise."""
    y = np.asarray(y)
    if y.ndim not in (1, 2) or len(y) == 0 or y.size == 0:
        raise ValueError(
            "y must be a non-empty 1-D array of numbers, or 2-D with one column per output; "
            f"got shape {y.shape}"
        )
    if y.dtype.kind == "c":
        raise ValueError("Complex data not supported: y must hold real numbers for regression")
    if y.dtype.kind in "OUS":
        for index, value in enumerate(y.ravel().tolist()):
            try:
                float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"y must hold numbers for regression; sample {index // (y.size // len(y))} "
                    f"is {value!r}. For labels use FineTuneClassifier"
                ) from None
    y = y.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))
    if len(bad):
        raise ValueError(
            f"y has NaN or infinite values for {len(bad)} sample(s): {_samples(bad)}; "
            "drop those samples or give them a value"
        )
    return y
