"""One batched inference loop for every forward pass over images.

The featurizer, the fine-tuner's frozen pass and its prediction all run a
fixed function over batches of preprocessed images. :func:`run_batches`
does it once: batching and decoding (:func:`~sktransfer._input.loading.iterate_batches`),
the engine that computes (a PyTorch module on a device and precision, or an
ONNX Runtime session), a progress bar, and per-sample failures yielded beside
the results so callers keep the work already done.

An :class:`Engine` maps a float32 ``(N, C, H, W)`` CPU batch to float32 CPU
outputs. :class:`TorchEngine` wraps a module; any module or plain callable
passed to :func:`run_batches` is wrapped in one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._input.images import ImageCollection
from .._input.loading import iterate_batches
from .device import autocast


class Engine:
    """A fixed function of image batches; ``device`` says where inputs are best pinned for."""

    device = torch.device("cpu")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchEngine(Engine):
    """Run a PyTorch module (or callable) on a device, in a precision, without autograd.

    Parameters
    ----------
    model : callable
        An ``nn.Module`` or a function of a batch tensor, such as a module's
        bound method; modules are not moved, so put them on ``device`` first.
    device : torch.device
        Where batches are sent (in channels_last layout: faster convolutions
        on CPU and on tensor cores).
    dtype : torch.dtype, default=torch.float32
        Compute precision; bf16/fp16 run under autocast. Outputs are float32.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ):
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            outputs = self.model(batch)
            outputs = outputs.float().cpu()
        # An inference tensor cannot be saved for backward; callers may train on outputs.
        return outputs.clone() if outputs.is_inference() else outputs


def as_engine(
    model,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
):
    """``model`` itself if it is an engine, else a :class:`TorchEngine` around it."""
    if isinstance(model, Engine):
        return model
    return TorchEngine(model, torch.device("cpu") if device is None else device, dtype)


def run_batches(
    model,
    images: ImageCollection,
    indices: Sequence[int] | None = None,
    *,
    transform: Callable[[np.ndarray], torch.Tensor],
    batch_size: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
    progress: str | None = None,
    as_numpy: bool = True,
    content_hash: Callable | None = None,
) -> Iterator[tuple]:
    """Compute ``model`` over ``images[indices]`` in batches.

    Parameters
    ----------
    model : engine, nn.Module or callable
        An engine (:class:`TorchEngine`, :class:`~sktransfer._engines.onnx.OnnxEngine`)
        is used as it is; a module or function is wrapped in a
        :class:`TorchEngine` on ``device`` in ``dtype``.
    images : ImageCollection
    indices : sequence of int, default=None
        Samples to compute, in this order; None means all.
    transform : callable
        Decoded uint8 RGB ``(H, W, 3)`` -> float tensor ``(C, H, W)``.
    batch_size : int
    device : torch.device, default=None
        For a module or function: where it runs (CPU when None).
    dtype : torch.dtype, default=torch.float32
        For a module or function: compute precision.
    num_workers : int, default=0
        DataLoader processes decoding while the model runs; 0 decodes in
        threads of this process (see :func:`~sktransfer._input.loading.iterate_batches`).
    progress : str or None, default=None
        Label of a tqdm progress bar (shown only on a terminal or notebook,
        and cleared when done); None shows none.
    as_numpy : bool, default=True
        Yield outputs as float32 ndarrays; False yields CPU float32 tensors.
    content_hash : callable, default=None
        When given, each batch also yields ``contents``: the hash of what was
        decoded for each entry of ``indices`` (see
        :func:`~sktransfer._input.loading.iterate_batches`).

    Yields
    ------
    indices : ndarray of int64
        The samples of this batch that were computed, in input order.
    outputs : ndarray, tensor or None
        One output row per entry of ``indices``; None when every sample of
        the batch failed to load.
    failures : list of ImageFailure
        The samples of this batch that are not readable images.
    contents : list of str or None
        Only with ``content_hash``.
    """
    indices = list(range(len(images))) if indices is None else list(indices)
    if not indices:
        return
    engine = as_engine(model, device, dtype)
    batches = iterate_batches(
        images,
        transform,
        indices,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=engine.device.type == "cuda",
        content_hash=content_hash,
    )
    n_batches = -(-len(indices) // batch_size)
    bar = tqdm(
        batches,
        total=n_batches,
        disable=progress is None or None,
        desc=progress,
        unit="batch",
        leave=False,  # finished bars clear themselves, in a terminal and in a notebook
    )
    try:
        for batch_indices, batch, failures, *contents in bar:
            if batch is None:
                yield batch_indices, None, failures, *contents
                continue
            outputs = engine(batch)
            yield batch_indices, outputs.numpy() if as_numpy else outputs, failures, *contents
    finally:
        # A failure, or a caller that stops early, stops the decoding now.
        bar.close()
        batches.close()
