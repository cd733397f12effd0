"""Each image of a fit decoded once, kept at the size its views need, and shared through the store.

A fit that trains on images (``augment``, or no frozen stage) reads every
image in every epoch, and prediction reads it once per test-time view; a
phone photo takes 15-140 ms to decode, and the network sees 224 px of it.
:class:`DecodedImages` decodes each sample at most once per fit or
``predict`` and keeps it as uint8, cut and resized exactly as the evaluation
transform does before it crops (:func:`kept_image`): the centre, flipped and
ten-crop views of the kept image are those of the file, bit for bit, and
training's random resized crops are drawn from it. Encoded samples (files,
``bytes``), the ones that cost a decode, are stored in the feature store
under their content and the decode's identity, so the folds of a search and
later fits reuse them. The fine-tuner bounds them as it bounds the frozen
stages' outputs: a kept image larger than ``FROZEN_STORE_MAX_ROW_BYTES`` is
not stored, and a fit holds at most ``FROZEN_CACHE_LIMIT_BYTES`` of them (the
rest are decoded on every read, with a warning).
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import torch

from .._input.images import ImageCollection, InvalidImageError
from .._input.loading import decode_threads, decoder_pool
from .._input.transforms import centre_of_elongated
from .._store.keys import content_hash, feature_key

# Version of how kept images are made, in their keys: bump it when that changes.
_KEPT_FORMAT = "kept-image-1"
# Kept images go to the store in groups this large: an interrupted fit keeps what it decoded.
_STORE_GROUP = 16


def kept_image(rgb: np.ndarray, preprocessing) -> np.ndarray:
    """The image the evaluation transform crops from: cut to 4:1, shorter side ``resize_size``.

    Images whose shorter side is at most ``resize_size`` are kept as they
    are (never enlarged), so their views are computed from the decoded
    pixels exactly as without keeping. With ``crop_mode="squash"`` images
    are only cut: squashing a shrunk image is not squashing the decoded one
    (features at cosine 0.99-0.998 on phone photos), so they are kept as
    decoded.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3), dtype uint8
    preprocessing : Preprocessing

    Returns
    -------
    image : ndarray of shape (h, w, 3), dtype uint8
    """
    import torchvision.transforms.v2.functional as F

    rgb = centre_of_elongated(rgb)
    if min(rgb.shape[:2]) <= preprocessing.resize_size or preprocessing.crop_mode == "squash":
        return np.array(rgb)  # a copy: the decoded array may be the caller's own
    # A copy: decoders return read-only arrays, which torch warns about.
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
    image = F.resize(
        image,
        [preprocessing.resize_size],
        interpolation=F.InterpolationMode(preprocessing.interpolation),
        antialias=True,
    )
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def kept_image_key(preprocessing) -> str:
    """Identity of the function from a decoded sample to its kept image.

    How the sample was decoded is part of its content
    (:meth:`~sktransfer._input.images.ImageCollection.content`).
    """
    p = preprocessing
    return f"{_KEPT_FORMAT}|resize={p.resize_size}|{p.interpolation}|{p.crop_mode}"


class DecodedImages:
    """The samples of an :class:`ImageCollection`, each decoded at most once and kept.

    Reads like the collection (``len``, indexing, ``path``, ``load``,
    ``load_with_content``), so datasets and batch loaders take it as they
    are; ``load`` returns the kept image (a copy, so callers may change it).

    Parameters
    ----------
    images : ImageCollection
        Decoded as it says (``min_side``); how each sample decodes is part
        of its store keys.
    preprocessing : Preprocessing
        Sizes the kept images (see :func:`kept_image`).
    store : MemoryStore, DiskStore or None, default=None
        Where kept images of encoded samples are looked up and stored.
    limit_bytes : int, default=2**31
        Most bytes of kept images held; beyond it, the rest are decoded
        whenever they are read, with a warning.
    max_store_bytes : int, default=2**19
        Kept images larger than this are not stored.
    """

    def __init__(
        self,
        images: ImageCollection,
        preprocessing,
        store=None,
        *,
        limit_bytes: int = 2**31,
        max_store_bytes: int = 2**19,
    ):
        self.images = images
        self.preprocessing = preprocessing
        self.store = store
        self.limit_bytes = limit_bytes
        self.max_store_bytes = max_store_bytes
        self._model_key = kept_image_key(preprocessing)
        self._kept: dict[int, np.ndarray] = {}
        self._contents: dict[int, str | None] = {}
        self._nbytes = 0
        self._over_limit = False
        self._lock = threading.Lock()

    def __getstate__(self):
        # DataLoader workers read what is kept; only this process writes the store.
        return {**self.__dict__, "store": None, "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index]

    def path(self, index: int) -> str | None:
        return self.images.path(index)

    def content(self, index: int) -> str | None:
        """:meth:`ImageCollection.content` of sample ``index``, computed once."""
        if index not in self._contents:
            self._contents[index] = self.images.content(index, content_hash)
        return self._contents[index]

    def load(self, index: int) -> np.ndarray:
        """The kept image of sample ``index`` (decoded now if it is not kept yet)."""
        return self.load_with_content(index)[0]

    def load_with_content(self, index: int, content_hash=None) -> tuple[np.ndarray, str | None]:
        """The kept image of sample ``index`` and, when ``content_hash`` is given, its content.

        Raises
        ------
        InvalidImageError
            Naming the sample, its path and what was wrong.
        """
        image = self._kept.get(index)
        if image is None and self._storable(index):
            image = self._from_store([index]).get(index)
        if image is None:
            image = self._decode(index)
            if self._storable(index):
                self._put([index], [image])
        return image.copy(), None if content_hash is None else self.content(index)

    def fill(self, indices=None, threads: int | None = None) -> None:
        """Keep the images of ``indices`` (all when None): from the store, else decoded.

        Every decodable sample is kept (and stored) before the unreadable ones
        are reported. Once the kept images reach ``limit_bytes``, the rest
        are left to be decoded when read.

        Parameters
        ----------
        indices : iterable of int, default=None
        threads : int, default=None
            Threads that decode (Pillow and torch release the GIL while they
            decode and resize); None: :func:`~sktransfer._input.loading.decode_threads`.

        Raises
        ------
        InvalidImageError
            Naming every sample that could not be decoded.
        """
        indices = range(len(self)) if indices is None else indices
        missing = [i for i in indices if i not in self._kept]
        found = self._from_store([i for i in missing if self._storable(i)])
        todo = [i for i in missing if i not in found]
        threads = decode_threads() if threads is None else threads
        failures, decoded = [], []
        with decoder_pool(threads) as pool:
            for index, (image, failure) in zip(todo, pool.map(self._try_decode, todo)):
                if failure is not None:
                    failures.extend(failure.failures)
                elif image is not None:
                    decoded.append((index, image))
                if len(decoded) == _STORE_GROUP:
                    self._put(*zip(*decoded))
                    decoded = []
        if decoded:
            self._put(*zip(*decoded))
        if failures:
            raise InvalidImageError(failures)

    def _try_decode(self, index: int):
        """``(kept image, None)`` or ``(None, error)``; ``(None, None)`` past the limit."""
        if self._over_limit:
            return None, None
        try:
            return self._decode(index), None
        except InvalidImageError as exc:
            return None, exc

    def _storable(self, index: int) -> bool:
        item = self.images[index]
        return self.store is not None and isinstance(item, str | os.PathLike | bytes)

    def _from_store(self, indices) -> dict[int, np.ndarray]:
        """Kept images of ``indices`` found in the store (and now kept here)."""
        keys = {i: self._key(self.content(i)) for i in indices if self.content(i) is not None}
        if not keys:
            return {}
        found = {}
        for index, image in zip(keys, self.store.get_arrays(keys.values())):
            if image is not None and image.dtype == np.uint8 and image.ndim == 3:
                found[index] = image
                self._keep(index, image)
        return found

    def _decode(self, index: int) -> np.ndarray:
        """Decode sample ``index`` afresh and keep it; with a store, hash what was decoded."""
        if self.store is None:
            rgb = self.images.load(index)
        else:
            rgb, self._contents[index] = self.images.load_with_content(index, content_hash)
        image = kept_image(rgb, self.preprocessing)
        image.flags.writeable = False
        self._keep(index, image)
        return image

    def _keep(self, index: int, image: np.ndarray) -> None:
        limit = self.limit_bytes
        with self._lock:
            if index in self._kept:
                return
            if self._nbytes + image.nbytes > limit:
                if not self._over_limit:
                    self._over_limit = True
                    warnings.warn(
                        f"the decoded images of these {len(self)} samples take more than "
                        f"FROZEN_CACHE_LIMIT_BYTES ({limit / 2**30:.2g} GiB); the rest are "
                        "decoded again whenever they are read (fit on fewer images at a time)",
                        UserWarning,
                        stacklevel=4,
                    )
                return
            self._kept[index] = image
            self._nbytes += image.nbytes

    def _put(self, indices, images) -> None:
        """Store the kept images of encoded samples, under the content decoded."""
        limit = self.max_store_bytes
        entries = [
            (self._key(self._contents[i]), image)
            for i, image in zip(indices, images)
            if self._contents.get(i) is not None and image.nbytes <= limit and self._storable(i)
        ]
        if entries:
            self.store.put_arrays(*zip(*entries))

    def _key(self, content: str) -> str:
        return feature_key(self._model_key, content)
