"""Callbacks the fine-tuners add to skorch's defaults."""

from __future__ import annotations

from skorch.callbacks import Callback
from tqdm.auto import tqdm


class EpochProgress(Callback):
    """A progress bar over the epochs of a fit, with the last training loss.

    Shown when the net's ``progress`` is True and the output is a terminal or
    a notebook (tqdm's own check), so it stays silent in logs and in the
    worker processes of a parallel search; it clears itself when done.
    """

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.bar_ = tqdm(
            total=net.max_epochs + net._warmup_epochs_pending(),
            desc="epochs",
            unit="epoch",
            leave=False,
            disable=not net.progress or None,
        )

    def on_epoch_end(self, net, **kwargs):
        self.bar_.update()
        self.bar_.set_postfix(train_loss=f"{net.history[-1, 'train_loss']:.4f}", refresh=False)

    def on_train_end(self, net, X=None, y=None, **kwargs):
        # Stopped early (EarlyStopping) is done too: a notebook keeps an unfinished bar, in red.
        self.bar_.total = self.bar_.n
        self.bar_.close()
        self.bar_ = None  # a fitted net pickles without a terminal handle
