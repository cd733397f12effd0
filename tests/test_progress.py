"""Progress bars: drawn while the work runs, gone from the screen when it is done.

tqdm draws only on a terminal or in a notebook, so the bars are forced on here,
as a terminal would have them, and drawn into a buffer read as a screen.
"""

import io
import re

import numpy as np
import pytest
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit
from tqdm.auto import tqdm

from sktransfer import FineTuneClassifier, PretrainedFeaturizer
from sktransfer._engines import torch as torch_engine
from sktransfer._finetune import _callbacks

from .conftest import TINY_PREPROCESSING, make_tiny_backbone


class Screen:
    """Every bar sktransfer makes, as tqdm makes it on a terminal, drawn into one buffer."""

    def __init__(self):
        self.buffer = io.StringIO()
        self.bars = []
        self.drawn = set()  # the labels of the bars drawn

    def make_bar(self, *args, disable=None, **kwargs):
        # disable=None is tqdm's "draw if the output is a terminal"; this one is. Every
        # update is drawn: tqdm's default 0.1 s between redraws skips a fast run's 100%.
        disable = disable is not None and disable
        bar = tqdm(*args, disable=disable, file=self.buffer, mininterval=0, miniters=1, **kwargs)
        self.bars.append(bar)
        if not disable:
            self.drawn.add(kwargs["desc"])
        return bar

    def visible_lines(self):
        """What stays on the screen: the buffer played on a terminal (tqdm's moves only)."""
        rows, row, col = [[]], 0, 0
        for token in re.findall(r"\x1b\[A|.", self.buffer.getvalue(), flags=re.DOTALL):
            if token == "\r":
                col = 0
            elif token == "\n":
                row, col = row + 1, 0
                rows.extend([] for _ in range(row + 1 - len(rows)))
            elif token == "\x1b[A":  # cursor up: tqdm redraws a bar above
                row = max(row - 1, 0)
            else:
                line = rows[row]
                line.extend(" " * (col + 1 - len(line)))
                line[col] = token
                col += 1
        return ["".join(line).rstrip() for line in rows if "".join(line).strip()]


@pytest.fixture
def screen(monkeypatch):
    screen = Screen()
    monkeypatch.setattr(torch_engine, "tqdm", screen.make_bar)
    monkeypatch.setattr(_callbacks, "tqdm", screen.make_bar)
    return screen


def colour_images(n, seed=0):
    """Noisy images whose dominant channel (red or blue) is the label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 100, (n, 40, 40, 3), dtype=np.uint8)
    labels = np.array(["red", "blue"] * (n // 2))
    images[labels == "red", ..., 0] += 150
    images[labels == "blue", ..., 2] += 150
    return images, labels


def make_clf(**params):
    defaults = dict(preprocessing=TINY_PREPROCESSING, batch_size=4, max_epochs=3, cache=None)
    return FineTuneClassifier(make_tiny_backbone(), **{**defaults, **params})


def test_featurizing_bar_is_drawn_then_cleared(screen, small_images):
    featurizer = PretrainedFeaturizer(
        make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, batch_size=4, cache=None
    )
    featurizer.fit_transform(small_images)
    assert screen.drawn == {"featurizing"}
    assert "featurizing: 100%" in screen.buffer.getvalue()
    assert all(bar.leave is False for bar in screen.bars)
    assert screen.visible_lines() == []


@pytest.mark.parametrize(
    "freeze, labels",
    [("backbone", {"frozen stages", "epochs"}), (0, {"epochs", "predicting"})],
)
def test_fine_tuning_bars_are_drawn_then_cleared(screen, freeze, labels):
    images, y = colour_images(8)
    make_clf(freeze=freeze).fit(images, y).predict(images)
    assert screen.drawn == labels
    assert all(bar.leave is False for bar in screen.bars)
    assert screen.visible_lines() == []


def test_epoch_bar_stopped_early_ends_complete(screen):
    # A notebook keeps an unfinished bar on screen, in red, as a failure.
    images, y = colour_images(8)
    stopper = EarlyStopping(patience=1, threshold=1e9)  # no epoch improves enough
    clf = make_clf(freeze="backbone", max_epochs=20, train_split=ValidSplit(2), callbacks=[stopper])
    clf.fit(images, y)
    (epochs,) = [bar for bar in screen.bars if bar.desc.startswith("epochs")]
    assert len(clf.history) < 20
    assert epochs.n == epochs.total == len(clf.history)
    assert screen.visible_lines() == []


def test_progress_false_draws_nothing(screen, small_images):
    images, y = colour_images(8)
    make_clf(progress=False).fit(images, y).predict(images)
    PretrainedFeaturizer(
        make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, cache=None, progress=False
    ).fit_transform(small_images)
    assert screen.buffer.getvalue() == ""
