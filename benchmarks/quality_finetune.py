"""Held-out accuracy on real data: linear probe vs fine-tuning at several freeze depths.

Fashion-MNIST (Debian package ``dataset-fashion-mnist``: 28x28 grayscale
photos of clothes, 10 classes) when installed, else scikit-image's texture
patches. For each seed and training-set size, the same stratified training
sample and the same test images go to

- linear probe: ``PretrainedFeaturizer`` + ``LogisticRegression`` (route 1);
- fine-tune: ``FineTuneClassifier(freeze=F)`` for each ``--freezes`` value
  (``backbone``: the new head alone; ``-k``: the last k stages and the head;
  ``0``: the whole network), the stages and the head trained together from
  the start;
- probe, then tune (``--warmup`` > 0): the same with ``warmup_epochs``, the
  head trained alone first, on cached features (Kumar et al., ICLR 2022),
  for each freeze that leaves stages to train.

All on EfficientNet-Lite0 with its pretrained weights, images upsampled to
``--size`` px, at ``--precision`` (fp32 by default, whatever ``"auto"``
picks). Seeds run outermost, so a run cut short still holds whole ladders
for its first seeds; ``--csv`` appends each fit's row as it finishes and
skips the fits already in the file, so a run can be resumed, and ``--plot``
draws accuracy against training images from every row. The guide's ladder::

    python benchmarks/quality_finetune.py --sizes 100 300 1000 3000 --test 1000 \\
        --epochs 8 --freezes backbone -3 0 --warmup 0 --seeds 3 \\
        --csv docs/images/freeze_ladder.csv --plot docs/images/freeze_ladder.png
"""

from __future__ import annotations

import argparse
import csv
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
PROBE = "linear probe"
FIELDS = ("method", "n", "seed", "accuracy", "fit_s", "score_s")


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


def freeze_value(text):
    """``--freezes`` item: ``backbone`` or an int."""
    return text if text == "backbone" else int(text)


def make_methods(args):
    """Method name -> ``seed -> unfitted estimator``, in the order they run."""
    preprocessing = Preprocessing(
        input_size=args.size, resize_size=args.size, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    common = dict(preprocessing=preprocessing, precision=args.precision, progress=False)
    tune = dict(max_epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, **common)
    methods = {
        PROBE: lambda seed: make_pipeline(
            PretrainedFeaturizer(**common), LogisticRegression(C=1.0, max_iter=2000)
        )
    }
    for freeze in args.freezes:
        methods[f"freeze={freeze!r}"] = lambda seed, freeze=freeze: FineTuneClassifier(
            freeze=freeze, random_state=seed, **tune
        )
    for freeze in args.freezes if args.warmup else ():
        if freeze != "backbone":
            methods[f"probe {args.warmup} ep, then freeze={freeze!r}"] = (
                lambda seed, freeze=freeze: FineTuneClassifier(
                    freeze=freeze, warmup_epochs=args.warmup, random_state=seed, **tune
                )
            )
    return methods


def read_rows(path):
    """The rows already in ``path`` (none when it does not exist yet)."""
    if path is None or not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            dict(row, n=int(row["n"]), seed=int(row["seed"]), accuracy=float(row["accuracy"]))
            for row in csv.DictReader(f)
        ]


def append_row(path, row):
    """Append one fit's row to ``path`` at once, so a run cut short keeps it."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def summary(rows, methods, sizes):
    """``{(method, n): accuracies over seeds}`` for the methods and sizes asked for."""
    cells = {}
    for row in rows:
        if row["method"] in methods and row["n"] in sizes:
            cells.setdefault((row["method"], row["n"]), []).append(row["accuracy"])
    return cells


def plot(cells, methods, sizes, title, path):
    """Accuracy against training images: mean and std (band) over seeds, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, method in enumerate(methods):
        ns = [n for n in sizes if (method, n) in cells]
        if not ns:
            continue
        colour, style = f"C{i}", "--" if method == PROBE else "-"
        means = np.array([np.mean(cells[method, n]) for n in ns])
        stds = np.array([np.std(cells[method, n]) for n in ns])
        ax.plot(ns, means, style, marker="o", color=colour, label=method)
        ax.fill_between(ns, means - stds, means + stds, color=colour, alpha=0.15, lw=0)
        for n in ns:
            ax.plot([n] * len(cells[method, n]), cells[method, n], ".", color=colour, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title.replace("; ", "\n"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"saved {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--freezes", type=freeze_value, nargs="+", default=[-3], help="backbone or ints"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5, help="0: no probe-then-tune rows")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--csv", type=Path, help="append each fit here; skip fits already there")
    parser.add_argument("--plot", type=Path, help="save accuracy against training images here")
    args = parser.parse_args()

    name, images, labels = load_data()
    methods = make_methods(args)
    settings = (
        f"{name}: {len(np.unique(labels))} classes, {args.size} px, {args.test} test images; "
        f"fine-tuning {args.epochs} epochs, lr={args.lr}, batch {args.batch_size}, "
        f"{args.precision}"
    )
    print(settings + "\n")
    rows = read_rows(args.csv)
    done = {(row["method"], row["n"], row["seed"]) for row in rows}
    print(f"{'method':36}{'n':>6}{'seed':>5}{'accuracy':>9}{'fit s':>8}{'score s':>8}", flush=True)
    for seed in range(args.seeds):
        for n in args.sizes:
            rest, X_test, y_rest, y_test = train_test_split(
                images, labels, test_size=args.test, stratify=labels, random_state=seed
            )
            X, _, y, _ = train_test_split(
                rest, y_rest, train_size=n, stratify=y_rest, random_state=seed
            )
            for method, make in methods.items():
                if (method, n, seed) in done:
                    continue
                start = time.perf_counter()
                model = make(seed).fit(X, y)
                fitted = time.perf_counter()
                accuracy = model.score(X_test, y_test)
                row = dict(
                    method=method,
                    n=n,
                    seed=seed,
                    accuracy=round(accuracy, 4),
                    fit_s=round(fitted - start, 1),
                    score_s=round(time.perf_counter() - fitted, 1),
                )
                rows.append(row)
                if args.csv is not None:
                    append_row(args.csv, row)
                print(
                    f"{method:36}{n:6d}{seed:5d}{accuracy:9.3f}{row['fit_s']:8.0f}"
                    f"{row['score_s']:8.0f}",
                    flush=True,
                )

    cells = summary(rows, methods, args.sizes)
    print(f"\nmean +- std over seeds (number of seeds)\n{'method':36}", end="")
    print("".join(f"{n:>22,}" for n in args.sizes))
    for method in methods:
        print(f"{method:36}", end="")
        for n in args.sizes:
            scores = cells.get((method, n))
            cell = (
                f"{np.mean(scores):.3f} +- {np.std(scores):.3f} ({len(scores)})" if scores else "-"
            )
            print(f"{cell:>22}", end="")
        print()
    if args.plot is not None:
        plot(cells, methods, args.sizes, settings, args.plot)


if __name__ == "__main__":
    main()
