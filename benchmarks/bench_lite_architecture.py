"""What building the default as the TF port costs: tf_efficientnet_lite0 vs efficientnet_lite0.

The packaged weights are a TensorFlow port, so the default is built as timm's
``tf_efficientnet_lite0`` (TF "SAME" padding: an explicit pad before strided
convolutions). This times both architectures with the same weights, the same
batches and the same settings as the featurizer (channels_last, inference
mode), alternating them so that load on a shared machine hits both alike,
and prints the throughput ratio. Run: ``python benchmarks/bench_lite_architecture.py``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import timm
import torch

from sktransfer._backbones import get_backbone_spec, load_backbone
from sktransfer._weights import load_state_dict

BATCH, BATCHES, ROUNDS = 16, 4, 5


def old_build():
    """The default as it was built before: timm's non-TF efficientnet_lite0."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    packaged = load_state_dict(get_backbone_spec("efficientnet_lite0").weights)
    model.load_state_dict(dict(zip(model.state_dict(), packaged.values())))
    model.reset_classifier(0)
    return model.eval()


def images_per_second(model, batches):
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch)
    return BATCH * len(batches) / (time.perf_counter() - start)


def main():
    torch.manual_seed(0)
    batches = [
        torch.randn(BATCH, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        for _ in range(BATCHES)
    ]
    models = {
        "tf_efficientnet_lite0 (now)": load_backbone("efficientnet_lite0"),
        "efficientnet_lite0 (before)": old_build(),
    }
    for model in models.values():
        model.to(memory_format=torch.channels_last)
        images_per_second(model, batches[:1])  # warm-up
    rates = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, model in models.items():
            rates[name].append(images_per_second(model, batches))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    for name, values in rates.items():
        print(f"{name:30s} {np.median(values):7.1f} images/s (median of {ROUNDS})")
    now, before = (np.median(v) for v in rates.values())
    print(f"ratio now / before: {now / before:.2f}")


if __name__ == "__main__":
    main()
