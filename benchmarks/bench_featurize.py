"""Featurize speed against plain PyTorch, measured in the same process.

1. N in-memory uint8 images: PretrainedFeaturizer vs a plain PyTorch loop with
   the same model, batch size and preprocessing.
2. N JPEG files (500x375): PretrainedFeaturizer vs a loop that decodes with
   PIL one by one.

Run: ``python benchmarks/bench_featurize.py [--n 128] [--batch-size 16]``.
The caches are off (``cache=None``) so every run does the full work.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from _common import (
    best_time,
    plain_loop,
    plain_model,
    plain_transform,
    real_photos,
    report,
    write_jpegs,
)
from PIL import Image

from sktransfer import PretrainedFeaturizer


def featurizer(**params):
    return PretrainedFeaturizer(progress=False, cache=None, **params).fit(
        [np.zeros((1, 1, 3), np.uint8)]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    n, bs = args.n, args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n={n}, batch={bs}")

    images = real_photos(n)
    model, transform = plain_model(), plain_transform()
    plain_seconds, plain = best_time(lambda: plain_loop(model, images, transform, bs))
    ours = featurizer(batch_size=bs)
    ours.transform(images[:bs])  # build the backbone once, as any later call finds it
    seconds, features = best_time(lambda: ours.transform(images))
    bf16 = featurizer(batch_size=bs, precision="bf16")
    bf16_seconds, bf16_features = best_time(lambda: bf16.transform(images))
    report(
        [
            ("plain PyTorch loop (fp32)", plain_seconds, n),
            ("PretrainedFeaturizer (defaults, fp32)", seconds, n),
            ("PretrainedFeaturizer precision='bf16'", bf16_seconds, n),
        ],
        f"1. {n} in-memory uint8 images (500x375)",
    )
    cosine = (bf16_features * features).sum(1) / (
        np.linalg.norm(bf16_features, axis=1) * np.linalg.norm(features, axis=1)
    )
    print(
        f"max |ours - plain| = {np.abs(features - plain).max():.2e}; "
        f"bf16 vs fp32 cosine similarity: min {cosine.min():.4f}, mean {cosine.mean():.4f}"
    )

    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(images, folder)

        def decode(path):
            return Image.open(path).convert("RGB")

        naive_seconds, _ = best_time(lambda: plain_loop(model, paths, transform, bs, decode))
        rows = [("naive loop: PIL decode one by one (fp32)", naive_seconds, n)]
        for workers in (0, 1, 2):
            ours = featurizer(batch_size=bs, num_workers=workers)
            rows.append(
                (
                    f"PretrainedFeaturizer num_workers={workers}",
                    best_time(lambda ours=ours: ours.transform(paths))[0],
                    n,
                )
            )
        rows.append(
            (
                "PretrainedFeaturizer bf16, num_workers=1",
                best_time(
                    lambda: featurizer(batch_size=bs, num_workers=1, precision="bf16").transform(
                        paths
                    )
                )[0],
                n,
            )
        )
        report(rows, f"2. {n} JPEG files (500x375)")


if __name__ == "__main__":
    main()
