"""Featurizing and fine-tuning on phone-size JPEG photos, where decoding is the cost.

Phone photos are 4032x3024 JPEGs of 2-5 MB; the network sees them at 224 px.
This makes such files from scikit-image's real photos (upscaled, with
sensor-like noise, saved at quality 92: about 3 MB each, kept in ``--folder``
so reruns are quick) and prints, in one run, img/s and ratios of:

1. featurizing (``cache=None``, so every run does the whole work):
   a naive loop (PIL full decode, then ``PretrainedFeaturizer`` on the
   arrays) = the baseline; PIL's full decode alone; the featurizer on the
   files for both engines, and with ``decode="full"`` (the exact decode)
   where this version of sktransfer has that parameter; the featurizer on
   the same images pre-decoded to 256-px arrays; the network alone on ready
   tensors, the ceiling for this input.
1b. decoding alone at each libjpeg DCT scale, and the least files / arrays
   ratio it allows: the cores decode and compute, so a file costs at least
   its decode plus what the same image costs as an array.
2. a 4-epoch augmented fit (``FineTuneClassifier(augment=True)``) on the
   files against the same fit on the images given as small arrays.
3. peak RSS of a fresh process featurizing ``--rss-n`` phone JPEGs (the
   ``--n`` files, cycled), to check the memory stays bounded.

The load average is printed beside every row: the numbers are only
comparable within one run, on a quiet machine.

Run: ``python benchmarks/bench_photos.py [--n 32] [--batch-size 16]
[--folder DIR] [--finetune-n 16] [--epochs 4] [--rss-n 64] [--no-finetune]
[--no-rss]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import PHOTOS, best_time, plain_model
from PIL import Image

from sktransfer import FineTuneClassifier, PretrainedFeaturizer

PHONE_SIZE = (4032, 3024)
SMALL_SHORT_SIDE = 256


def phone_jpegs(n, folder, seed=0):
    """``n`` distinct 4032x3024 JPEGs (quality 92) of real photos with sensor-like noise.

    Files already in ``folder`` are reused, so only the first run pays for
    making them (a few seconds each).
    """
    import skimage.data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"phone_{seed}_{i:05d}.jpg"
        paths.append(str(path))
        if path.exists():
            continue
        rng = np.random.default_rng([seed, i])
        photo = Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])())
        # A different framing of each source photo, so no two files are alike.
        w, h = photo.size
        scale = rng.uniform(1.0, 1.4)
        left, top = rng.uniform(0, w * (1 - 1 / scale)), rng.uniform(0, h * (1 - 1 / scale))
        box = (left, top, left + w / scale, top + h / scale)
        pixels = np.asarray(photo.convert("RGB").resize(PHONE_SIZE, Image.BICUBIC, box=box))
        pixels = pixels.astype(np.float32)
        # Read noise shared by the channels, plus shot noise growing with brightness.
        noise = rng.standard_normal(pixels.shape, dtype=np.float32) * (2.0 + 3.5 * pixels / 255)
        noise += 2.5 * rng.standard_normal(pixels.shape[:2] + (1,), dtype=np.float32)
        noisy = np.clip(pixels + noise, 0, 255).astype(np.uint8)
        partial = path.with_suffix(".part")
        Image.fromarray(noisy).save(partial, "JPEG", quality=92)
        partial.rename(path)
    return paths


def full_decode(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def small_array(path):
    """The photo decoded in full, then shrunk to a shorter side of 256 px."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        scale = SMALL_SHORT_SIDE / min(w, h)
        return np.array(image.resize((round(w * scale), round(h * scale)), Image.BILINEAR))


def featurizer(**params):
    return PretrainedFeaturizer(progress=False, cache=None, **params).fit(
        [np.zeros((1, 1, 3), np.uint8)]
    )


def has_param(estimator_class, name):
    return name in estimator_class().get_params()


def load():
    return os.getloadavg()[0]


