"""SaliencyDisplay: where in each image a classifier found its class (Grad-CAM)."""

from __future__ import annotations

from ._gradcam import class_scores, grad_cam
from ._grid import decode_images, image_axes


class SaliencyDisplay:
    """Grad-CAM heat maps overlaid on the images: what raised a class's score.

    Grad-CAM (Selvaraju et al., ICCV 2017) weights a stage's channels by how
    much the class score rises with each (its gradient, averaged over the
    image) and keeps the positive part of their sum: a coarse map, one value
    per position of the stage's output, of the regions that argue for the
    class. The map covers the square the network saw (the evaluation
    transform's resize and centre crop) and is mapped back onto each image's
    own pixels; what the crop cut off is 0. Build it with
    :meth:`from_estimator`, which draws it.

    Parameters
    ----------
    images : list of ndarray
        The images, decoded: uint8 RGB ``(H, W, 3)``, upright.
    maps : list of ndarray
        One heat map per image, float ``(H, W)`` at that image's own height
        and width, scaled to [0, 1] (its maximum is 1 unless it is all 0).
    targets : ndarray
        The class each map explains.
    stage : str
        The backbone stage the maps come from.

    Attributes
    ----------
    figure_ : matplotlib Figure
    axes_ : ndarray of matplotlib Axes
        One per image (a grid; spare ones hidden).
    maps_ : list of ndarray
        The heat maps drawn: ``maps``, one float ``(H, W)`` array per image
        at its own height and width, in [0, 1].
    overlays_ : list of matplotlib AxesImage
        The heat maps as drawn.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import PretrainedFeaturizer
    >>> from sktransfer.datasets import load_textures
    >>> from sktransfer.inspection import SaliencyDisplay
    >>> X, y = load_textures(patch_size=64, stride=256)
    >>> pipe = make_pipeline(PretrainedFeaturizer(progress=False), LogisticRegression())
    >>> display = SaliencyDisplay.from_estimator(pipe.fit(X, y), X[:2])
    >>> display.stage, display.maps_[0].shape, float(display.maps_[0].max())
    ('head', (64, 64), 1.0)
    """

    def __init__(self, images, maps, targets, stage):
        self.images = images
        self.maps = maps
        self.targets = targets
        self.stage = stage

    @classmethod
    def from_estimator(
        cls, estimator, X, *, target=None, stage=None, ax=None, n_cols=None, alpha=0.5
    ):
        """Compute the Grad-CAM map of each image of ``X`` and draw it over the image.

        Parameters
        ----------
        estimator : FineTuneClassifier or Pipeline
            A fitted :class:`~sktransfer.FineTuneClassifier` (single-label),
            or a fitted pipeline of :class:`~sktransfer.PretrainedFeaturizer`,
            optionally ``StandardScaler``, and a linear classifier with
            ``coef_`` and ``intercept_`` (``LogisticRegression``,
            ``RidgeClassifier``, ``LinearSVC``, ...), whose scores are then a
            differentiable function of the backbone's pooled features.
        X : collection of images
            Paths, PIL images, arrays or tensors; each is decoded in full and
            seen through the backbone's evaluation transform.
        target : label, default=None
            The class to explain, one of ``classes_``; None explains each
            image's highest-scoring class (its prediction, without
            test-time augmentation).
        stage : str or int, default=None
            A stage name or index of the backbone (``spec_.stages``;
            negative counts from the output); None: the last stage whose
            output has spatial extent. Later stages give coarser maps of
            more specific evidence.
        ax : matplotlib Axes or array-like of Axes, default=None
            Where to draw; see :meth:`plot`.
        n_cols : int, default=None
            Columns of a new grid; default up to 5.
        alpha : float, default=0.5
            Opacity of the heat maps.

        Returns
        -------
        display : SaliencyDisplay
        """
        scores = class_scores(estimator)
        images = decode_images(X)
        maps, targets, name = grad_cam(scores, images, target, stage)
        return cls(images, maps, targets, name).plot(ax=ax, n_cols=n_cols, alpha=alpha)

    def plot(self, *, ax=None, n_cols=None, alpha=0.5, cmap="jet", fontsize=9):
        """Draw each image with its heat map over it, titled with the class explained.

        Parameters
        ----------
        ax : matplotlib Axes or array-like of Axes, default=None
            None: a new figure. One Axes: its place is split into a grid.
            Several: one per image, in order.
        n_cols : int, default=None
            Columns of a new grid; default up to 5.
        alpha : float, default=0.5
            Opacity of the heat maps.
        cmap : str or Colormap, default="jet"
            Colours of the heat maps, from 0 to 1.
        fontsize : float, default=9
            Of the titles.

        Returns
        -------
        display : SaliencyDisplay
        """
        self.figure_, self.axes_ = image_axes(len(self.images), ax, n_cols)
        self.maps_ = self.maps
        self.overlays_ = []
        for axis, image, heat, target in zip(self.axes_.flat, self.images, self.maps, self.targets):
            axis.imshow(image)
            overlay = axis.imshow(heat, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            self.overlays_.append(overlay)
            axis.set_title(f"{target} ({self.stage})", fontsize=fontsize)
        return self
