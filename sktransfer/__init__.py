"""sktransfer: transfer learning for images, the scikit-learn way."""

from ._backbones import (
    Backbone,
    BackboneSpec,
    Preprocessing,
    get_backbone_spec,
    list_backbones,
    load_backbone,
)
from ._featurizer import PretrainedFeaturizer
from ._finetune import FineTuneClassifier, FineTuneRegressor
from ._input.images import ImageFailure, InvalidImageError
from ._store import cache_info, clear_cache
from ._store.trust import UntrustedCacheError
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
    "UntrustedCacheError",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "cache_info",
    "clear_cache",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone",
]