def table(rows, title, baseline_name):
    """Rows of (name, seconds, n, load); ratios against the row named ``baseline_name``."""
    print(f"\n{title}")
    print(f"{'what':<58} {'seconds':>8} {'img/s':>7} {'vs ' + baseline_name:>9} {'load':>5}")
    baseline = rows[0][1] / rows[0][2]
    for name, seconds, n, load_average in rows:
        ratio = baseline / (seconds / n)
        print(f"{name:<58} {seconds:>8.2f} {n / seconds:>7.1f} {ratio:>8.2f}x {load_average:>5.1f}")


def featurize_rows(paths, bs, repeat):
    n = len(paths)
    rows = []

    def row(name, fn):
        seconds, result = best_time(fn, repeat)
        rows.append((name, seconds, n, load()))
        return result

    ours = featurizer(batch_size=bs)
    ours.transform([full_decode(paths[0])])  # builds the backbone once, as any later call finds it

    def naive():
        out = []
        for start in range(0, n, bs):
            out.append(ours.transform([full_decode(p) for p in paths[start : start + bs]]))
        return np.concatenate(out)

    reference = row("naive loop: PIL full decode, featurizer on the arrays", naive)
    row("PIL full decode alone", lambda: [full_decode(p) for p in paths])
    features = {}
    decodes = [None] + (["full"] if has_param(PretrainedFeaturizer, "decode") else [])
    for decode in decodes:
        for engine in ("torch", "onnxruntime"):
            params = {"engine": engine} | ({"decode": decode} if decode else {})
            model = featurizer(batch_size=bs, **params)
            model.transform(paths[:1])  # the ONNX export, once per process
            label = ", ".join(f'{k}="{v}"' for k, v in params.items())
            features[label] = row(
                f"featurizer on the files, {label}", lambda m=model: m.transform(paths)
            )
    small = [small_array(p) for p in paths]
    arrays_cpu = {}
    for engine in ("torch", "onnxruntime"):
        model = featurizer(batch_size=bs, engine=engine)
        row(f'featurizer on 256-px arrays, engine="{engine}"', lambda m=model: m.transform(small))
        arrays_cpu[engine] = cpu_seconds(lambda m=model: m.transform(small)) / n
    network_rows(rows, n, bs)
    table(rows, f"1. featurizing {n} phone JPEGs (4032x3024, ~3 MB), batch {bs}", "naive")
    for label, values in features.items():
        cosine = (values * reference).sum(1) / (
            np.linalg.norm(values, axis=1) * np.linalg.norm(reference, axis=1)
        )
        print(f"features of {label} vs the full decode: min cosine {cosine.min():.5f}")
    if has_param(PretrainedFeaturizer, "decode"):  # older versions cannot decode reduced
        decode_floor(paths, arrays_cpu)


