"""CPU cost per image of a handful of backbones, against a plain PyTorch baseline.

The baseline is a plain PyTorch loop (torchvision transforms, NCHW, fp32,
``no_grad``) over the default backbone, EfficientNet-Lite0, timed again beside
each row so that a change in the machine's load between rows does not skew
the ratios. For each backbone the table gives its multiply-adds and published
ImageNet top-1 (``list_backbones(details=True)``), then milliseconds per image
and the ratio to the baseline, for the same plain loop and for
``PretrainedFeaturizer`` (cache off, so every run does the full work); every
time is the best of ``--repeat`` runs. Except for Lite0's packaged weights the
networks are randomly initialised: this machine is offline, and the cost of a
forward pass does not depend on the weights' values.

Run: ``python benchmarks/bench_backbones.py [--n 16] [--batch-size 16] [--repeat 3]
[--threads 1] [--backbones efficientnet_lite0 resnet50 ...]``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from _common import best_time, plain_loop, plain_transform, real_photos

from sktransfer import PretrainedFeaturizer, list_backbones, load_backbone
from sktransfer._backbones import _backbone_details

BASELINE = "efficientnet_lite0"
BACKBONES = (
    "efficientnet_lite0",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "resnet18",
    "resnet50",
    "convnext_tiny",
    "vit_b_16",
)


def weights_of(name):
    return "default" if name == BASELINE else None


def plain_seconds(name, images, batch_size, repeat):
    model = load_backbone(name, weights=weights_of(name)).eval()
    transform = plain_transform(name)
    plain_loop(model, images[:batch_size], transform, batch_size)  # warm-up
    return best_time(lambda: plain_loop(model, images, transform, batch_size), repeat)[0]


def featurizer_seconds(name, images, batch_size, repeat):
    featurizer = PretrainedFeaturizer(
        name,
        weights=weights_of(name),
        random_state=0,
        batch_size=batch_size,
        cache=None,
        progress=False,
    ).fit([np.zeros((1, 1, 3), np.uint8)])
    featurizer.transform(images[:batch_size])  # builds the backbone, as later calls find it
    return best_time(lambda: featurizer.transform(images), repeat)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="torch threads (one suffers least from other jobs' load)"
    )
    parser.add_argument("--backbones", nargs="+", default=BACKBONES, choices=list_backbones())
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, n={args.n} photos "
        f"(500x375), batch {args.batch_size}; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    images = real_photos(args.n)
    n, bs, repeat = args.n, args.batch_size, args.repeat
    print(f"baseline: a plain PyTorch loop over {BASELINE}, timed again beside each row")
    header = (
        f"{'backbone':<20} {'GFLOPs':>7} {'top-1':>6} {'base ms':>8} {'plain ms':>9} "
        f"{'x base':>7} {'sktransfer ms':>14} {'x base':>7}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for name in args.backbones:
        details = _backbone_details(name)
        top1 = details["imagenet_top1"]
        baseline = plain_seconds(BASELINE, images, bs, repeat)
        plain = baseline if name == BASELINE else plain_seconds(name, images, bs, repeat)
        ours = featurizer_seconds(name, images, bs, repeat)
        print(
            f"{name:<20} {details['gflops']:>7.2f} {'' if top1 is None else f'{top1:.1f}':>6} "
            f"{1e3 * baseline / n:>8.1f} {1e3 * plain / n:>9.1f} {plain / baseline:>7.2f} "
            f"{1e3 * ours / n:>14.1f} {ours / baseline:>7.2f}",
            flush=True,
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
