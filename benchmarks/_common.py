"""Shared pieces of the benchmarks: real photos, a plain PyTorch baseline, timing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from sktransfer import get_backbone_spec, load_backbone

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field")


def real_photos(n, size=(500, 375), seed=0):
    """``n`` distinct uint8 photos of ``size`` (W, H): random crops of scikit-image's photos."""
    import skimage.data

    rng = np.random.default_rng(seed)
    sources = [getattr(skimage.data, name)() for name in PHOTOS]
    images = []
    for i in range(n):
        photo = Image.fromarray(sources[i % len(sources)])
        scale = rng.uniform(1.0, 1.6)
        w, h = photo.size
        left, top = rng.uniform(0, w * (1 - 1 / scale)), rng.uniform(0, h * (1 - 1 / scale))
        box = (left, top, left + w / scale, top + h / scale)
        images.append(np.asarray(photo.resize(size, Image.BILINEAR, box=box)))
    return images


def write_jpegs(images, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i:05d}.jpg"))
        Image.fromarray(image).save(paths[-1], quality=90)
    return paths


def plain_transform(name="efficientnet_lite0"):
    """The torchvision preprocessing a user would write for the backbone's weights."""
    p = get_backbone_spec(name).preprocessing
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(p.resize_size, antialias=True),
            v2.CenterCrop(p.input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(p.mean, p.std),
        ]
    )


def plain_model(name="efficientnet_lite0"):
    return load_backbone(name).eval()


def plain_loop(model, items, transform, batch_size, load=lambda item: item):
    """Baseline: load each item one by one, stack a batch, run the model under no_grad."""
    out = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = torch.stack([transform(load(x)) for x in items[start : start + batch_size]])
            out.append(model(batch).numpy())
    return np.concatenate(out)


def best_time(fn, repeat=2):
    """Best wall time of ``repeat`` runs (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def report(rows, title):
    print(f"\n{title}")
    print(f"{'method':<44} {'seconds':>8} {'img/s':>8} {'speedup':>8}")
    baseline = rows[0][1]
    for name, seconds, n in rows:
        print(f"{name:<44} {seconds:>8.2f} {n / seconds:>8.1f} {baseline / seconds:>7.2f}x")
