"""Is int8 worth offering? Speed and linear-probe accuracy of a statically quantised Lite0.

The default backbone is exported to ONNX (as ``engine="onnxruntime"`` does),
then quantised with ONNX Runtime's static post-training quantisation (QDQ,
per-channel int8 weights, uint8 activations), calibrated on images of the
task itself, as a user would calibrate on their own photos. Printed:

1. img/s of fp32 and int8 sessions on the same in-memory photos;
2. for scikit-image's textures (brick / grass / gravel) and faces vs
   non-faces: the cosine between int8 and fp32 features, and the 5-fold
   cross-validated accuracy of the same logistic regression on each.

Run: ``python benchmarks/bench_int8.py [--n 64] [--calibration 32]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import real_photos
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import get_backbone_spec, load_backbone
from sktransfer._engines.onnx import OnnxEngine, export_onnx
from sktransfer._engines.torch import run_batches
from sktransfer._input.images import ImageCollection
from sktransfer.datasets import load_faces, load_textures


def preprocessed(images, transform, batch_size=16):
    """Float32 (N, 3, S, S) batches of ``images``, as the featurizer feeds them."""
    collection = ImageCollection(images)
    for start in range(0, len(collection), batch_size):
        stop = min(start + batch_size, len(collection))
        yield torch.stack([transform(collection.load(i)) for i in range(start, stop)]).numpy()


def quantise(fp32: bytes, calibration_batches, folder: Path) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration_batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    source, prepared, target = (folder / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
    source.write_bytes(fp32)
    quant_pre_process(str(source), str(prepared))
    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # Without VNNI (AVX2 only), u8 x s8 products can saturate: 7-bit weights avoid it.
        reduce_range=not torch.cpu._is_vnni_supported(),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return target.read_bytes()


def features(engine, images, transform, batch_size=16):
    rows = [
        rows
        for _, rows, _ in run_batches(
            engine, ImageCollection(images), transform=transform, batch_size=batch_size
        )
    ]
    return np.concatenate(rows)


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--calibration", type=int, default=32)
    args = parser.parse_args()
    print(
        f"onnxruntime int8 on CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"VNNI {torch.cpu._is_vnni_supported()}; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    transform = get_backbone_spec("efficientnet_lite0").preprocessing
    fp32 = export_onnx(load_backbone("efficientnet_lite0").eval(), transform.input_size, "bench")
    photos = real_photos(args.n)
    tasks = {"textures (brick/grass/gravel)": load_textures(), "faces vs non-faces": load_faces()}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        # Speed: calibrated on the photos themselves.
        calibration = [photos[i] for i in rng.choice(len(photos), args.calibration, False)]
        start = time.perf_counter()
        int8 = quantise(fp32, preprocessed(calibration, transform), Path(folder))
        print(f"calibration and quantisation: {time.perf_counter() - start:.0f} s")
        engines = {"fp32": OnnxEngine(fp32, "cpu"), "int8": OnnxEngine(int8, "cpu")}
        print(f"\n1. {args.n} in-memory photos, batch 16")
        results = {}
        for name, engine in engines.items():
            features(engine, photos[:16], transform)
            start = time.perf_counter()
            results[name] = features(engine, photos, transform)
            seconds = time.perf_counter() - start
            print(f"onnxruntime {name:<5} {args.n / seconds:8.1f} img/s")
        c = cosine(results["int8"], results["fp32"])
        print(f"int8 vs fp32 cosine: min {c.min():.4f}, mean {c.mean():.4f}")

        print("\n2. linear probe, 5-fold CV accuracy (calibrated on the task's own images)")
        for task, (images, labels) in tasks.items():
            chosen = rng.choice(len(images), args.calibration, False)
            int8 = quantise(fp32, preprocessed(images[chosen], transform), Path(folder))
            int8_engine = OnnxEngine(int8, "cpu")
            fp32_rows = features(engines["fp32"], images, transform)
            int8_rows = features(int8_engine, images, transform)
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            folds = StratifiedKFold(5, shuffle=True, random_state=0)
            scores = {
                name: cross_val_score(probe, rows, labels, cv=folds).mean()
                for name, rows in (("fp32", fp32_rows), ("int8", int8_rows))
            }
            c = cosine(int8_rows, fp32_rows)
            print(
                f"{task:<30} n={len(images)}: fp32 {scores['fp32']:.3f}, int8 "
                f"{scores['int8']:.3f} ({100 * (scores['int8'] - scores['fp32']):+.1f} points); "
                f"cosine min {c.min():.4f}, mean {c.mean():.4f}"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
