"""Held-out accuracy on real data: linear probe vs fine-tuning vs probe-then-tune.

Fashion-MNIST (Debian package ``dataset-fashion-mnist``: 28x28 grayscale
photos of clothes, 10 classes) when installed, else scikit-image's texture
patches. For each training-set size, the same stratified training sample
and the same test images go to

- linear probe: ``PretrainedFeaturizer`` + ``LogisticRegression`` (route 1);
- fine-tune: ``FineTuneClassifier(freeze=-k)``, the last k stages and a new
  head trained together from the start;
- probe, then tune: the same with ``warmup_epochs``: the head trained alone
  first, on cached features (Kumar et al., ICLR 2022).

All on EfficientNet-Lite0 with its pretrained weights, images upsampled to
``--size`` px. Run: ``python benchmarks/quality_finetune.py [--sizes 50 200]
[--test 500] [--size 64] [--stages 3] [--epochs 10] [--warmup 5] [--seeds 2]``.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from sktransfer import FineTuneClassifier, Preprocessing, PretrainedFeaturizer
from sktransfer.datasets import load_textures

FASHION = Path("/usr/share/datasets/fashion-mnist")


def load_data():
    """Images and labels: Fashion-MNIST's test split (10,000) if installed, else textures."""
    if (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
        names = np.array(
            "T-shirt trouser pullover dress coat sandal shirt sneaker bag boot".split()
        )
        return "Fashion-MNIST", images, names[labels]
    images, labels = load_textures(patch_size=32, stride=16)
    return "scikit-image textures", images, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()

    name, images, labels = load_data()
    preprocessing = Preprocessing(
        input_size=args.size, resize_size=args.size, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    common = dict(preprocessing=preprocessing, progress=False)
    tune = dict(freeze=-args.stages, max_epochs=args.epochs, lr=args.lr, batch_size=32, **common)
    methods = {
        "linear probe": lambda seed: make_pipeline(
            PretrainedFeaturizer(**common), LogisticRegression(C=1.0, max_iter=2000)
        ),
        f"fine-tune (last {args.stages} stages)": lambda seed: FineTuneClassifier(
            random_state=seed, **tune
        ),
        f"probe {args.warmup} ep, then tune": lambda seed: FineTuneClassifier(
            warmup_epochs=args.warmup, random_state=seed, **tune
        ),
    }
    print(
        f"{name}: {len(np.unique(labels))} classes, {args.size} px, {args.test} test "
        f"images, {args.seeds} seeds; fine-tuning {args.epochs} epochs at lr={args.lr}\n"
    )
    print(f"{'method':32}{'n':>6}{'accuracy':>18}{'seconds':>10}", flush=True)
    for n in args.sizes:
        for method, make in methods.items():
            scores, start = [], time.perf_counter()
            for seed in range(args.seeds):
                rest, X_test, y_rest, y_test = train_test_split(
                    images, labels, test_size=args.test, stratify=labels, random_state=seed
                )
                X, _, y, _ = train_test_split(
                    rest, y_rest, train_size=n, stratify=y_rest, random_state=seed
                )
                scores.append(make(seed).fit(X, y).score(X_test, y_test))
            cell = f"{np.mean(scores):.3f} +- {np.std(scores):.3f}"
            seconds = time.perf_counter() - start
            print(f"{method:32}{n:6d}{cell:>18}{seconds:10.0f}", flush=True)


if __name__ == "__main__":
    main()
