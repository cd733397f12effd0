"""Batches of preprocessed images, decoded in DataLoader workers when asked.

A sample that cannot be decoded does not stop the batch: it is returned as an
:class:`~sktransfer._images.ImageFailure` beside the good tensors, so callers
can report every bad sample at once and keep the work already done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._images import ImageCollection, ImageFailure, InvalidImageError


class PreprocessedImages(Dataset):
    """Dataset of ``(index, tensor or None, failure or None)`` over chosen samples."""

    def __init__(
        self,
        images: ImageCollection,
        transform: Callable[[np.ndarray], torch.Tensor],
        indices: Sequence[int] | None = None,
    ):
        self.images = images
        self.transform = transform
        self.indices = list(range(len(images))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        try:
            return index, self.transform(self.images.load(index)), None
        except InvalidImageError as exc:
            return index, None, exc.failures[0]


def _collate(samples):
    good = [(index, tensor) for index, tensor, _ in samples if tensor is not None]
    failures = [failure for _, _, failure in samples if failure is not None]
    indices = np.array([index for index, _ in good], dtype=np.int64)
    batch = torch.stack([tensor for _, tensor in good]) if good else None
    return indices, batch, failures


def iterate_batches(
    images: ImageCollection,
    transform: Callable[[np.ndarray], torch.Tensor],
    indices: Sequence[int] | None = None,
    *,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[np.ndarray, torch.Tensor | None, list[ImageFailure]]]:
    """Yield ``(indices, batch, failures)`` in input order.

    ``batch`` stacks the good samples of ``indices`` (None when all failed);
    ``failures`` names the bad ones.
    """
    dataset = PreprocessedImages(images, transform, indices)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    yield from loader
