"""The frozen stages' outputs for a set of images, computed once and kept in the feature store.

Frozen stages compute a fixed function of the image, so their output for an
image is stored under the identity of that function (backbone, number of
frozen stages, precision, test-time view) and the image's content, in the
store the featurizer uses; every epoch, fold, parameter setting and
``predict`` that freezes the same stages reuses it. The store holds flat
float32 rows: pooled features exactly as the featurizer stores them (so
``freeze="backbone"`` shares its entries), other activations prefixed with
their shape. :class:`FrozenDatasetsMixin` gives a fine-tuner its datasets:
these outputs when they can be reused, else the images, each decoded once
(:mod:`._decoded`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from skorch.utils import is_dataset
from torch.utils.data import Dataset, Subset

from .._backbones import module_fingerprint
from .._engines.device import precision_name
from .._engines.onnx import onnx_engine
from .._engines.torch import run_batches
from .._input.images import ImageCollection, InvalidImageError
from .._input.transforms import EvalView, decode_min_side, train_augmentation
from .._store import resolve_store
from .._store.disk import DiskStore
from .._store.keys import feature_key
from ._decoded import DecodedImages

#: Largest set of frozen-stage outputs one ``fit`` or ``predict`` holds in
#: memory; above it the frozen stages run on every batch instead (with a warning).
FROZEN_CACHE_LIMIT_BYTES = 2 * 1024**3

#: Largest per-image frozen-stage output kept in the feature store. The first
#: stages of a CNN at full resolution output up to megabytes per image (the
#: Lite0 stem: 1.6 MB at 224 px), which would crowd out everything else; the
#: depths a search usually tries (all but the last one or two stages, or the
#: whole backbone) output 5-300 KB.
FROZEN_STORE_MAX_ROW_BYTES = 512 * 1024


def activation_row(activation: torch.Tensor, pooled: bool) -> np.ndarray:
    """One image's frozen-stage output as a flat float32 row for the feature store.

    Pooled features are stored as they are, exactly as the featurizer stores
    them, so both share entries. An unpooled activation is prefixed with its
    number of dimensions and its shape (small ints are exact in float32).
    """
    flat = activation.reshape(-1).numpy()
    if pooled:
        return flat
    header = np.array([activation.ndim, *activation.shape], dtype=np.float32)
    return np.concatenate([header, flat])


def activation_from_row(row: np.ndarray, pooled: bool) -> torch.Tensor:
    """Inverse of :func:`activation_row`."""
    if pooled:
        return torch.from_numpy(np.array(row, dtype=np.float32))
    ndim = int(row[0])
    shape = [int(d) for d in row[1 : 1 + ndim]]
    return torch.from_numpy(np.array(row[1 + ndim :], dtype=np.float32).reshape(shape))


class ImageDataset(Dataset):
    """``({"images": tensor}, target)`` for each image, decoded and transformed on access."""

    def __init__(self, images: ImageCollection, y, transform):
        self.images = images
        self.y = y
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        target = 0 if self.y is None else self.y[index]
        return {"images": self.transform(self.images.load(index))}, target

    def with_transform(self, transform) -> ImageDataset:
        return ImageDataset(self.images, self.y, transform)


class ActivationDataset(Dataset):
    """``({"activations": tensor}, target)`` from precomputed frozen-stage outputs."""

    def __init__(self, activations: torch.Tensor, y):
        self.activations = activations
        self.y = y

    def __len__(self) -> int:
        return len(self.activations)

    def __getitem__(self, index: int):
        target = 0 if self.y is None else self.y[index]
        return {"activations": self.activations[index]}, target


def with_transform(dataset, transform):
    """``dataset`` (an ImageDataset or a Subset of one) with another image transform."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    return dataset.with_transform(transform)


