"""Scale: featurize the 70,000 Fashion-MNIST images, streaming, with flat memory.

Needs Debian's ``dataset-fashion-mnist`` (files under /usr/share/datasets/fashion-mnist/).
The images are read in chunks straight from the gzip'd IDX files and fed to
``PretrainedFeaturizer.transform`` chunk by chunk, so only one chunk of raw
28x28 images (and one batch of decoded 224 px tensors) is ever held; the output
features are written to a memory-mapped .npy file. Prints images/s and peak RSS
after each chunk: RSS must stay flat as N grows.

Run: ``python benchmarks/bench_scale.py [--n 70000] [--chunk 5000] [--precision bf16]``.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sktransfer import PretrainedFeaturizer

FOLDER = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")


def fashion_mnist_chunks(chunk):
    """Yield uint8 (k, 28, 28) chunks of all 70,000 images, reading the files lazily."""
    for name in FILES:
        with gzip.open(FOLDER / name, "rb") as f:
            header = np.frombuffer(f.read(16), dtype=">i4")
            count, rows, cols = (int(v) for v in header[1:])
            for start in range(0, count, chunk):
                k = min(chunk, count - start)
                yield np.frombuffer(f.read(k * rows * cols), np.uint8).reshape(k, rows, cols)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70_000)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if not (FOLDER / FILES[0]).exists():
        raise SystemExit(f"{FOLDER} is missing: apt-get install dataset-fashion-mnist")

    featurizer = PretrainedFeaturizer(
        progress=False, cache=None, precision=args.precision, batch_size=args.batch_size
    ).fit(np.zeros((1, 28, 28), np.uint8))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"precision={args.precision}, batch={args.batch_size}, n={args.n}"
    )
    print(f"{'images':>8} {'seconds':>8} {'img/s':>7} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as folder:
        out = np.lib.format.open_memmap(
            Path(folder) / "features.npy", mode="w+", dtype=np.float32, shape=(args.n, 1280)
        )
        done, start = 0, time.perf_counter()
        for images in fashion_mnist_chunks(args.chunk):
            images = images[: args.n - done]
            out[done : done + len(images)] = featurizer.transform(images)
            done += len(images)
            seconds = time.perf_counter() - start
            print(
                f"{done:>8} {seconds:>8.1f} {done / seconds:>7.1f} {peak_rss_mib():>13.0f}",
                flush=True,
            )
            if done >= args.n:
                break
        out.flush()
        assert np.isfinite(out[:done]).all()


if __name__ == "__main__":
    main()
