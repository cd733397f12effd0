"""bf16 against fp32 on real photos: feature cosine, 5-fold linear probe, fine-tuned accuracy.

What ``precision="auto"`` is decided by on CPUs that compute bf16 natively
(sktransfer/_engines/device.py, ``AUTO_BF16_ON_NATIVE_CPU``). The sets:
scikit-image's texture patches (brick, grass, gravel), its faces and
non-faces (``lfw_subset``) and, when Debian's ``dataset-fashion-mnist`` is
installed, ``--fashion`` images of Fashion-MNIST's test split (a stratified
sample). All on EfficientNet-Lite0 at its own 224 px preprocessing, no cache.

- ``features``: each set featurized in fp32 and in bf16; the median and the
  lowest cosine between each image's two feature vectors, and the accuracy of
  ``LogisticRegression`` on each, over the same 5 stratified folds;
- ``finetune``: ``FineTuneClassifier(freeze=-3)`` fitted in each precision on
  the same stratified training split (``--test-fraction`` held out), seed 0,
  and its held-out accuracy; images at ``--finetune-size`` px (default 224;
  64, as ``quality_finetune.py`` does, is 12 times cheaper).

Run: ``python benchmarks/quality_precision.py [--parts features finetune]
[--sets textures faces Fashion-MNIST]
[--fashion 1000] [--epochs 5] [--test-fraction 0.5] [--finetune-size 224]
[--precision bf16]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from quality_finetune import FASHION, load_data
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split

from sktransfer import FineTuneClassifier, Preprocessing, PretrainedFeaturizer
from sktransfer._engines.device import cpu_flags, cpu_native_dtypes
from sktransfer.datasets import load_faces, load_textures


def real_sets(n_fashion: int):
    """(name, images, labels) for each set available here."""
    sets = [("textures", *load_textures()), ("faces", *load_faces())]
    if FASHION.exists() and n_fashion:
        _, images, labels = load_data()
        images, _, labels, _ = train_test_split(
            images, labels, train_size=n_fashion, stratify=labels, random_state=0
        )
        sets.append(("Fashion-MNIST", images, labels))
    return sets


def fine_tune_accuracy(sets, low: str, epochs: int, test_fraction: float, batch_size: int, size):
    """Held-out accuracy of the same fine-tune in fp32 and in ``low``, per set."""
    preprocessing = None  # the backbone's own, 224 px
    if size != 224:
        preprocessing = Preprocessing(
            input_size=size, resize_size=size, mean=(0.5,) * 3, std=(0.5,) * 3
        )
    header = f"{'set':16}{'train':>7}{'test':>6}{'fp32':>9}{low:>9}{'diff':>8}"
    print(f"{header}{'fp32 s':>8}{f'{low} s':>8}", flush=True)
    for name, images, labels in sets:
        X, X_test, y, y_test = train_test_split(
            images, labels, test_size=test_fraction, stratify=labels, random_state=0
        )
        accuracy, seconds = {}, {}
        for precision in ("fp32", low):
            clf = FineTuneClassifier(
                freeze=-3,
                preprocessing=preprocessing,
                precision=precision,
                max_epochs=epochs,
                lr=3e-3,
                batch_size=batch_size,
                random_state=0,
                cache=None,
                progress=False,
            )
            start = time.perf_counter()
            accuracy[precision] = clf.fit(X, y).score(X_test, y_test)
            seconds[precision] = time.perf_counter() - start
        diff = 100 * (accuracy[low] - accuracy["fp32"])
        print(
            f"{name:16}{len(X):7d}{len(X_test):6d}{accuracy['fp32']:9.4f}{accuracy[low]:9.4f}"
            f"{diff:+7.2f}p{seconds['fp32']:8.0f}{seconds[low]:8.0f}",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["features", "finetune"])
    parser.add_argument("--sets", nargs="+", default=["textures", "faces", "Fashion-MNIST"])
    parser.add_argument("--fashion", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--test-fraction", type=float, default=0.5)
    parser.add_argument("--finetune-size", type=int, default=224)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})
    native = sorted(str(dtype).removeprefix("torch.") for dtype in cpu_native_dtypes())
    print(f"CPU flags read: {flags or 'none'}; native: {native or 'none'}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}\n")
    low = args.precision
    sets = [entry for entry in real_sets(args.fashion) if entry[0] in args.sets]
    if "finetune" in args.parts:
        fine_tune_accuracy(
            sets, low, args.epochs, args.test_fraction, args.batch_size, args.finetune_size
        )
        print()
    if "features" not in args.parts:
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        return
    header = f"{'set':16}{'n':>6}{'median cos':>12}{'min cos':>10}"
    header += f"{'probe fp32':>12}{f'probe {low}':>12}{'diff':>8}{'fp32 s':>8}{f'{low} s':>8}"
    print(header, flush=True)
    for name, images, labels in sets:
        features, seconds = {}, {}
        for precision in ("fp32", low):
            featurizer = PretrainedFeaturizer(
                precision=precision, batch_size=args.batch_size, cache=None, progress=False
            )
            start = time.perf_counter()
            features[precision] = featurizer.fit_transform(images)
            seconds[precision] = time.perf_counter() - start
        a, b = features["fp32"], features[low]
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        probe = {
            precision: cross_val_score(
                LogisticRegression(max_iter=3000), values, labels, cv=folds
            ).mean()
            for precision, values in features.items()
        }
        diff = 100 * (probe[low] - probe["fp32"])
        print(
            f"{name:16}{len(images):6d}{np.median(cosine):12.5f}{cosine.min():10.5f}"
            f"{probe['fp32']:12.4f}{probe[low]:12.4f}{diff:+7.2f}p"
            f"{seconds['fp32']:8.1f}{seconds[low]:8.1f}",
            flush=True,
        )
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
