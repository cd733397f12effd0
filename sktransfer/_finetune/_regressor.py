"""FineTuneRegressor: a pretrained backbone and a new regression head, trained with skorch."""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNetRegressor
from skorch.utils import is_dataset
from torch import nn

from ._base import FineTuneBase
from ._docs import compose_doc
from ._targets import check_regression_targets


@compose_doc(
    tta="""\
tta : {False, "flip", "ten_crop"}, default=False
    Test-time augmentation: ``predict`` averages the predictions of
    several views of each image. ``"flip"``: the centre crop and its
    mirror image (2 passes); ``"ten_crop"``: the centre and four corner
    crops of the resized image and their mirror images (10 passes, as
    torchvision's ``TenCrop``). Each view's frozen outputs are cached
    like the plain view's.""",
    criterion="""\
criterion : torch loss class, default=torch.nn.MSELoss
    A loss between the head's outputs and the standardised targets, e.g.
    ``torch.nn.HuberLoss`` (``criterion__delta=1.0``, in standard
    deviations of ``y``) or ``torch.nn.L1Loss``.""",
    train_split="""\
train_split : callable or None, default=None
    None trains on everything ``fit`` gets: validation is the job of
    cross-validation around the estimator, as in scikit-learn. Pass a
    skorch split such as ``ValidSplit(5)`` for validation losses per
    epoch (and ``EarlyStopping``).""",
)
class FineTuneRegressor(FineTuneBase, NeuralNetRegressor):
    """Fine-tune a pretrained image backbone with a new regression head.

    A :class:`skorch.NeuralNetRegressor` whose module is built in ``fit``:
    the backbone (from the registry or a module), its pooling and a linear
    (or MLP) head with one output per column of ``y``. ``freeze`` chooses
    how many leading stages of the backbone stay fixed.

    ``y`` is standardised inside, with the mean and standard deviation of
    the ``y`` given to ``fit``, and ``predict`` undoes it: targets in metres
    or in millimetres give the same fit, and the default learning rate
    suits any scale. ``score`` is R², as for every scikit-learn regressor.

    The frozen stages' outputs are computed once per image and kept in the
    feature store ``cache``, under the same keys as
    :class:`FineTuneClassifier`'s and (with ``freeze="backbone"``)
    :class:`PretrainedFeaturizer`'s, so a search over ``freeze`` and ``lr``
    runs each frozen depth once per image. The backbone's stages compute in
    ``precision``, in training and prediction; the head always in float32.

    Parameters
    ----------
    {parameters}

    Attributes
    ----------
    n_outputs_ : int
        The number of targets: 1 for a 1-D ``y``, else its columns.
    y_mean_ : ndarray of shape (n_outputs,)
        The mean of each target in the ``y`` of the first ``fit``.
    y_scale_ : ndarray of shape (n_outputs,)
        Its standard deviation (1 where it is constant); the head predicts
        ``(y - y_mean_) / y_scale_``.
    {attributes}

    See Also
    --------
    FineTuneClassifier : The same fine-tuning for labels.
    PretrainedFeaturizer : Frozen features for any scikit-learn regressor.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTuneRegressor
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    >>> brightness = images.mean(axis=(1, 2, 3))
    >>> reg = FineTuneRegressor(max_epochs=2, random_state=0)
    >>> reg.fit(images, brightness).predict(images[:2]).shape
    (2,)
    """

    # Under autocast the head would compute in bf16/fp16: 2-3 significant digits.
    _fp32_head = True

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
        precision="auto",
        engine="torch",
        cache="memory",
        cache_frozen=True,
        random_state=None,
        progress=True,
        criterion=nn.MSELoss,
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

    # --- targets ---

    def _n_outputs(self) -> int:
        if not hasattr(self, "n_outputs_"):
            raise ValueError("the head is sized from y: call fit before initialize")
        return self.n_outputs_

    def _learn_targets(self, y):
        """Set ``n_outputs_``, ``y_mean_`` and ``y_scale_`` from ``y``."""
        y = check_regression_targets(y)
        y = y.reshape(len(y), -1)
        self.n_outputs_ = y.shape[1]
        self.y_mean_ = y.mean(axis=0)
        scale = y.std(axis=0)
        # A constant target has nothing to scale (as StandardScaler).
        self.y_scale_ = np.where(scale > 0, scale, 1.0)

    def _encode_targets(self, y) -> np.ndarray:
        """Standardised targets, float32 of shape (n_samples, n_outputs_)."""
        y = check_regression_targets(y)
        columns = y.reshape(len(y), -1)
        if columns.shape[1] != self.n_outputs_:
            raise ValueError(
                f"expected y with {self.n_outputs_} output(s), as in the first fit; "
                f"got shape {y.shape}"
            )
        return ((columns - self.y_mean_) / self.y_scale_).astype(np.float32)

    # --- prediction ---

    def predict(self, X):
        """Predicted targets, in the units of ``y``; with ``tta``, the mean over the views.

        Parameters
        ----------
        X : collection of images

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            1-D for a single target, as scikit-learn's ``MLPRegressor``. For
            a torch ``Dataset`` (what skorch's scoring callbacks pass, with
            standardised targets), standardised predictions instead.
        """
        self.check_is_fitted()
        if is_dataset(X):
            return super().predict(X)
        standardised = self._predict_views(X, self._get_predict_nonlinearity())
        y = standardised.astype(np.float64) * self.y_scale_ + self.y_mean_
        return y[:, 0] if self.n_outputs_ == 1 else y

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
