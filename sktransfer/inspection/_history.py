"""TrainingHistoryDisplay: a fine-tuner's losses and validation metric per epoch."""

from __future__ import annotations

import numpy as np

from ._grid import pyplot

# Entries of a skorch history row that are not a validation metric.
_NOT_METRICS = ("valid_loss", "valid_batch_count")


class TrainingHistoryDisplay:
    """The training loss per epoch, and the validation loss and metric when there are some.

    A fine-tuner validates only with a ``train_split`` (skorch's
    ``ValidSplit``); the default, ``train_split=None``, trains on every image
    and leaves validation to cross-validation, so its history holds the
    training loss alone. Warm-up epochs (``warmup_epochs``) come first. Build
    it with :meth:`from_estimator`, which draws it.

    Parameters
    ----------
    epochs : ndarray of int
        The epoch numbers, from 1.
    train_loss : ndarray of float
    valid_loss : ndarray of float, default=None
    metric : ndarray of float, default=None
        A validation score per epoch (``valid_acc`` for a classifier).
    metric_name : str, default=None
        Its name in the history.

    Attributes
    ----------
    figure_ : matplotlib Figure
    ax_ : matplotlib Axes
        The losses.
    metric_ax_ : matplotlib Axes or None
        The metric, on its own scale at the right (a twin of ``ax_``).
    lines_ : dict of str to matplotlib Line2D
        ``"train_loss"``, and ``"valid_loss"`` and the metric's name when drawn.

    Examples
    --------
    >>> from sktransfer import FineTuneClassifier
    >>> from sktransfer.datasets import load_textures
    >>> from sktransfer.inspection import TrainingHistoryDisplay
    >>> X, y = load_textures(patch_size=64, stride=256)
    >>> clf = FineTuneClassifier(max_epochs=3, random_state=0, progress=False).fit(X, y)
    >>> display = TrainingHistoryDisplay.from_estimator(clf)
    >>> display.epochs.tolist(), display.valid_loss is None
    ([1, 2, 3], True)
    """

    def __init__(self, epochs, train_loss, valid_loss=None, metric=None, metric_name=None):
        self.epochs = epochs
        self.train_loss = train_loss
        self.valid_loss = valid_loss
        self.metric = metric
        self.metric_name = metric_name

    @classmethod
    def from_estimator(cls, estimator, *, metric=None, ax=None):
        """Read a fitted skorch net's ``history_`` and draw it.

        Parameters
        ----------
        estimator : FineTuneClassifier, FineTuneRegressor or skorch net
            Fitted (``history_`` holds at least one epoch).
        metric : str, default=None
            The history key of the validation metric to draw (the name of an
            ``EpochScoring`` callback); None: the first one recorded, such as
            ``valid_acc``, if any.
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        history = getattr(estimator, "history_", None)
        if not history:
            raise ValueError(
                f"{type(estimator).__name__} has no training history: fit it first "
                "(a skorch net's history_ records each epoch)"
            )
        keys = history[-1].keys()
        if metric is None:
            candidates = [
                key
                for key in keys
                if key.startswith("valid_")
                and key not in _NOT_METRICS
                and not key.endswith("_best")
            ]
            metric = candidates[0] if candidates else None
        elif metric not in keys:
            raise ValueError(f"metric={metric!r} is not in the history; it records {sorted(keys)}")
        display = cls(
            epochs=np.asarray(history[:, "epoch"]),
            train_loss=np.asarray(history[:, "train_loss"], dtype=float),
            valid_loss=(
                np.asarray(history[:, "valid_loss"], dtype=float) if "valid_loss" in keys else None
            ),
            metric=None if metric is None else np.asarray(history[:, metric], dtype=float),
            metric_name=metric,
        )
        return display.plot(ax=ax)

    def plot(self, *, ax=None):
        """Draw the losses, one point per epoch, and the metric on a second scale.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        if ax is None:
            _, ax = pyplot().subplots(figsize=(5.5, 3.5), layout="constrained")
        self.figure_, self.ax_ = ax.figure, ax
        self.lines_ = {}
        (self.lines_["train_loss"],) = ax.plot(
            self.epochs, self.train_loss, "o-", color="C0", label="train loss"
        )
        if self.valid_loss is not None:
            (self.lines_["valid_loss"],) = ax.plot(
                self.epochs, self.valid_loss, "s-", color="C1", label="valid loss"
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        handles = list(self.lines_.values())
        self.metric_ax_ = None
        if self.metric is not None:
            self.metric_ax_ = ax.twinx()
            (self.lines_[self.metric_name],) = self.metric_ax_.plot(
                self.epochs, self.metric, "^--", color="C2", label=self.metric_name
            )
            self.metric_ax_.set_ylabel(self.metric_name)
            handles.append(self.lines_[self.metric_name])
        ax.legend(handles=handles, loc="best")
        return self
