"""Featurize speed of every engine against plain PyTorch, measured in the same process.

1. N in-memory uint8 photos, one table: a plain PyTorch loop (NCHW, fp32,
   the baseline), the same loop in channels_last, PretrainedFeaturizer's
   engines (torch = channels_last eager, onnxruntime fp32 and int8 when
   available), torch.compile (compile time reported apart), bf16 only where
   the CPU computes it natively; each with img/s, its ratio to the baseline
   and its share of the physical ceiling: the network's FLOPs (counted by
   ``torch.utils.flop_counter``) divided by this machine's measured fp32
   GEMM throughput.
2. N JPEG files (500x375): PretrainedFeaturizer vs a loop that decodes with
   PIL one by one.

Run: ``python benchmarks/bench_featurize.py [--n 64] [--batch-size 16]
[--no-compile] [--no-files]``. The caches are off (``cache=None``) so every
run does the full work.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from _common import (
    best_time,
    plain_loop,
    plain_model,
    plain_transform,
    real_photos,
    write_jpegs,
)
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from sktransfer import PretrainedFeaturizer
from sktransfer._engines.device import cpu_native_dtypes


def featurizer(**params):
    return PretrainedFeaturizer(progress=False, cache=None, **params).fit(
        [np.zeros((1, 1, 3), np.uint8)]
    )


def gemm_flops_per_second(size=1024, windows=5):
    """Best measured fp32 matrix-multiply throughput of this process's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.5:
            a @ b
            count += 1
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start))
    return best


def flops_per_image(model, size=224):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def table(rows, title, ceiling=None):
    print(f"\n{title}")
    header = f"{'method':<62} {'seconds':>8} {'img/s':>8} {'vs plain':>9}"
    print(header + (f" {'of ceiling':>11}" if ceiling else ""))
    baseline = rows[0][1]
    for name, seconds, n in rows:
        line = f"{name:<62} {seconds:>8.2f} {n / seconds:>8.1f} {baseline / seconds:>8.2f}x"
        print(line + (f" {n / seconds / ceiling:>10.0%}" if ceiling else ""))


def engines(images, bs, compile_model):
    n = len(images)
    model, transform = plain_model(), plain_transform()
    ceiling_flops = gemm_flops_per_second()
    flops = flops_per_image(model)
    ceiling = ceiling_flops / flops
    print(
        f"network: {flops / 1e9:.2f} GFLOP per image; fp32 GEMM: {ceiling_flops / 1e9:.0f} "
        f"GFLOP/s -> ceiling {ceiling:.0f} img/s"
    )

    rows = []
    seconds, plain = best_time(lambda: plain_loop(model, images, transform, bs))
    rows.append(("plain PyTorch loop (NCHW, fp32) = baseline", seconds, n))
    last = plain_model().to(memory_format=torch.channels_last)

    def channels_last_loop(net):
        return plain_loop(
            lambda batch: net(batch.contiguous(memory_format=torch.channels_last)),
            images,
            transform,
            bs,
        )

    rows.append(
        ("plain PyTorch loop, channels_last", best_time(lambda: channels_last_loop(last))[0], n)
    )
    results = {}
    for engine in ("torch", "onnxruntime"):
        ours = featurizer(batch_size=bs, engine=engine)
        ours.transform(images[:bs])  # build (or export) once, as any later call finds it
        seconds, results[engine] = best_time(lambda ours=ours: ours.transform(images))
        label = "channels_last eager" if engine == "torch" else "CPU provider, fp32"
        rows.append((f'PretrainedFeaturizer engine="{engine}" ({label})', seconds, n))
    if torch.bfloat16 in cpu_native_dtypes():
        ours = featurizer(batch_size=bs, precision="bf16")
        seconds, results["bf16"] = best_time(lambda: ours.transform(images))
        rows.append(('PretrainedFeaturizer precision="bf16" (native)', seconds, n))
    if compile_model:
        compiled = torch.compile(last)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(torch.zeros(bs, 3, 224, 224).contiguous(memory_format=torch.channels_last))
        compile_seconds = time.perf_counter() - start
        # n is a multiple of the batch size: a smaller last batch would compile again.
        rows.append(
            (
                "torch.compile, channels_last (compiled already)",
                best_time(lambda: channels_last_loop(compiled))[0],
                n,
            )
        )
    table(rows, f"1. {n} in-memory photos (500x375 -> 224), batch {bs}", ceiling)
    if compile_model:
        print(f"torch.compile took {compile_seconds:.0f} s before its first batch")
    print(f"max |torch engine - plain| = {np.abs(results['torch'] - plain).max():.1e}")
    for name, features in results.items():
        if name != "torch":
            c = cosine(features, results["torch"])
            print(f"{name} vs torch engine: 1 - cosine at most {1 - c.min():.1e}")


def files(images, bs):
    n = len(images)
    model, transform = plain_model(), plain_transform()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(images, folder)

        def decode(path):
            return Image.open(path).convert("RGB")

        naive_seconds, _ = best_time(lambda: plain_loop(model, paths, transform, bs, decode))
        rows = [("naive loop: PIL decode one by one (fp32)", naive_seconds, n)]
        for engine, workers in (("torch", 0), ("torch", 1), ("onnxruntime", 1)):
            ours = featurizer(batch_size=bs, num_workers=workers, engine=engine)
            ours.transform(paths[:bs])
            seconds = best_time(lambda ours=ours: ours.transform(paths))[0]
            rows.append(
                (f'PretrainedFeaturizer engine="{engine}", num_workers={workers}', seconds, n)
            )
        table(rows, f"2. {n} JPEG files (500x375)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes)")
    parser.add_argument("--no-files", action="store_true", help="skip the JPEG-file table")
    args = parser.parse_args()
    n, bs = -(-args.n // args.batch_size) * args.batch_size, args.batch_size
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, n={n}, batch={bs}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    images = real_photos(n)
    engines(images, bs, compile_model=not args.no_compile)
    if not args.no_files:
        files(images, bs)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
