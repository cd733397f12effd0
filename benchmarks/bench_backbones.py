"""CPU cost per image of a handful of backbones, against a plain PyTorch baseline.

The baseline is a plain PyTorch loop (torchvision transforms, NCHW, fp32,
``no_grad``) over the default backbone, EfficientNet-Lite0, timed in the same
run. For each backbone the table gives its multiply-adds and published ImageNet
top-1 (``list_backbones(details=True)``), then milliseconds per image and the
ratio to the baseline, for the same plain loop and for ``PretrainedFeaturizer``
(cache off, so every run does the full work). Except for Lite0's packaged
weights the networks are randomly initialised: this machine is offline, and
the cost of a forward pass does not depend on the weights' values.

Run: ``python benchmarks/bench_backbones.py [--n 16] [--batch-size 16]
[--backbones efficientnet_lite0 resnet50 ...]``.
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
    "swin_t",
    "vit_b_16",
)


def weights_of(name):
    return "default" if name == BASELINE else None


def plain_seconds(name, images, batch_size):
    model = load_backbone(name, weights=weights_of(name)).eval()
    transform = plain_transform(name)
    plain_loop(model, images[:batch_size], transform, batch_size)  # warm-up
    return best_time(lambda: plain_loop(model, images, transform, batch_size))[0]


def featurizer_seconds(name, images, batch_size):
    featurizer = PretrainedFeaturizer(
        name,
        weights=weights_of(name),
        random_state=0,
        batch_size=batch_size,
        cache=None,
        progress=False,
    ).fit([np.zeros((1, 1, 3), np.uint8)])
    featurizer.transform(
        images[:batch_size]
    )  # builds the backbone once, as any later call finds it
    return best_time(lambda: featurizer.transform(images))[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbones", nargs="+", default=BACKBONES, choices=list_backbones())
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, n={args.n} photos "
        f"(500x375), batch {args.batch_size}; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    images = real_photos(args.n)
    baseline = plain_seconds(BASELINE, images, args.batch_size)
    print(f"baseline: plain PyTorch loop over {BASELINE}, {1e3 * baseline / args.n:.1f} ms/image")
    header = (
        f"{'backbone':<20} {'GFLOPs':>7} {'top-1':>6} {'plain ms':>9} {'x base':>7} "
        f"{'sktransfer ms':>14} {'x base':>7}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for name in args.backbones:
        details = _backbone_details(name)
        top1 = details["imagenet_top1"]
        plain = baseline if name == BASELINE else plain_seconds(name, images, args.batch_size)
        ours = featurizer_seconds(name, images, args.batch_size)
        print(
            f"{name:<20} {details['gflops']:>7.2f} {'' if top1 is None else f'{top1:.1f}':>6} "
            f"{1e3 * plain / args.n:>9.1f} {plain / baseline:>7.2f} "
            f"{1e3 * ours / args.n:>14.1f} {ours / baseline:>7.2f}",
            flush=True,
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
