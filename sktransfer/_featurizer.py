"""PretrainedFeaturizer: a frozen pretrained backbone as a scikit-learn transformer."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._backbones import Backbone, BackboneSpec, Preprocessing, load_backbone, resolve_spec
from ._engines.device import precision_name, resolve_device, resolve_precision
from ._engines.onnx import check_engine, onnx_engine
from ._engines.torch import run_batches
from ._input.images import ImageCollection, InvalidImageError, read_once
from ._input.transforms import DECODES, decode_min_side
from ._layers import (
    OWN,
    POOLINGS,
    Plan,
    StagePooling,
    columns,
    entry_model_key,
    entry_widths,
    fill_from_store,
    resolve_layers,
    save_to_store,
    selected_entries,
    stage_widths,
)
from ._store import resolve_store
from ._store.disk import DiskStore
from ._store.keys import content_hash, feature_key
from ._versions import check_versions, record_versions


@functools.lru_cache(maxsize=4)
def _shared_backbone(spec: BackboneSpec, device: torch.device) -> Backbone:
    """Build a backbone once per process and device; estimators with equal specs share it."""
    return _prepare(load_backbone(spec), device)


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    # channels_last makes convolutions markedly faster on CPU and on tensor cores.
    return model.to(device=device, memory_format=torch.channels_last).eval()


def _sample_keys(entry_keys: list[str], content: str | None) -> list[str] | None:
    """A sample's cache keys, one per entry, or None when its content cannot be read."""
    return None if content is None else [feature_key(key, content) for key in entry_keys]


