"""Precompute once: what the feature cache saves, measured in the same process.

3. Cold vs warm transform, with the memory cache and with a disk cache.
4. GridSearchCV(Pipeline(featurizer, LogisticRegression), 4 values of C, cv=5):
   time and backbone forwards with the memory cache against ``cache=None``, and
   against one featurization plus the head fits.

Run: ``python benchmarks/bench_cache.py [--n 100]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from _common import real_photos
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sktransfer import PretrainedFeaturizer
from sktransfer._backbones import Backbone
from sktransfer._store import clear_cache

FORWARD_IMAGES = [0]


def count_backbone_images():
    """Count every image the backbone's forward sees, in this process."""

    def hook(module, inputs):
        FORWARD_IMAGES[0] += len(inputs[0])

    torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, inputs: hook(module, inputs) if isinstance(module, Backbone) else None
    )


def timed(fn):
    start, before = time.perf_counter(), FORWARD_IMAGES[0]
    result = fn()
    return time.perf_counter() - start, FORWARD_IMAGES[0] - before, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    n = args.n
    count_backbone_images()
    images = np.stack(real_photos(n, size=(320, 240)))
    labels = np.array(["tigger", "misty", "neither"])[np.arange(n) % 3]
    PretrainedFeaturizer(progress=False, cache=None).fit_transform(images[:2])  # build once

    print(f"3. cold vs warm transform of {n} images (320x240)")
    print(f"{'cache':<10} {'cold s':>8} {'warm s':>8} {'speedup':>9} {'warm forwards':>14}")
    with tempfile.TemporaryDirectory() as folder:
        for name, cache in (("memory", "memory"), ("disk", folder)):
            clear_cache(cache)
            featurizer = PretrainedFeaturizer(progress=False, cache=cache).fit(images)
            cold, _, first = timed(lambda f=featurizer: f.transform(images))
            warm, forwards, second = timed(lambda f=featurizer: f.transform(images))
            assert np.array_equal(first, second)
            print(f"{name:<10} {cold:>8.2f} {warm:>8.4f} {cold / warm:>8.0f}x {forwards:>14}")

    print(f"\n4. GridSearchCV over 4 values of C, cv=5, on {n} images")
    grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    rows = []
    for cache in (None, "memory"):
        clear_cache("memory")
        pipe = make_pipeline(
            PretrainedFeaturizer(progress=False, cache=cache), LogisticRegression(max_iter=1000)
        )
        seconds, forwards, _ = timed(
            lambda pipe=pipe: GridSearchCV(pipe, grid, cv=cv).fit(images, labels)
        )
        rows.append((f"cache={cache!r}", seconds, forwards))
    clear_cache("memory")
    featurize_seconds, forwards, features = timed(
        lambda: PretrainedFeaturizer(progress=False, cache=None).fit_transform(images)
    )
    heads_seconds, _, _ = timed(
        lambda: GridSearchCV(
            LogisticRegression(max_iter=1000), {"C": grid["logisticregression__C"]}, cv=cv
        ).fit(features, labels)
    )
    reference = featurize_seconds + heads_seconds
    rows.append(("one featurization + head fits", reference, forwards))
    print(f"{'run':<32} {'seconds':>8} {'forwards':>9} {'vs reference':>13}")
    for name, seconds, forwards in rows:
        print(f"{name:<32} {seconds:>8.2f} {forwards:>9} {seconds / reference:>12.2f}x")
    print(f"distinct images: {n}")


if __name__ == "__main__":
    main()
