"""Linear-probe accuracy per layer: where the best layer sits, near ImageNet and far from it.

Near: scikit-image's ``lfw_subset`` (100 faces, 100 non-faces, photos).
Far: Fashion-MNIST (grayscale clothing at 28 px), ``--per-class`` images of
each of its 10 classes, from Debian's ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist/); skipped with a note when missing.

Each set goes through the default backbone once: one ``PretrainedFeaturizer``
asks for every stage (average-pooled; the last stage with the model's own
pooling), and each layer's columns are a slice of that matrix. A standardised
logistic regression is scored by stratified 5-fold cross-validation on each
layer alone and on concatenations of the best layers. Prints the table and
writes ``docs/images/layer_probe.png``::

    python benchmarks/layer_probe.py --per-class 30   # about 4 minutes on 2 free cores
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeaturizer
from sktransfer.datasets import load_faces

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


def load_fashion_mnist(per_class: int, seed: int = 0):
    """``per_class`` training images of each class (uint8, 28 x 28), or None when missing."""
    images_path = FASHION / "train-images-idx3-ubyte.gz"
    labels_path = FASHION / "train-labels-idx1-ubyte.gz"
    if not images_path.exists():
        return None
    with gzip.open(images_path, "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_path, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    )
    return images[chosen], np.array(FASHION_CLASSES)[labels[chosen]]


def probe(features, labels) -> float:
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(head, features, labels, cv=cv).mean())


def layer_scores(images, labels, cache, engine):
    """Accuracy of each stage alone and of concatenations of the best ones."""
    start = time.perf_counter()
    stages = PretrainedFeaturizer(progress=False).fit(images[:1]).spec_.stages
    featurizer = PretrainedFeaturizer(
        layers=tuple(range(len(stages))), cache=cache, engine=engine, progress=False
    )
    features = featurizer.fit_transform(images)  # one pass: every stage at once
    seconds = time.perf_counter() - start
    blocks, start_column = {}, 0
    for stage, _, width in featurizer.layers_:
        blocks[stage] = slice(start_column, start_column + width)
        start_column += width
    alone = {stage: probe(features[:, blocks[stage]], labels) for stage in stages}
    ranked = sorted(stages, key=alone.get, reverse=True)
    together = {}
    for k in (2, 3):
        best = sorted(ranked[:k], key=stages.index)
        columns = np.concatenate([np.arange(blocks[s].start, blocks[s].stop) for s in best])
        together[" + ".join(best)] = probe(features[:, columns], labels)
    return stages, alone, together, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--cache", default="memory", help="a directory keeps features for reruns")
    parser.add_argument(
        "--engine", default="torch", choices=["torch", "onnxruntime"], help="same features"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "layer_probe.png"))
    args = parser.parse_args()

    faces, face_labels = load_faces()
    sets = {"LFW faces vs non-faces (near)": ((faces * 255).round().astype(np.uint8), face_labels)}
    fashion = load_fashion_mnist(args.per_class)
    if fashion is None:
        print(f"{FASHION} is missing (apt-get install dataset-fashion-mnist): near set only")
    else:
        sets[f"Fashion-MNIST, {args.per_class} per class (far)"] = fashion

    results = {}
    for name, (images, labels) in sets.items():
        stages, alone, together, seconds = layer_scores(images, labels, args.cache, args.engine)
        results[name] = (stages, alone, together)
        print(f"\n{name}: {len(images)} images, featurized in {seconds:.0f} s")
        print(f"{'layer':<28}{'accuracy':>9}")
        for stage in stages:
            print(f"{stage:<28}{alone[stage]:>9.3f}")
        for combo, score in together.items():
            print(f"{combo:<28}{score:>9.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for (name, (stages, alone, together)), colour in zip(results.items(), ("C0", "C3")):
        positions = np.arange(len(stages))
        ax.plot(positions, [alone[s] for s in stages], "o-", color=colour, label=name)
        combo, score = max(together.items(), key=lambda item: item[1])
        ax.axhline(score, color=colour, ls="--", lw=1, label=f"best concatenation: {combo}")
    ax.set_xticks(positions, stages, rotation=30)
    ax.set_xlabel("stage of efficientnet_lite0 (input to output)")
    ax.set_ylabel("5-fold linear-probe accuracy")
    ax.set_title("Which layer's features to use")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
