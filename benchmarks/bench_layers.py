"""Cost of storing every stage: the default backbone's pass with and without every stage pooled.

With a cache, ``PretrainedFeaturizer`` runs :class:`~sktransfer._layers.StagePooling`
over all stages (so a later search over ``layers`` is free) instead of the plain
backbone. This times both on the same batch, alternating, in one process, and
prints the ratio and the floats stored per image::

    python benchmarks/bench_layers.py --repeats 6
"""

import argparse
import statistics
import time

import torch

from sktransfer._backbones import load_backbone, resolve_spec
from sktransfer._layers import Plan, StagePooling


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    spec = resolve_spec(args.backbone)
    backbone = load_backbone(spec).to(memory_format=torch.channels_last).eval()
    every_stage = StagePooling(backbone, Plan.complete(spec.stages))
    size = spec.preprocessing.input_size
    batch = torch.randn(args.batch_size, 3, size, size).to(memory_format=torch.channels_last)
    times = {"backbone alone": [], "every stage pooled": []}
    with torch.inference_mode():
        backbone(batch), every_stage(batch)  # warm-up
        for _ in range(args.repeats):
            for name, model in (("backbone alone", backbone), ("every stage pooled", every_stage)):
                start = time.perf_counter()
                outputs = model(batch)
                times[name].append(time.perf_counter() - start)
            stored = outputs.shape[1]
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in median.items():
        print(f"{name:<20}{args.batch_size / seconds:8.1f} img/s")
    ratio = median["every stage pooled"] / median["backbone alone"]
    print(f"time ratio, every stage / alone: {ratio:.3f}")
    print(f"floats stored per image: {stored} (the model's own features alone: {spec.feature_dim})")


if __name__ == "__main__":
    main()
