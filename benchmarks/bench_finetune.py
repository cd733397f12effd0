"""Epoch time of freeze="backbone" with the cached frozen prefix, against plain skorch.

Both train a linear head on EfficientNet-Lite0 features of the same real
photos (patches of scikit-image's brick, grass and gravel textures), in the
same process, with the same optimiser, learning rate and batch size:

- ``FineTuneClassifier(freeze="backbone")`` runs the frozen backbone once over
  the images in ``fit`` and trains the head on the stored features every epoch;
- plain ``skorch.NeuralNetClassifier`` with a ``Freezer`` callback over the
  backbone's parameters, the usual skorch recipe, recomputes the backbone on
  every batch of every epoch. To favour it, its images are decoded and
  preprocessed once up front, so its epochs pay only for the network.

Run: ``python benchmarks/bench_finetune.py [--images 96] [--epochs 5]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import data as skimage_data
from skorch import NeuralNetClassifier
from skorch.callbacks import Freezer
from torch import nn

from sktransfer import get_backbone_spec, load_backbone
from sktransfer._finetune import FineTuneClassifier


def texture_patches(n_images: int, size: int = 64):
    """``n_images`` patches (a third per texture) of real texture photos, and their labels."""
    per_class = n_images // 3
    images, labels = [], []
    for name in ("brick", "grass", "gravel"):
        photo = getattr(skimage_data, name)()
        corners = [
            (t, left)
            for t in range(0, 512 - size + 1, size // 2)
            for left in range(0, 512 - size + 1, size // 2)
        ]
        for top, left in corners[:per_class]:
            images.append(photo[top : top + size, left : left + size])
            labels.append(name)
    return np.stack(images), np.array(labels)


def skorch_baseline(spec, n_classes: int, params: dict) -> NeuralNetClassifier:
    backbone = load_backbone(spec).to(memory_format=torch.channels_last)
    module = nn.Sequential(backbone, nn.Dropout(0.2), nn.Linear(spec.feature_dim, n_classes))
    return NeuralNetClassifier(
        module,
        criterion=nn.CrossEntropyLoss,
        callbacks=[Freezer("0.*")],
        iterator_train__shuffle=True,
        **params,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    torch.manual_seed(0)
    images, labels = texture_patches(args.images)
    spec = get_backbone_spec("efficientnet_lite0")
    params = dict(
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_split=None,
        verbose=0,
        device="cpu",
    )
    print(
        f"{len(images)} texture patches {images.shape[1:]}, {spec.name} at "
        f"{spec.preprocessing.input_size} px, {args.epochs} epochs, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads\n"
    )

    # Warm up both paths (imports, weight loading, kernel selection) outside the timings.
    warm_up = FineTuneClassifier(freeze="backbone", **{**params, "max_epochs": 1})
    warm_up.fit(images[::16], labels[::16])

    start = time.perf_counter()
    cached = FineTuneClassifier(freeze="backbone", **params).fit(images, labels)
    cached_fit = time.perf_counter() - start
    cached_epochs = np.array(cached.history[:, "dur"])

    pixels = torch.stack([spec.preprocessing(np.repeat(p[..., None], 3, axis=-1)) for p in images])
    targets = np.searchsorted(np.unique(labels), labels)
    baseline = skorch_baseline(spec, 3, params)
    start = time.perf_counter()
    baseline.fit(pixels, targets)
    baseline_fit = time.perf_counter() - start
    baseline_epochs = np.array(baseline.history[:, "dur"])

    cached_epoch, baseline_epoch = np.median(cached_epochs), np.median(baseline_epochs)
    prefix_pass = cached_fit - cached_epochs.sum()
    print(f"{'':36}{'epoch (median)':>16}{'fit, all epochs':>18}")
    print(
        f"{'FineTuneClassifier, cached prefix':36}{cached_epoch * 1e3:13.1f} ms"
        f"{cached_fit:16.2f} s   (one-time frozen pass and setup {prefix_pass:.2f} s)"
    )
    print(
        f"{'skorch + Freezer, backbone per batch':36}{baseline_epoch * 1e3:13.1f} ms"
        f"{baseline_fit:16.2f} s   (images preprocessed up front, not timed)"
    )
    print(f"\nepoch-time ratio (skorch + Freezer / cached): {baseline_epoch / cached_epoch:.0f}x")
    print(f"fit-time ratio for {args.epochs} epochs: {baseline_fit / cached_fit:.1f}x")


if __name__ == "__main__":
    main()
