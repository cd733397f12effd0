"""Look at a fitted model: the images it gets most wrong, where it looks, how it trained.

Three Displays in the style of scikit-learn's (``ConfusionMatrixDisplay``):
build one with ``from_estimator`` (or :meth:`ImageErrorsDisplay.from_predictions`
for out-of-fold predictions), which computes what to show and draws it;
``plot(ax=...)`` draws it again elsewhere and returns the display. What was
computed stays on the display (``indices``, ``losses``, ``maps``, ...) and
what was drawn is in ``figure_`` and ``axes_`` (``ax_`` for a single plot).
matplotlib is imported only when a display draws.

- :class:`ImageErrorsDisplay`: the images with the highest loss, titled with
  their true and predicted labels (fastai's ``plot_top_losses``);
- :class:`SaliencyDisplay`: Grad-CAM heat maps over the images, for a
  :class:`~sktransfer.FineTuneClassifier` or a pipeline of
  :class:`~sktransfer.PretrainedFeaturizer` and a linear classifier;
- :class:`TrainingHistoryDisplay`: a fine-tuner's loss (and validation
  metric) per epoch (Keras' ``History``, fastai's ``plot_loss``).
"""

from ._errors import ImageErrorsDisplay
from ._history import TrainingHistoryDisplay
from ._saliency import SaliencyDisplay

__all__ = ["ImageErrorsDisplay", "SaliencyDisplay", "TrainingHistoryDisplay"]
