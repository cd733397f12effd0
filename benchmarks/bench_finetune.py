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

Second part, a search: ``GridSearchCV`` over ``freeze`` ("backbone", -1)
and ``lr`` (2 values), ``cv=3``, the search the docs recommend. It counts the
images through the backbone's first stage (a forward hook) and times the
search, against the same search over plain skorch with ``Freezer`` callbacks,
which recomputes the frozen stages in every batch, fold and setting.

Third part, precision: fine-tune epochs per second at 224 px (``--precision-images``
real photos, batch 16) in fp32 and in what ``precision="auto"`` resolves to
here, at ``freeze=-3`` and ``freeze=0``, and the frozen pass (featurizing) in
images per second in both; with the CPU flags read. When "auto" is fp32 here
and the CPU computes bf16 natively, bf16 is timed too, as the candidate "auto"
did not take. Precisions alternate within each of ``--repeats`` rounds
(medians; the order alternates too), so the load other jobs put on the
machine falls on all alike; the load average is printed after each.
``--only precision`` runs this part alone.

Run: ``python benchmarks/bench_finetune.py [--images 96] [--epochs 5]
[--search-images 48] [--search-size 128] [--precision-images 64] [--repeats 3]
[--only {epochs,search,precision}]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from skimage import data as skimage_data
from skorch import NeuralNetClassifier
from skorch.callbacks import Freezer
from torch import nn

from sktransfer import PretrainedFeaturizer, get_backbone_spec, load_backbone
from sktransfer._engines.device import (
    cpu_flags,
    cpu_native_dtypes,
    precision_name,
    resolve_precision,
)
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


class FirstStageCount:
    """A forward pre-hook counting the images through a module, in every copy of it."""

    images = 0

    def __call__(self, module, args):
        type(self).images += len(args[0])