class PretrainedFeaturizer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Turn images into feature vectors with a frozen pretrained network.

    The network's classifier is dropped; each image becomes the model's own
    pre-logits features (a CNN's global average, a ViT's class token, a
    ConvNeXt's pooled and normed activation), or the pooled activations of
    earlier stages (``layers``). The backbone never trains, so ``fit`` only
    resolves the backbone; ``transform`` does the work, in batches, on the
    GPU when one is present.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        A name from :func:`sktransfer.list_backbones` (or any timm model,
        ``"timm/<name>"`` to prefer timm over torchvision) or a module that
        maps (N, 3, S, S) to (N, D) or (N, C, h, w) (average-pooled); a
        module is copied, never changed.
    weights : "default", None or path, default="default"
        ``"default"``: the pretrained weights (the packaged default never
        touches the network; others are downloaded to the torch or Hugging
        Face cache when missing, unless ``SKTRANSFER_OFFLINE=1``); ``None``:
        random initialisation (a baseline); a path: a state dict saved from
        that model, loaded at ``fit`` (a missing or extra key is an error
        there). With a module backbone, "default" is its own tensors, a path
        is loaded into a copy of it, and None is an error. Anything else is
        an error at ``fit``.
    random_state : int or None, default=None
        Seed of the random initialisation when ``weights=None``: the same
        seed builds the same network, so its features are cached. None draws
        a seed at each ``fit`` from torch's global generator: a new network
        per fit, the same one for every ``transform`` after it (in workers
        too), and nothing cached.
    layers : int, str or tuple, default=-1
        Which stages' outputs become features: an index into
        ``spec_.stages`` (:func:`sktransfer.get_backbone_spec` lists them;
        negative counts from the output, ``-1`` is the last), a stage name,
        or a tuple of them, concatenated in the order given. Earlier stages
        are less specialised to ImageNet, so they help on far domains
        (drawings, X-rays, clothing); let cross-validation choose.
    pooling : {"auto", "avg", "max", "avgmax"}, default="auto"
        How a stage's activation becomes a vector per image: ``"avg"`` or
        ``"max"`` over space (or over tokens, for a ViT), ``"avgmax"`` both,
        concatenated. ``"auto"`` is the model's own pooling for the last
        stage (so ``layers=-1`` gives the model's own features: a ViT's
        class token, a ConvNeXt's pooled and normed output, a CNN's
        average) and the average for every other stage.
    preprocessing : Preprocessing, default=None
        Overrides the preprocessing that belongs to the weights; for a module
        backbone, defaults to ImageNet's (224 px, ImageNet mean and std).
    batch_size : int, default=16
        Images per forward pass; 8-16 is fastest on CPU.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then CPU.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Compute precision; ``"auto"`` is bf16 autocast on CUDA GPUs that
        compute it natively (fp16 on older ones) and fp32 on CPU. An explicit
        ``"bf16"``/``"fp16"`` on a CPU without native support for it (AVX-512
        BF16/FP16, AMX) warns: torch emulates it, 20x slower than fp32.
        Features are always returned as float32.
    engine : {"torch", "onnxruntime"}, default="torch"
        What computes the backbone. ``"onnxruntime"`` exports it to ONNX once
        per process (kept in the cache directory when ``cache`` is one) and
        runs it with ONNX Runtime, on CUDA when its GPU package is installed:
        on CPUs about 2-3x faster than torch, with the same features to float
        rounding (fp32 only). Needs ``pip install "sktransfer[onnx]"``.
    decode : {"fast", "full"}, default="fast"
        How image files are decoded. ``"fast"``: a JPEG (or an MPO's first
        picture) is decoded at the smallest libjpeg DCT scale (1/2, 1/4 or
        1/8) that keeps its shorter side at least 4 times the resize size,
        several times faster on camera photos, with features within cosine
        0.999 of the full decode (see the user guide); other formats, CMYK
        and smaller JPEGs and in-memory images are decoded exactly as with
        ``"full"``. ``"full"``: every file is decoded in full, the exact
        reference pipeline of torchvision's and timm's own transforms. A
        reduced decode is part of the image's cache key.
    num_workers : int, default=0
        DataLoader worker processes that decode and resize images while the
        network runs; 0 decodes in the main process.
    on_error : {"raise", "nan"}, default="raise"
        What to do with samples that are not readable images: ``"raise"``
        one :class:`InvalidImageError` naming all of them, or ``"nan"``
        return NaN rows for them (with a warning) and features for the rest.
    cache : "memory", str, os.PathLike or None, default="memory"
        Where computed features are kept, so each image is computed once:
        ``"memory"``, a process-wide LRU that survives ``clone`` (so
        ``GridSearchCV`` over a pipeline computes each image once); a
        directory, a SQLite store shared by processes and later sessions;
        None, no caching. Entries are keyed by the backbone, its weights,
        preprocessing, precision and decode, and the image's bytes or pixels. With
        a store, one pass keeps every stage's average and maximum and the
        model's own features, each under its own key, whatever ``layers``
        and ``pooling`` ask for: a search over them runs the backbone once
        per image (at the price of storing about 4x the bytes of the last
        stage alone, for the default backbone).
    progress : bool, default=True
        Show a progress bar (only when output goes to a terminal or
        notebook); it clears itself when done.

    Attributes
    ----------
    spec_ : BackboneSpec
        The resolved backbone: preprocessing, feature dimension, stages.
    n_features_out_ : int
        Length of each feature vector.
    stage_widths_ : tuple of int
        Width of each stage's pooled output, input to output.
    layers_ : tuple of (str, str, int)
        The column blocks, in order: stage name, pooling (``"avg"``,
        ``"max"`` or ``"own"``, the model's own) and width.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import PretrainedFeaturizer
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    >>> PretrainedFeaturizer(progress=False).fit_transform(images).shape
    (2, 1280)
    """

    _parameter_constraints = {
        "backbone": [str, nn.Module],
        "weights": [str, os.PathLike, None],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "layers": [Integral, str, tuple, list],
        "pooling": [StrOptions(set(POOLINGS))],
        "preprocessing": [Preprocessing, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "engine": [StrOptions({"torch", "onnxruntime"})],
        "decode": [StrOptions(set(DECODES))],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "on_error": [StrOptions({"raise", "nan"})],
        "cache": [str, os.PathLike, None],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="default",
        random_state=None,
        layers=-1,
        pooling="auto",
        preprocessing=None,
        batch_size=16,
        device="auto",
        precision="auto",
        engine="torch",
        decode="fast",
        num_workers=0,
        on_error="raise",
        cache="memory",
        progress=True,
    ):
        self.backbone = backbone
        self.weights = weights
        self.random_state = random_state
        self.layers = layers
        self.pooling = pooling
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.engine = engine
        self.decode = decode
        self.num_workers = num_workers
        self.on_error = on_error
        self.cache = cache
        self.progress = progress

    def fit(self, X, y=None):
        """Resolve the backbone; the network itself is not trained.

        Parameters
        ----------
        X : collection of images
            Paths, PIL images, arrays or tensors; checked for shape only.
        y : ignored

        Returns
        -------
        self : PretrainedFeaturizer
        """
        self._validate_params()
        check_engine(self.engine, self.precision)
        ImageCollection(X)
        seed = self.random_state
        if self.weights is None and seed is None and not isinstance(self.backbone, nn.Module):
            # A new random network per fit, which the spec names, so transform rebuilds it.
            seed = int(torch.randint(2**31 - 1, ()))
        self.spec_ = resolve_spec(self.backbone, self.weights, self.preprocessing, seed)
        stages = self.spec_.stages
        entries = selected_entries(resolve_layers(self.layers, stages), self.pooling, stages)
        # Probed here, once per process and backbone, so transform (maybe in a worker) need not.
        self.stage_widths_ = stage_widths(self.spec_)
        widths = entry_widths(stages, self.stage_widths_, self.spec_.feature_dim)
        self.layers_ = tuple((stage, pooling, widths[stage, pooling]) for stage, pooling in entries)
        self.n_features_out_ = sum(width for *_, width in self.layers_)
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then compute one feature vector per image of the same ``X``.

        Parameters
        ----------
        X : collection of images
            As in :meth:`transform`; an iterator (a generator) is read once,
            for both steps.
        y : ignored
        **fit_params : dict
            Passed to :meth:`fit`.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), dtype float32
        """
        return super().fit_transform(read_once(X), y, **fit_params)

    def get_feature_names_out(self, input_features=None):
        """Names of the output columns.

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        names : ndarray of str
            ``pretrainedfeaturizer0, ...`` for the model's own features (the
            default); otherwise ``<stage>_<pooling>_<i>`` (``block5_avg_17``).
        """
        check_is_fitted(self)
        if [(stage, pooling) for stage, pooling, _ in self.layers_] == [
            (self.spec_.stages[-1], OWN)
        ]:
            return super().get_feature_names_out(input_features)
        names = [f"{stage}_{p}_{i}" for stage, p, width in self.layers_ for i in range(width)]
        return np.asarray(names, dtype=object)

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def transform(self, X):
        """Compute one feature vector per image.

        Parameters
        ----------
        X : collection of images
            Paths, PIL images, arrays (N, H, W[, C]) or tensors (N, C, H, W).

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), dtype float32
            In input order, ``n_features = n_features_out_``; NaN rows for bad
            samples when ``on_error="nan"``.

        Raises
        ------
        InvalidImageError
            Some samples are not readable images (``on_error="raise"``); the
            error names every one of them by index and path.
        """
        check_is_fitted(self)
        images = ImageCollection(X, decode_min_side(self.spec_.preprocessing, self.decode))
        features = np.full((len(images), self.n_features_out_), np.nan, dtype=np.float32)
        device = resolve_device(self.device)
        dtype = (
            torch.float32
            if self.engine == "onnxruntime"
            else resolve_precision(self.precision, device)
        )
        # A network drawn at fit is never met again: its features are not worth keeping.
        drawn = self.weights is None and self.random_state is None
        store = resolve_store(self.cache) if self.spec_.deterministic and not drawn else None
        stages = self.spec_.stages
        entries = [(stage, pooling) for stage, pooling, _ in self.layers_]
        widths = entry_widths(stages, self.stage_widths_, self.spec_.feature_dim)
        # With a store, one pass keeps every stage, so other layers are a later hit;
        # without one, the pass stops at the deepest stage asked for.
        plan = Plan.complete(stages) if store is not None else Plan.covering(stages, entries)
        model_key = self._model_key(dtype)
        # Each entry's identity, once; an image's keys join them with its content hash.
        lookup_keys = [entry_model_key(model_key, entry, stages) for entry in entries]
        store_keys = [entry_model_key(model_key, entry, stages) for entry in plan.entries]
        keys = [None] * len(images)
        if store is not None:
            # Each sample's content says how it decodes: in full, or reduced by decode="fast".
            keys = [
                _sample_keys(lookup_keys, images.content(index, content_hash))
                for index in range(len(images))
            ]
        missing = fill_from_store(store, keys, features)
        take = columns(plan.entries, entries, widths)
        failures = []
        # Closed on any exit, so the decoding threads stop even if storing a batch fails.
        batches = run_batches(
            self._engine(device, store, plan) if missing else None,
            images,
            missing,
            transform=self.spec_.preprocessing,
            batch_size=self.batch_size,
            device=device,
            dtype=dtype,
            num_workers=self.num_workers,
            progress="featurizing" if self.progress else None,
            # Without a store nothing is keyed: hashing each file's bytes would be wasted.
            content_hash=content_hash if store is not None else None,
        )
        with contextlib.closing(batches):
            for indices, rows, bad, *contents in batches:
                failures.extend(bad)
                if rows is None:
                    continue
                features[indices] = rows[:, take]
                if store is not None:
                    # Keyed by the content decoded, which differs from the lookup's if a file
                    # changed; stored batch by batch, so an interrupted run keeps finished batches.
                    row_keys = [_sample_keys(store_keys, content) for content in contents[0]]
                    save_to_store(store, row_keys, rows, plan.entries, widths)
        if failures:
            if self.on_error == "raise":
                raise InvalidImageError(failures)
            warnings.warn(
                f"{len(failures)} of {len(images)} samples are not readable images; their "
                f"rows are NaN. First: {failures[0]}",
                UserWarning,
                stacklevel=2,
            )
        return features

    def _model_key(self, dtype: torch.dtype) -> str:
        """Identity of the feature function; engines that agree to float rounding share it."""
        return f"{self.spec_.key}|{precision_name(dtype)}"

    def _engine(self, device: torch.device, store, plan: Plan):
        channels_last = self.spec_.stage_format == "NHWC"
        if self.engine == "torch":
            return StagePooling(self._model(device), plan, channels_last)
        return onnx_engine(
            f"{self._model_key(torch.float32)}|{plan.label}",
            lambda: StagePooling(self._model(torch.device("cpu")), plan, channels_last),
            self.spec_.preprocessing.input_size,
            device,
            store.directory if isinstance(store, DiskStore) else None,
        )

    def _model(self, device: torch.device) -> nn.Module:
        if self.spec_.library == "module":
            # Another module may share this one's identity yet differ where the identity
            # cannot see (a global, an opaque object): its network is never served.
            return _prepare(load_backbone(self.spec_), device)
        return _shared_backbone(self.spec_, device)

    # A pickle holds no weights: the backbone is rebuilt from spec_ by the libraries
    # installed where it is loaded, so it records theirs and warns when they differ.
    def __getstate__(self):
        return record_versions(super().__getstate__())

    def __setstate__(self, state):
        super().__setstate__(check_versions(state, type(self).__name__))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags
