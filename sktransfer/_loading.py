"""Batches of preprocessed images, decoded in DataLoader workers when asked.

A sample that cannot be decoded does not stop the batch: it is returned as an
:class:`~sktransfer._images.ImageFailure` beside the good tensors, so callers
can report every bad sample at once and keep the work already done. When asked,
each good sample also comes with the hash of the very content decoded, so that
what a cache stores is keyed by what was computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._images import ImageCollection, InvalidImageError


class PreprocessedImages(Dataset):
    """Dataset of ``(index, tensor or None, failure or None, content)`` over chosen samples.

    ``content`` is ``content_hash`` of what was decoded, or None without ``content_hash``.
    """

    def __init__(
        self,
        images: ImageCollection,
        transform: Callable[[np.ndarray], torch.Tensor],
        indices: Sequence[int] | None = None,
        content_hash: Callable | None = None,
    ):
        self.images = images
        self.transform = transform
        self.indices = list(range(len(images))) if indices is None else list(indices)
        self.content_hash = content_hash

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        try:
            image, content = self.images.load_with_content(index, self.content_hash)
        except InvalidImageError as exc:
            return index, None, exc.failures[0], None
        return index, self.transform(image), None, content


def _collate(samples):
    good = [(index, tensor, content) for index, tensor, _, content in samples if tensor is not None]
    failures = [failure for _, _, failure, _ in samples if failure is not None]
    indices = np.array([index for index, _, _ in good], dtype=np.int64)
    batch = torch.stack([tensor for _, tensor, _ in good]) if good else None
    return indices, batch, failures, [content for _, _, content in good]


def iterate_batches(
    images: ImageCollection,
    transform: Callable[[np.ndarray], torch.Tensor],
    indices: Sequence[int] | None = None,
    *,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    content_hash: Callable | None = None,
) -> Iterator[tuple]:
    """Yield ``(indices, batch, failures)`` in input order.

    ``batch`` stacks the good samples of ``indices`` (None when all failed);
    ``failures`` names the bad ones. With ``content_hash``, batches are
    ``(indices, batch, failures, contents)``: ``contents[j]`` is the hash of
    what was decoded for ``indices[j]`` (a file's bytes are read once, then
    hashed and decoded).
    """
    dataset = PreprocessedImages(images, transform, indices, content_hash)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    for indices, batch, failures, contents in loader:
        yield (indices, batch, failures) + ((contents,) if content_hash is not None else ())
