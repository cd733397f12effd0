"""sktransfer: transfer learning for images, the scikit-learn way."""

from ._backbones import (
    Backbone,
    BackboneSpec,
    Preprocessing,
    get_backbone_spec,
    list_backbones,
    load_backbone,
)
from ._cache import cache_info, clear_cache
from ._featurizer import PretrainedFeaturizer
from ._finetune import FineTuneClassifier, FineTuneRegressor
from ._images import ImageFailure, InvalidImageError
from ._weights import WeightsIntegrityError, WeightsNotFoundError

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneSpec",
    "FineTuneClassifier",
    "FineTuneRegressor",
    "ImageFailure",
    "InvalidImageError",
    "Preprocessing",
    "PretrainedFeaturizer",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "cache_info",
    "clear_cache",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone",
]
