"""Fine-tuning a pretrained backbone with a new head, trained with skorch.

``_network``: the stages, the backbone's pooling, the head and freezing;
``_frozen``: the frozen stages' outputs, computed once per image and kept in
the feature store; ``_base``: :class:`FineTuneBase`, everything a fine-tuner
does whatever its targets; ``_params``: the parameters' constraints, checked
at every fit, and the learning-rate setters; ``_docs``: the parameter docs they share;
``_callbacks``: the epoch progress bar; ``_targets``: labels checked and
encoded for the loss, numbers checked;
``_classifier``: :class:`FineTuneClassifier`; ``_regressor``:
:class:`FineTuneRegressor`.
"""

from ._base import NETWORK_PARAMS, FineTuneBase
from ._callbacks import EpochProgress
from ._classifier import FineTuneClassifier
from ._frozen import FROZEN_CACHE_LIMIT_BYTES, FROZEN_STORE_MAX_ROW_BYTES
from ._network import FineTuneNetwork, frozen_stage_count, make_head
from ._regressor import FineTuneRegressor

__all__ = [
    "FROZEN_CACHE_LIMIT_BYTES",
    "FROZEN_STORE_MAX_ROW_BYTES",
    "NETWORK_PARAMS",
    "EpochProgress",
    "FineTuneBase",
    "FineTuneClassifier",
    "FineTuneNetwork",
    "FineTuneRegressor",
    "frozen_stage_count",
    "make_head",
]
