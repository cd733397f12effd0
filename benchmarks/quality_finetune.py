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
``--size`` px. ``--data faces`` or ``--data textures`` picks scikit-image's
faces and non-faces or its texture patches instead. ``--precisions fp32 bf16``
fits every method in each precision on the same splits and seeds, and prints
each one's accuracy and its difference to the first (``--methods`` picks some).
Run: ``python benchmarks/quality_finetune.py [--data fashion] [--sizes 50 200]
[--test 500] [--size 64] [--stages 3] [--epochs 10] [--warmup 5] [--seeds 2]
[--precisions fp32] [--methods probe tune warmup]``.
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
from sktransfer.datasets import load_faces, load_textures

FASHION = Path("/usr/share/datasets/fashion-mnist")


def load_fashion():
    """Fashion-MNIST's test split (10,000 images and labels), or None if not installed."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        return None
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    names = np.array("T-shirt trouser pullover dress coat sandal shirt sneaker bag boot".split())
    return images, names[labels]


def load_data(name="fashion"):
    """Images and labels: Fashion-MNIST if installed (else textures), faces or textures."""
    if name == "faces":
        return "scikit-image faces", *load_faces()
    fashion = load_fashion() if name == "fashion" else None
    if fashion is not None:
        return "Fashion-MNIST", *fashion
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
    parser.add_argument("--data", default="fashion", choices=["fashion", "faces", "textures"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--methods", nargs="+", default=["probe", "tune", "warmup"])
    args = parser.parse_args()

    name, images, labels = load_data(args.data)
    preprocessing = Preprocessing(
        input_size=args.size, resize_size=args.size, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    common = dict(preprocessing=preprocessing, progress=False)
    tune = dict(freeze=-args.stages, max_epochs=args.epochs, lr=args.lr, batch_size=32, **common)
    stages = "all stages" if args.stages == 0 else f"last {args.stages} stages"
    methods = {
        "probe": (
            "linear probe",
            lambda seed, precision: make_pipeline(
                PretrainedFeaturizer(precision=precision, **common),
                LogisticRegression(C=1.0, max_iter=2000),
            ),
        ),
        "tune": (
            f"fine-tune ({stages})",
            lambda seed, precision: FineTuneClassifier(
                random_state=seed, precision=precision, **tune
            ),
        ),
        "warmup": (
            f"probe {args.warmup} ep, then tune",
            lambda seed, precision: FineTuneClassifier(
                warmup_epochs=args.warmup, random_state=seed, precision=precision, **tune
            ),
        ),
    }
    print(
        f"{name}: {len(np.unique(labels))} classes, {args.size} px, {args.test} test "
        f"images, {args.seeds} seeds; fine-tuning {args.epochs} epochs at lr={args.lr}\n"
    )
    first = args.precisions[0]
    header = f"{'method':32}{'precision':>10}{'n':>6}{'accuracy':>18}"
    print(f"{header}{f'vs {first}':>10}{'seconds':>10}", flush=True)
    for n in args.sizes:
        for key in args.methods:
            method, make = methods[key]
            reference = None
            for precision in args.precisions:
                scores, start = [], time.perf_counter()
                for seed in range(args.seeds):
                    rest, X_test, y_rest, y_test = train_test_split(
                        images, labels, test_size=args.test, stratify=labels, random_state=seed
                    )
                    X, _, y, _ = train_test_split(
                        rest, y_rest, train_size=n, stratify=y_rest, random_state=seed
                    )
                    model = make(seed, precision).fit(X, y)
                    scores.append(model.score(X_test, y_test))
                seconds = time.perf_counter() - start
                reference = np.mean(scores) if reference is None else reference
                cell = f"{np.mean(scores):.3f} +- {np.std(scores):.3f}"
                diff = f"{100 * (np.mean(scores) - reference):+.1f}p"
                print(
                    f"{method:32}{precision:>10}{n:6d}{cell:>18}{diff:>10}{seconds:10.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