def cpu_seconds(fn):
    """CPU time of this process (all its threads) over one run of ``fn``."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def decode_floor(paths, arrays_cpu):
    """What decoding alone costs at each DCT scale, and the bound that puts on files.

    Decoding and the network share the cores, so per image the files cost at
    least the decode's CPU time plus what the same image costs as an array:
    files / arrays >= about 1 + decode CPU / array CPU, however the work overlaps.
    """
    from sktransfer._input.images import decode_image

    data = [Path(p).read_bytes() for p in paths]
    short = min(PHONE_SIZE)
    print("\n1b. decoding alone, one thread (CPU ms per file); the least files / arrays it allows")
    print(f"{'decode':<24} {'CPU ms':>7} {'torch >=':>9} {'onnxruntime >=':>15}")
    for scale in (1, 2, 4, 8):
        decode_image(data[0], short // scale)
        # One thread decodes, so its wall time is its CPU time (process_time would
        # also count torch's idle threads spinning).
        start = time.perf_counter()
        for item in data:
            decode_image(item, short // scale)
        per_file = 1000 * (time.perf_counter() - start) / len(data)
        bounds = [1 + per_file / (1000 * arrays_cpu[e]) for e in ("torch", "onnxruntime")]
        name = "full" if scale == 1 else f"libjpeg DCT scale 1/{scale}"
        print(f"{name:<24} {per_file:7.1f} {bounds[0]:8.2f}x {bounds[1]:14.2f}x")
    print(
        "array CPU ms per image: " + ", ".join(f"{e} {1000 * c:.1f}" for e, c in arrays_cpu.items())
    )


def network_rows(rows, n, bs):
    """The network alone on ready (N, 3, 224, 224) tensors: the ceiling for this input."""
    batch = torch.randn(bs, 3, 224, 224)
    network = plain_model().to(memory_format=torch.channels_last)
    batches = -(-n // bs)

    def torch_alone():
        with torch.inference_mode():
            for _ in range(batches):
                network(batch.contiguous(memory_format=torch.channels_last))

    torch_alone()
    seconds, _ = best_time(torch_alone)
    rows.append(
        ("network alone, torch fp32 channels_last (ceiling)", seconds, batches * bs, load())
    )
    try:
        from sktransfer._engines.onnx import OnnxEngine, export_onnx
    except ImportError:
        return
    session = OnnxEngine(export_onnx(plain_model(), 224, "bench_photos"), torch.device("cpu"))
    session(batch)
    seconds, _ = best_time(lambda: [session(batch) for _ in range(batches)])
    rows.append(("network alone, ONNX Runtime fp32 (ceiling)", seconds, batches * bs, load()))


def finetune_rows(paths, epochs, bs):
    n = len(paths)
    labels = np.arange(n) % 2
    small = [small_array(p) for p in paths]
    rows = []
    for name, X in (("files", paths), ("256-px arrays", small)):
        model = FineTuneClassifier(
            freeze="backbone",
            augment=True,
            max_epochs=epochs,
            batch_size=bs,
            cache=None,
            progress=False,
            random_state=0,
        )
        start = time.perf_counter()
        model.fit(X, labels)
        rows.append((f"fit on the {name}", time.perf_counter() - start, n * epochs, load()))
    # Ratio against the arrays: how much decoding files costs a fit.
    rows.reverse()
    table(
        rows,
        f'2. FineTuneClassifier(freeze="backbone", augment=True, max_epochs={epochs}) on {n} '
        "photos (img/s counts every epoch)",
        "arrays",
    )


def peak_rss_mib():
    """This process's peak RSS (VmHWM: unlike ``ru_maxrss``, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def rss_child(paths, count, bs):
    """In this fresh process: featurize ``count`` files (``paths`` cycled); print peak RSS."""
    model = featurizer(batch_size=bs)
    model.transform([np.zeros((8, 8, 3), np.uint8)])
    before = peak_rss_mib()
    items = [paths[i % len(paths)] for i in range(count)]
    start = time.perf_counter()
    model.transform(items)
    seconds = time.perf_counter() - start
    print(f"{count} {seconds:.2f} {before:.0f} {peak_rss_mib():.0f}")


def rss_row(paths, count, bs, folder):
    command = [sys.executable, __file__, "--rss-child", str(count), "--folder", str(folder)]
    command += ["--n", str(len(paths)), "--batch-size", str(bs)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    count, seconds, before, peak = result.stdout.split()[-4:]
    print(
        f"\n3. peak RSS featurizing {count} phone JPEGs in a fresh process (batch {bs}): "
        f"{float(peak):.0f} MiB (before featurizing: {float(before):.0f} MiB), "
        f"{int(count) / float(seconds):.1f} img/s, load {load():.1f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="phone JPEGs to featurize")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--folder", default=Path(tempfile.gettempdir()) / "sktransfer-phone-jpegs")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs per row")
    parser.add_argument("--finetune-n", type=int, default=16, help="photos to fine-tune on")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rss-n", type=int, default=64, help="JPEGs featurized for peak RSS")
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    bs = args.batch_size
    paths = phone_jpegs(max(args.n, args.finetune_n), args.folder)
    if args.rss_child is not None:
        rss_child(paths[: args.n], args.rss_child, bs)
        return
    megabytes = np.mean([os.path.getsize(p) for p in paths]) / 1e6
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load():.1f}; "
        f"{len(paths)} JPEGs of {megabytes:.1f} MB on average in {args.folder}"
    )
    featurize_rows(paths[: args.n], bs, args.repeat)
    if not args.no_finetune:
        finetune_rows(paths[: args.finetune_n], args.epochs, bs)
    if not args.no_rss:
        rss_row(paths[: args.n], args.rss_n, bs, args.folder)
    print(f"load average at the end: {load():.1f}")


if __name__ == "__main__":
    main()
