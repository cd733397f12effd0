"""bf16 against fp32 features on real photos: cosine per image and 5-fold linear-probe accuracy.

What ``precision="auto"`` is decided by on CPUs that compute bf16 natively
(sktransfer/_engines/device.py, ``AUTO_BF16_ON_NATIVE_CPU``). For each set,
EfficientNet-Lite0 featurizes the same images in fp32 and in bf16 (at its
own 224 px preprocessing, no cache), and the script prints the median and
the lowest cosine between each image's two feature vectors, and the accuracy
of ``LogisticRegression`` on each, over the same 5 stratified folds. The
sets: scikit-image's texture patches (brick, grass, gravel), its faces and
non-faces (``lfw_subset``) and, when Debian's ``dataset-fashion-mnist`` is
installed, ``--fashion`` images of Fashion-MNIST's test split (a stratified
sample). Fine-tuned accuracy is ``quality_finetune.py --precisions fp32 bf16``.

Run: ``python benchmarks/quality_precision.py [--fashion 1000] [--precision bf16]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from quality_finetune import load_fashion
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split

from sktransfer import PretrainedFeaturizer
from sktransfer._engines.device import cpu_flags, cpu_native_dtypes
from sktransfer.datasets import load_faces, load_textures


def real_sets(n_fashion: int):
    """(name, images, labels) for each set available here."""
    sets = [("textures", *load_textures()), ("faces", *load_faces())]
    fashion = load_fashion()
    if fashion is not None and n_fashion:
        images, labels = fashion
        images, _, labels, _ = train_test_split(
            images, labels, train_size=n_fashion, stratify=labels, random_state=0
        )
        sets.append(("Fashion-MNIST", images, labels))
    return sets


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fashion", type=int, default=1000)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})
    native = sorted(str(dtype).removeprefix("torch.") for dtype in cpu_native_dtypes())
    print(f"CPU flags read: {flags or 'none'}; native: {native or 'none'}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}\n")
    low = args.precision
    header = f"{'set':16}{'n':>6}{'median cos':>12}{'min cos':>10}"
    header += f"{'probe fp32':>12}{f'probe {low}':>12}{'diff':>8}{'fp32 s':>8}{f'{low} s':>8}"
    print(header, flush=True)
    for name, images, labels in real_sets(args.fashion):
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