def frozen_outputs(
    network,
    images: DecodedImages,
    view,
    *,
    store,
    model_key: str,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    num_workers: int = 0,
    progress: bool = False,
    engine=None,
) -> torch.Tensor | None:
    """The frozen stages' output for every image, from ``store`` or computed once.

    Parameters
    ----------
    network : FineTuneNetwork
    images : DecodedImages
    view : callable
        The evaluation transform (a test-time view).
    store : MemoryStore, DiskStore or None
        Where outputs are looked up and kept; None keeps nothing.
    model_key : str
        Identity of the function from an image to its frozen-stage output.
    batch_size, device, dtype, num_workers, progress
        How the missing outputs are computed (see ``run_batches``).
    engine : Engine, default=None
        What computes them (an ONNX Runtime engine); None runs
        ``network.forward_frozen`` in torch.

    Returns
    -------
    outputs : tensor of shape (n_images, ...) or None
        None when they would take more than ``FROZEN_CACHE_LIMIT_BYTES``.
    """
    pooled = network.n_frozen == len(network.stages)
    keys = [None] * len(images)
    rows = [None] * len(images)
    if store is not None:
        for index in range(len(images)):
            content = images.content(index)
            keys[index] = None if content is None else feature_key(model_key, content)
        known = [i for i, key in enumerate(keys) if key is not None]
        for index, row in zip(known, store.get_many([keys[i] for i in known])):
            rows[index] = row
    missing = [i for i, row in enumerate(rows) if row is None]
    outputs = None

    def allocate(shape):
        size = len(images) * math.prod(shape) * 4
        if size > FROZEN_CACHE_LIMIT_BYTES:
            warnings.warn(
                f"the frozen stages' outputs would take {size / 2**30:.1f} GiB, more "
                f"than FROZEN_CACHE_LIMIT_BYTES; they run on every batch instead "
                "(freeze more stages, or set cache_frozen=False)",
                UserWarning,
                stacklevel=5,
            )
            return None
        return torch.empty((len(images), *shape), dtype=torch.float32)

    failures = []
    batches = run_batches(
        network.forward_frozen if engine is None else engine,
        images,
        missing,
        transform=view,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        num_workers=num_workers,
        progress="frozen stages" if progress else None,
        as_numpy=False,
        content_hash=images.content if store is not None else None,
    )
    # The pass is deterministic; restoring the RNG keeps training's random draws
    # (shuffling, dropout) the same whether or not outputs came from the store.
    with torch.random.fork_rng(devices=[]):
        for indices, result, bad, *decoded in batches:
            failures.extend(bad)
            if result is None:
                continue
            if outputs is None:
                outputs = allocate(result.shape[1:])
                if outputs is None:
                    return None
            outputs[torch.from_numpy(indices)] = result
            if store is None or result[0].numel() * 4 > FROZEN_STORE_MAX_ROW_BYTES:
                continue
            # Keyed by the content decoded (a file may have changed since the lookup),
            # and stored batch by batch: an interrupted run keeps every finished batch.
            contents = decoded[0]
            saved = [j for j, content in enumerate(contents) if content is not None]
            if saved:
                store.put_many(
                    [feature_key(model_key, contents[j]) for j in saved],
                    np.stack([activation_row(result[j], pooled) for j in saved]),
                )
    if failures:
        raise InvalidImageError(failures)
    for index, row in enumerate(rows):
        if row is not None:
            activation = activation_from_row(row, pooled)
            if outputs is None:
                outputs = allocate(activation.shape)
                if outputs is None:
                    return None
            outputs[index] = activation
    return outputs


