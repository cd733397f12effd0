"""Decoding ahead in threads: input order, failures named, overlap with the network, no leaks.

Concurrency is checked with events, not timings: a sample or a batch waits
for another to reach a point that only concurrent decoding can reach, with
a timeout that is hit only when that decoding is not concurrent.
"""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from sktransfer import PretrainedFeaturizer
from sktransfer._engines.torch import Engine, TorchEngine, run_batches
from sktransfer._input.images import ImageCollection
from sktransfer._input.loading import decode_threads, iterate_batches

from .conftest import TINY_PREPROCESSING, make_tiny_backbone

WAIT_S = 10  # only reached when decoding does not run concurrently


def numbered_images(n):
    """Images whose pixels are their index, so a transform knows which sample it has."""
    return np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)


def as_tensor(image):
    return torch.from_numpy(image[:1, :1, 0].astype(np.float32).ravel())


def decoders():
    return [t for t in threading.enumerate() if t.name.startswith("sktransfer-decode")]


def test_batches_keep_input_order_when_samples_finish_out_of_order():
    finished = []
    second_done = threading.Event()

    def transform(image):
        index = int(image[0, 0, 0])
        if index == 0:
            # The first sample finishes only after the second: a later sample overtakes it.
            assert second_done.wait(WAIT_S), "samples 0 and 1 were not decoded concurrently"
        finished.append(index)
        if index == 1:
            second_done.set()
        return as_tensor(image)

    chosen = [0, 1, 2, 3, 4, 5, 6]
    batches = list(
        iterate_batches(
            ImageCollection(numbered_images(7)), transform, chosen, batch_size=3, threads=3
        )
    )
    assert finished.index(1) < finished.index(0)
    assert [indices.tolist() for indices, _, _ in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    values = torch.cat([batch for _, batch, _ in batches]).ravel().tolist()
    assert values == chosen


def test_failures_are_named_in_their_batch(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(numbered_images(3)[2]).save(good)
    missing = tmp_path / "missing.png"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    images = ImageCollection([str(good), str(missing), str(good), str(broken), str(good)])
    batches = list(iterate_batches(images, as_tensor, batch_size=2, threads=2))
    assert [indices.tolist() for indices, _, _ in batches] == [[0], [2], [4]]
    failures = [failure for _, _, bad in batches for failure in bad]
    assert [(failure.index, failure.path) for failure in failures] == [
        (1, str(missing)),
        (3, str(broken)),
    ]
    assert "does not exist" in str(failures[0]) and "not an image" in str(failures[1])


def test_the_next_batch_decodes_while_the_network_computes():
    next_batch_started = threading.Event()

    def transform(image):
        if int(image[0, 0, 0]) == 2:
            next_batch_started.set()
        return as_tensor(image)

    class WaitingForDecoding(Engine):
        overlapped = []

        def __call__(self, batch):
            if not self.overlapped:
                # Batch [0, 1] is being computed: has sample 2 (next batch) begun decoding?
                self.overlapped.append(next_batch_started.wait(WAIT_S))
            return batch

    images = ImageCollection(numbered_images(4))
    list(run_batches(WaitingForDecoding(), images, transform=transform, batch_size=2))
    assert WaitingForDecoding.overlapped == [True]


def test_no_more_threads_decode_at_once_than_asked():
    lock, running, most, threads_seen = threading.Lock(), [0], [0], set()
    release = threading.Event()

    def transform(image):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            threads_seen.add(threading.get_ident())
            if most[0] == 2:
                release.set()
        # Hold each sample until two run at once, so a third thread would be seen.
        release.wait(WAIT_S)
        with lock:
            running[0] -= 1
        return as_tensor(image)

    images = ImageCollection(numbered_images(12))
    batches = list(iterate_batches(images, transform, batch_size=4, threads=2))
    assert sum(len(indices) for indices, _, _ in batches) == 12
    assert most[0] == 2 and len(threads_seen) == 2
    assert decoders() == []


def test_decoding_threads_follow_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert decode_threads() == 1
        seen = set()

        def transform(image):
            seen.add(threading.get_ident())
            return as_tensor(image)

        list(iterate_batches(ImageCollection(numbered_images(8)), transform, batch_size=2))
        assert len(seen) == 1 and threading.get_ident() not in seen
    finally:
        torch.set_num_threads(before)


def test_closing_early_stops_the_threads_and_skips_what_is_left():
    decoded = []

    def transform(image):
        decoded.append(int(image[0, 0, 0]))
        return as_tensor(image)

    class Identity(Engine):
        def __call__(self, batch):
            return batch

    images = ImageCollection(numbered_images(40))
    batches = run_batches(Identity(), images, transform=transform, batch_size=2)
    next(batches)
    assert decoders()
    batches.close()  # as when a featurize call is interrupted
    assert decoders() == []
    # Only this batch and the next one in flight were decoded, not all forty.
    assert len(decoded) <= 4 + decode_threads()


def test_an_error_in_the_network_stops_the_threads():
    class Failing(Engine):
        def __call__(self, batch):
            raise RuntimeError("out of memory")

    images = ImageCollection(numbered_images(20))
    with pytest.raises(RuntimeError, match="out of memory") as caught:
        list(run_batches(Failing(), images, transform=as_tensor, batch_size=2))
    # Even while the traceback (and the generator frames it holds) is alive.
    assert caught.value is not None and decoders() == []


def test_an_error_in_a_transform_reaches_the_caller():
    def transform(image):
        if int(image[0, 0, 0]) == 3:
            raise ZeroDivisionError("bug in a transform")
        return as_tensor(image)

    batches = iterate_batches(ImageCollection(numbered_images(8)), transform, batch_size=2)
    assert next(batches)[0].tolist() == [0, 1]
    with pytest.raises(ZeroDivisionError, match="bug in a transform"):
        next(batches)
    assert decoders() == []


def test_an_interrupted_featurize_call_leaves_no_threads(small_images, monkeypatch):
    featurizer = PretrainedFeaturizer(
        make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, progress=False, cache=None
    ).fit(small_images[:1])
    calls = []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    original = TorchEngine.__call__
    monkeypatch.setattr(TorchEngine, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        featurizer.set_params(batch_size=2).transform(small_images)
    assert decoders() == []


def test_a_failure_while_storing_features_leaves_no_threads(small_images, monkeypatch):
    # The exception's traceback is kept, as Jupyter keeps the last one: the generator
    # must not wait for the garbage collector to stop the decoding threads.
    featurizer = PretrainedFeaturizer(
        make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, progress=False, cache="memory"
    ).fit(small_images[:1])

    def full_disk(*args):
        raise OSError("no space left on device")

    monkeypatch.setattr("sktransfer._featurizer.save_to_store", full_disk)
    with pytest.raises(OSError, match="no space") as kept:
        featurizer.set_params(batch_size=2).transform(small_images)
    assert kept.traceback  # held while we look
    assert decoders() == []


def test_decoders_run_torch_on_one_thread_each():
    # The eval transform resizes with torch; in a decoder it must not start an OpenMP
    # team of torch's size beside the network's.
    seen = []

    def transform(image):
        seen.append(torch.get_num_threads())
        return as_tensor(image)

    list(iterate_batches(ImageCollection(numbered_images(4)), transform, batch_size=2, threads=2))
    assert seen == [1, 1, 1, 1]
