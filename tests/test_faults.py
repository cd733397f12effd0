"""Faults in training: an interrupted fit says so; a killed one resumes from a checkpoint."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import Callback, Checkpoint

from sktransfer._finetune import _decoded
from sktransfer._finetune._network import FineTuneNetwork

from .test_finetune import colour_images, make_clf

ROOT = Path(__file__).resolve().parents[1]


#: How a test interrupts: Python's exception, or the signal Ctrl-C sends to the process.
HOW = ["KeyboardInterrupt", "SIGINT"]


def interrupt(how):
    if how == "KeyboardInterrupt":
        raise KeyboardInterrupt
    # Python's handler raises KeyboardInterrupt in the main thread, whichever thread runs this.
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def python_handles_sigint():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT does not raise KeyboardInterrupt in this process")


def interrupt_on_call(function, call, how):
    """``function``, interrupting the process on its ``call``-th call (from any thread)."""
    calls = itertools.count(1)

    def interrupting(*args, **kwargs):
        if next(calls) == call:
            interrupt(how)
        return function(*args, **kwargs)

    return interrupting


class InterruptAt(Callback):
    """Raise KeyboardInterrupt at the end of one epoch: skorch's way for a callback to stop."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


def interrupt_training_step(monkeypatch, step, how):
    """Interrupt the ``step``-th forward pass of the network while it trains."""
    forward = interrupt_on_call(FineTuneNetwork.forward, step, how)
    monkeypatch.setattr(FineTuneNetwork, "forward", forward)


def assert_unfitted(clf, X):
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)
    with pytest.raises(NotFittedError):
        clf.predict(X)


@pytest.mark.parametrize("how", HOW)
def test_interrupted_between_epochs_keeps_them_and_says_how_many(how, monkeypatch):
    X, y = colour_images(6, seed=0)  # 18 images: 3 batches of 8 per epoch
    interrupt_training_step(monkeypatch, 7, how)  # the first batch of epoch 3
    clf = make_clf(freeze=0, max_epochs=10)
    with pytest.warns(UserWarning, match="interrupted after 2 of 10 epochs") as caught:
        clf.fit(X, y)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    monkeypatch.undo()
    assert [epoch["epoch"] for epoch in clf.history if "train_loss" in epoch] == [1, 2]
    assert set(clf.predict(X)) <= set(y)
    assert clf.predict_proba(X).shape == (len(X), 3)


def test_a_callback_that_stops_training_keeps_the_epochs_without_a_warning():
    X, y = colour_images(6, seed=0)
    clf = make_clf(freeze=0, max_epochs=10, callbacks=[InterruptAt(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.fit(X, y)
    assert len(clf.history) == 2
    assert set(clf.predict(X)) <= set(y)


class TestInterruptedBeforeTheFirstEpoch:
    """Nothing was trained: the interrupt propagates and the estimator is left unfitted."""

    @pytest.mark.parametrize("how", HOW)
    def test_while_decoding_the_images(self, how, monkeypatch):
        X, y = colour_images(8, seed=0)
        # freeze=0: no frozen stage, so the fit decodes every image before the first epoch.
        monkeypatch.setattr(_decoded, "kept_image", interrupt_on_call(_decoded.kept_image, 5, how))
        clf = make_clf(freeze=0)
        params = clf.get_params(deep=False)
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, y)
        assert_unfitted(clf, X)
        assert clf.get_params(deep=False) == params
        monkeypatch.undo()
        assert len(clf.fit(X, y).history) == 3  # and it fits as if new

    @pytest.mark.parametrize("how", HOW)
    @pytest.mark.parametrize("freeze", ["backbone", 1])
    def test_while_the_frozen_stages_run(self, how, freeze, monkeypatch):
        X, y = colour_images(8, seed=0)
        forward = interrupt_on_call(FineTuneNetwork.forward_frozen, 2, how)
        monkeypatch.setattr(FineTuneNetwork, "forward_frozen", forward)
        clf = make_clf(freeze=freeze, batch_size=4)
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, y)
        assert_unfitted(clf, X)

    @pytest.mark.parametrize("how", HOW)
    def test_within_the_first_epoch(self, how, monkeypatch):
        X, y = colour_images(8, seed=0)
        interrupt_training_step(monkeypatch, 2, how)
        clf = make_clf(freeze=0)
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, y)
        assert_unfitted(clf, X)

    def test_partial_fit_keeps_the_model_it_had(self, monkeypatch):
        X, y = colour_images(8, seed=0)
        clf = make_clf(freeze=0).fit(X, y)
        before = clf.predict_proba(X)
        monkeypatch.setattr(
            _decoded, "kept_image", interrupt_on_call(_decoded.kept_image, 1, "SIGINT")
        )
        with pytest.raises(KeyboardInterrupt):
            clf.partial_fit(X[::-1].copy(), y[::-1])  # new arrays: decoded afresh
        monkeypatch.undo()
        assert len(clf.history) == 3
        np.testing.assert_array_equal(clf.predict_proba(X), before)


FIT_UNTIL_INTERRUPTED = """
import time
import numpy as np
from sktransfer._finetune._network import FineTuneNetwork
from tests.test_finetune import colour_images, make_clf

forward = FineTuneNetwork.forward_frozen
def slow(self, images):
    print("frozen stages running", flush=True)
    time.sleep(0.5)
    return forward(self, images)
FineTuneNetwork.forward_frozen = slow

X, y = colour_images(100, seed=0)
make_clf(freeze="backbone", batch_size=4).fit(X, y)
print("fit returned", flush=True)
"""


@pytest.mark.slow  # starts another Python process
def test_ctrl_c_from_outside_stops_a_fit_in_its_frozen_pass():
    process = subprocess.Popen(
        [sys.executable, "-c", FIT_UNTIL_INTERRUPTED],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "frozen stages running\n"
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - started < 20  # 74 batches of 0.5 s were left
    assert "fit returned" not in stdout
    assert process.returncode == -signal.SIGINT  # Python's exit on an uncaught KeyboardInterrupt
    assert "KeyboardInterrupt" in stderr


TRAIN_UNTIL_KILLED = """
import sys, time
from skorch.callbacks import Callback, Checkpoint
from tests.test_finetune import colour_images, make_clf

class Slow(Callback):
    def on_epoch_end(self, net, **kwargs):
        time.sleep(0.3)

X, y = colour_images(6, seed=0)
checkpoint = Checkpoint(monitor=None, dirname=sys.argv[1])
make_clf(freeze=0, max_epochs=200, callbacks=[checkpoint, Slow()]).fit(X, y)
"""


@pytest.mark.slow  # starts other Python processes
def test_a_killed_training_resumes_from_its_checkpoint(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", TRAIN_UNTIL_KILLED, str(tmp_path)], cwd=ROOT)
    history = tmp_path / "history.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= 3:
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()

    X, y = colour_images(6, seed=0)
    resumed = make_clf(freeze=0, max_epochs=2, classes=np.unique(y)).initialize()
    resumed.load_params(checkpoint=Checkpoint(monitor=None, dirname=str(tmp_path)))
    done = len(resumed.history)
    assert done >= 3
    first_loss = resumed.history[0, "train_loss"]
    resumed.partial_fit(X, y)  # two more epochs on top of the restored ones
    assert len(resumed.history) == done + 2
    # Training went on from the checkpoint: a restart from scratch would begin near the
    # first epoch's loss, above the last checkpointed one.
    losses = resumed.history[:, "train_loss"]
    assert losses[done] < losses[done - 1] < first_loss
