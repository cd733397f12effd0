"""Batches of preprocessed images, decoded ahead of the network that consumes them.

Decoding a photo costs more than the network's forward pass over it, so
samples are decoded while the network computes: by a pool of threads
(Pillow and torch release the GIL while they decode and resize), or by
DataLoader worker processes when asked. Either way batches come in input
order. A sample that cannot be decoded does not stop the batch: it is
returned as an :class:`~sktransfer._input.images.ImageFailure` beside the good
tensors, so callers can report every bad sample at once and keep the work
already done. When asked, each good sample also comes with the hash of the
very content decoded, so that what a cache stores is keyed by what was
computed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import ImageCollection, InvalidImageError

#: Batches decoded ahead of the one being consumed.
LOOKAHEAD = 1


class PreprocessedImages(Dataset):
    """Dataset of ``(index, tensor or None, failure or None, content)`` over chosen samples.

    ``content`` is ``content_hash`` of what was decoded, or None without ``content_hash``.
    One item (decode and transform of one sample) is the unit of work of a
    decoding thread or worker.
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


def decode_threads() -> int:
    """Threads that decode while the network computes: as many as torch computes with.

    torch's thread count is this process's share of the cores (one per
    physical core, or what ``torch.set_num_threads``, ``OMP_NUM_THREADS`` or
    joblib set); ONNX Runtime follows it too. Decoding one image is
    single-threaded, so that many decoders keep those cores busy, and no
    more: further threads only contend with the network and each other.
    """
    return max(1, torch.get_num_threads())


def decoder_pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` decoding threads, each running torch on one thread.

    A torch resize in a decoder would otherwise start an OpenMP team of torch's
    size beside the network's, and the two fight for the cores (the featurizer
    ran 25% slower on in-memory photos).
    """
    return ThreadPoolExecutor(
        threads,
        thread_name_prefix="sktransfer-decode",
        initializer=torch.set_num_threads,
        initargs=(1,),
    )


def _threaded_batches(dataset: PreprocessedImages, batch_size: int, threads: int, pin_memory):
    """Collated batches of ``dataset`` in order, the next ones decoding in ``threads`` threads."""
    pool = decoder_pool(threads)
    pending = deque()
    submitted = 0
    try:
        for start in range(0, len(dataset), batch_size):
            # Keep this batch and the next LOOKAHEAD in flight while the caller computes.
            stop = min(len(dataset), start + (1 + LOOKAHEAD) * batch_size)
            for position in range(submitted, stop):
                pending.append(pool.submit(dataset.__getitem__, position))
            submitted = max(submitted, stop)
            size = min(batch_size, len(dataset) - start)
            indices, batch, failures, contents = _collate(
                [pending.popleft().result() for _ in range(size)]
            )
            if pin_memory and batch is not None:
                batch = batch.pin_memory()
            yield indices, batch, failures, contents
    finally:
        # Closed early or failed: drop what has not started, wait for what has.
        pool.shutdown(wait=True, cancel_futures=True)


def iterate_batches(
    images: ImageCollection,
    transform: Callable[[np.ndarray], torch.Tensor],
    indices: Sequence[int] | None = None,
    *,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    content_hash: Callable | None = None,
    threads: int | None = None,
) -> Iterator[tuple]:
    """Yield ``(indices, batch, failures)`` in input order.

    ``batch`` stacks the good samples of ``indices`` (None when all failed);
    ``failures`` names the bad ones. With ``content_hash``, batches are
    ``(indices, batch, failures, contents)``: ``contents[j]`` is the hash of
    what was decoded for ``indices[j]`` (a file's bytes are read once, then
    hashed and decoded).

    While the caller works on one batch, the next is decoded: by
    ``num_workers`` DataLoader processes when it is positive, else by
    ``threads`` threads (:func:`decode_threads` when None). ``pin_memory``
    pins batches for a fast copy to a CUDA device.
    """
    dataset = PreprocessedImages(images, transform, indices, content_hash)
    if num_workers > 0:
        batches = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            persistent_workers=False,
        )
    else:
        threads = decode_threads() if threads is None else threads
        batches = _threaded_batches(dataset, batch_size, threads, pin_memory)
    try:
        for indices, batch, failures, contents in batches:
            yield (indices, batch, failures) + ((contents,) if content_hash is not None else ())
    finally:
        # Now, not whenever a traceback holding this frame is collected: stop the threads.
        if num_workers == 0:
            batches.close()
