"""Soak: many images through one disk cache from several processes at once, then verify.

Each of ``--processes`` worker processes featurizes an overlapping slice of
``--n`` distinct Fashion-MNIST images (Debian package dataset-fashion-mnist;
random images when it is absent) with the default backbone through the same
disk cache, so writers contend on the same keys. Afterwards the store must hold
exactly the distinct images, every worker's result must equal the cached row,
and a random sample of stored vectors is recomputed from scratch (cache=None)
and compared.

The backbone is the real default, EfficientNet-Lite0, but fed 64 px inputs by
default to make 20,000 images feasible on 2 cores; ``--input-size 224`` runs
the full-size preprocessing.

Run: ``python benchmarks/soak_disk_cache.py [--n 20000] [--processes 3]``.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np

from sktransfer import Preprocessing, PretrainedFeaturizer, cache_info, get_backbone_spec

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def load_images(n):
    if FASHION.exists():
        with gzip.open(FASHION, "rb") as f:
            f.read(16)
            images = np.frombuffer(f.read(n * 784), np.uint8).reshape(-1, 28, 28)
        if len(images) >= n:
            # A few Fashion-MNIST images are exact duplicates; mark each as distinct.
            images = images.copy()
            images[:, 0, 0] = np.arange(n) % 256
            images[:, 0, 1] = np.arange(n) // 256 % 256
            return images
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


def featurizer(cache, input_size):
    spec = get_backbone_spec("efficientnet_lite0")
    preprocessing = Preprocessing(
        input_size=input_size,
        resize_size=round(input_size / 0.875),
        interpolation="bilinear",
        mean=spec.preprocessing.mean,
        std=spec.preprocessing.std,
    )
    return PretrainedFeaturizer(
        preprocessing=preprocessing, cache=cache, batch_size=64, progress=False
    )


def work(args):
    cache, n, start, stop, input_size, out = args
    import torch

    torch.set_num_threads(1)  # the processes share the cores
    images = load_images(n)[start:stop]
    features = featurizer(cache, input_size).fit_transform(images)
    np.save(out, features)
    return start, stop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--check", type=int, default=500, help="stored vectors recomputed")
    args = parser.parse_args()
    n, p = args.n, args.processes
    with tempfile.TemporaryDirectory() as folder:
        cache = str(Path(folder) / "cache")
        # Overlapping slices: each covers 1/p of the images plus half of the next slice.
        step = n // p
        jobs = [
            (
                cache,
                n,
                i * step,
                min(n, (i + 1) * step + step // 2) if i < p - 1 else n,
                args.input_size,
                str(Path(folder) / f"{i}.npy"),
            )
            for i in range(p)
        ]
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(p) as pool:
            spans = pool.map(work, jobs)
        seconds = time.perf_counter() - started
        featurized = sum(stop - start for start, stop in spans)
        info = cache_info(cache)
        print(
            f"{p} processes featurized {featurized} images ({n} distinct) through one disk "
            f"cache in {seconds:.1f} s; store: {info.entries} entries, "
            f"{info.nbytes / 2**20:.1f} MiB"
        )

        images = load_images(n)
        everything = featurizer(cache, args.input_size).fit(images[:1]).transform(images)
        # Workers racing on the same image store whichever result lands last; results of
        # different batch compositions and thread counts agree to float rounding only.
        mismatched_workers = sum(
            not np.allclose(np.load(out), everything[start:stop], atol=1e-4, rtol=0)
            for _, _, start, stop, _, out in jobs
        )
        rng = np.random.default_rng(1)
        sample = np.sort(rng.choice(n, size=min(args.check, n), replace=False))
        fresh = featurizer(None, args.input_size).fit(images[:1]).transform(images[sample])
        difference = np.abs(fresh - everything[sample]).max(axis=1)
        mismatches = int((difference > 1e-4).sum())
        print(f"entries == distinct images: {info.entries == n}")
        print(f"worker results equal to the stored rows (atol 1e-4): {p - mismatched_workers}/{p}")
        print(
            f"recomputed {len(sample)} stored vectors from scratch: {mismatches} mismatches "
            f"(max abs difference {difference.max():.2e})"
        )
        if info.entries != n or mismatched_workers or mismatches:
            raise SystemExit("soak FAILED")


if __name__ == "__main__":
    main()