def search_comparison(n_images: int, size: int, epochs: int, batch_size: int):
    """GridSearchCV over freeze x lr: FineTuneClassifier against skorch + Freezer."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from sktransfer import Preprocessing

    images, labels = texture_patches(n_images)
    preprocessing = Preprocessing(
        input_size=size, resize_size=size, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    stages = load_backbone("efficientnet_lite0").stages
    stages[0].register_forward_pre_hook(FirstStageCount())
    n_stages = len(stages)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    common = dict(
        optimizer=torch.optim.AdamW, max_epochs=epochs, batch_size=batch_size, device="cpu"
    )
    print(
        f"\nGridSearchCV, freeze x lr (2 x 2), cv=3, on {len(images)} texture patches at "
        f"{size} px, {epochs} epochs\n"
    )

    FirstStageCount.images = 0
    start = time.perf_counter()
    ours = GridSearchCV(
        FineTuneClassifier(
            stages, preprocessing=preprocessing, random_state=0, progress=False, **common
        ),
        {"freeze": ["backbone", -1], "lr": [1e-2, 1e-3]},
        cv=cv,
    ).fit(images, labels)
    ours_time, ours_count = time.perf_counter() - start, FirstStageCount.images

    pixels = torch.stack([preprocessing(np.repeat(p[..., None], 3, axis=-1)) for p in images])
    targets = np.searchsorted(np.unique(labels), labels)
    module = nn.Sequential(
        stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(1280, 3),
    ).to(memory_format=torch.channels_last)
    all_but = {k: [f"0.{i}.*" for i in range(n_stages - k)] for k in (0, 1)}
    baseline = NeuralNetClassifier(
        module,
        criterion=nn.CrossEntropyLoss,
        iterator_train__shuffle=True,
        train_split=None,
        verbose=0,
        **common,
    )
    FirstStageCount.images = 0
    start = time.perf_counter()
    theirs = GridSearchCV(
        baseline,
        {
            "callbacks": [[Freezer(all_but[0])], [Freezer(all_but[1])]],
            "lr": [1e-2, 1e-3],
        },
        cv=cv,
    ).fit(pixels, targets)
    theirs_time, theirs_count = time.perf_counter() - start, FirstStageCount.images

    print(f"{'':40}{'first-stage images':>20}{'per image':>11}{'wall s':>9}")
    for name, count, seconds in (
        ("FineTuneClassifier (feature store)", ours_count, ours_time),
        ("skorch + Freezer (recomputes)", theirs_count, theirs_time),
    ):
        print(f"{name:40}{count:20d}{count / len(images):11.1f}{seconds:9.1f}")
    print(
        f"\nratios (skorch + Freezer / FineTuneClassifier): forwards "
        f"{theirs_count / ours_count:.1f}x, wall time {theirs_time / ours_time:.1f}x "
        f"(skorch's images preprocessed up front, not timed)"
    )
    print(
        f"best: ours {ours.best_params_} {ours.best_score_:.3f}; skorch lr="
        f"{theirs.best_params_['lr']} {theirs.best_score_:.3f}"
    )


def precision_comparison(n_images: int, repeats: int, batch_size: int = 16):
    """Epochs/s of fine-tuning and img/s of the frozen pass, fp32 against "auto" (and bf16)."""
    from _common import PHOTOS, real_photos

    images = np.stack(real_photos(n_images))
    labels = np.array([PHOTOS[i % len(PHOTOS)] for i in range(n_images)])
    auto = precision_name(resolve_precision("auto", torch.device("cpu")))
    precisions = ["fp32"] if auto == "fp32" else ["fp32", auto]
    if auto == "fp32" and torch.bfloat16 in cpu_native_dtypes():
        precisions.append("bf16")
    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "avx2"})
    print(
        f"\nPrecision: {n_images} photos at 224 px, batch {batch_size}, {repeats} rounds "
        f"(medians), {torch.get_num_threads()} threads\nCPU flags read: {flags}; "
        f'precision="auto" resolves to {auto} here\n'
    )
    common = dict(batch_size=batch_size, cache=None, progress=False, device="cpu")
    epochs = {(freeze, p): [] for freeze in (-3, 0) for p in precisions}
    frozen = {p: [] for p in precisions}
    loads = []
    for round_ in range(repeats):
        # Alternate the order too, so neither precision always runs first in a round.
        for precision in precisions[:: 1 if round_ % 2 == 0 else -1]:
            featurizer = PretrainedFeaturizer(precision=precision, **common).fit(images[:2])
            start = time.perf_counter()
            featurizer.transform(images)
            frozen[precision].append(n_images / (time.perf_counter() - start))
            for freeze in (-3, 0):
                clf = FineTuneClassifier(
                    freeze=freeze,
                    precision=precision,
                    max_epochs=1,
                    train_split=None,
                    random_state=0,
                    **common,
                ).fit(images, labels)
                # An epoch is the training alone: with freeze=-3 the frozen stages ran before it.
                epochs[freeze, precision].append(1 / clf.history[-1, "dur"])
            loads.append(os.getloadavg()[0])
            print(
                f"round {round_ + 1} {precision}: epochs/s "
                f"{epochs[-3, precision][-1]:.3f} (freeze=-3), "
                f"{epochs[0, precision][-1]:.3f} (freeze=0); frozen pass "
                f"{frozen[precision][-1]:.1f} img/s; load average {loads[-1]:.1f}",
                flush=True,
            )
    print()
    headers = [f"{p} (auto)" if p == auto else p for p in precisions]
    print(f"{'':32}" + "".join(f"{header:>12}" for header in headers) + f"{'ratio':>10}")
    rows = [
        (f"fine-tune epochs/s, freeze={freeze}", {p: epochs[freeze, p] for p in precisions})
        for freeze in (-3, 0)
    ]
    rows.append(("frozen pass img/s", frozen))
    for name, values in rows:
        medians = {p: statistics.median(v) for p, v in values.items()}
        ratio = "" if len(precisions) == 1 else f"{medians[precisions[-1]] / medians['fp32']:9.2f}x"
        cells = "".join(f"{medians[p]:12.3f}" for p in precisions)
        print(f"{name:32}{cells}{ratio:>10}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--search-images", type=int, default=48)
    parser.add_argument("--search-size", type=int, default=128)
    parser.add_argument("--precision-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["epochs", "search", "precision"])
    args = parser.parse_args()
    if args.only == "search":
        search_comparison(args.search_images, args.search_size, args.epochs, args.batch_size)
        return
    if args.only == "precision":
        precision_comparison(args.precision_images, args.repeats)
        return

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
    if args.only == "epochs":
        return
    search_comparison(args.search_images, args.search_size, args.epochs, args.batch_size)
    precision_comparison(args.precision_images, args.repeats)


if __name__ == "__main__":
    main()