class FrozenDatasetsMixin:
    """A fine-tuner's datasets: frozen-stage outputs from the store when reusable, else images.

    Mixed into :class:`FineTuneBase`; reads the estimator's ``cache``,
    ``cache_frozen``, ``augment``, ``engine``, ``train_split``, ``spec_``
    and ``module_``.
    """

    def get_split_datasets(self, X, y=None, **fit_params):
        """Training and validation datasets: frozen-stage outputs when cacheable, else images."""
        dataset = self._dataset(self._decoded_images(X), y, training=True)
        dataset_train, dataset_valid = self._split(dataset, y, **fit_params)
        if self.augment:
            dataset_train = with_transform(
                dataset_train, train_augmentation(self.spec_.preprocessing)
            )
        return dataset_train, dataset_valid

    def _split(self, dataset, y, **fit_params):
        """``train_split`` applied to the training dataset; everything trains without one."""
        if not self.train_split:
            return dataset, None
        return self.train_split(dataset, y, **fit_params)

    def _dataset(self, images: DecodedImages, y, training: bool, view=None) -> Dataset:
        """Frozen-stage outputs of ``images`` when they can be reused, else the images."""
        view = view or EvalView(self.spec_.preprocessing)
        recomputed = training and self.augment
        if self.cache_frozen and not recomputed and self.module_.n_frozen > 0:
            activations = self._frozen_outputs(images, view)
            if activations is not None:
                return ActivationDataset(activations, y)
        if training:
            # Every epoch reads every image: decode them all now, reporting every bad one.
            images.fill()
        return ImageDataset(images, y, view)

    def get_dataset(self, X, y=None):
        """Images as a dataset for prediction (a torch Dataset is used as it is)."""
        if is_dataset(X):
            return X
        return self._dataset(self._decoded_images(X), y, training=False)

    def _decoded_images(self, X) -> DecodedImages:
        """The images of ``X`` as ``decode`` says, each decoded at most once while kept."""
        if isinstance(X, DecodedImages):
            return X
        min_side = decode_min_side(self.spec_.preprocessing, self.decode)
        if isinstance(X, ImageCollection):
            images = X.decoded_at(min_side)
        else:
            images = ImageCollection(X, min_side=min_side)
        return DecodedImages(
            images,
            self.spec_.preprocessing,
            resolve_store(self.cache),
            limit_bytes=FROZEN_CACHE_LIMIT_BYTES,
            max_store_bytes=FROZEN_STORE_MAX_ROW_BYTES,
        )

    def _frozen_store(self):
        if self.cache is None:
            return None
        # Unseeded random weights differ at every build, so their outputs must not be reused.
        if not self.spec_.deterministic:
            return None
        return resolve_store(self.cache)

    def _frozen_model_key(self, view: EvalView) -> str:
        """Identity of the function from an image to its frozen-stage output.

        With the whole backbone frozen and the plain view, it is the
        featurizer's key for the same backbone and precision, so both share entries.
        """
        key = f"{self.spec_.key}|{precision_name(self._compute_dtype())}"
        if self.module_.n_frozen < len(self.stages_):
            key += f"|frozen-stages={self.module_.n_frozen}"
        if view.name != "center":
            key += f"|view={view.name}"
        return key

    def _frozen_outputs(self, images: DecodedImages, view: EvalView) -> torch.Tensor | None:
        """The frozen stages' output for every image (None if too large to hold)."""
        store = self._frozen_store()
        model_key = self._frozen_model_key(view)
        return frozen_outputs(
            self.module_,
            images,
            view,
            store=store,
            model_key=model_key if store is not None else "",
            batch_size=self.batch_size,
            device=self._torch_device(),
            dtype=self._compute_dtype(),
            num_workers=self.get_params_for("iterator_valid").get("num_workers", 0),
            progress=self.progress,
            engine=self._frozen_engine(store),
        )

    def _frozen_engine(self, store):
        """The frozen stages on ONNX Runtime, exported once per process; None for torch."""
        if self.engine == "torch":
            return None
        network = self.module_
        key = self._frozen_model_key(EvalView(self.spec_.preprocessing))
        if not self.spec_.deterministic:
            # Unseeded random weights differ at every build: the export is of these tensors.
            key += f"|{module_fingerprint(network.frozen_stages)}"
        return onnx_engine(
            key,
            lambda: network.forward_frozen,
            self.spec_.preprocessing.input_size,
            self._torch_device(),
            store.directory if isinstance(store, DiskStore) else None,
        )
