"""Faults in training: an interrupted fit stays usable; a killed one resumes from a checkpoint."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from skorch.callbacks import Callback, Checkpoint

from .test_finetune import colour_images, make_clf

ROOT = Path(__file__).resolve().parents[1]


class InterruptAt(Callback):
    """Raise KeyboardInterrupt (as Ctrl-C would) at the end of one epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


def test_keyboard_interrupt_leaves_a_usable_estimator():
    X, y = colour_images(6, seed=0)
    clf = make_clf(freeze=0, max_epochs=10, callbacks=[InterruptAt(2)]).fit(X, y)
    assert len(clf.history) == 2
    assert set(clf.predict(X)) <= set(y)
    assert clf.predict_proba(X).shape == (len(X), 3)


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
        time.sleep(0.1)
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
