"""How small may a file be decoded before its features change? The measure behind ``decode="fast"``.

``decode="fast"`` decodes a JPEG at the smallest libjpeg DCT scale (1/2, 1/4,
1/8) that keeps its shorter side at least k times the resize size. This script
measures what k costs, on phone-like JPEGs made from scikit-image's photos
(upscaled, sensor-like noise, quality 92, about 3 MB at 4032x3024):

1. the cosine between the default backbone's features of the reduced decode
   and of the full decode, by the ratio of the decoded shorter side to the
   resize size (the ratio is k at worst: 2048-px photos reach it exactly);
2. a linear probe (5-fold logistic regression, faces against non-faces of
   ``skimage.data.lfw_subset`` made phone-size) trained and tested on each
   decode, and its agreement with the full decode's predictions;
3. whether ``Image.reduce`` before the resize pays for large PNG, TIFF and WebP, and
   what it does to the features;
4. CMYK JPEGs and MPO files (a phone photo followed by a depth map), through
   the featurizer with ``decode="fast"`` against ``decode="full"``: the cosine,
   and what one decode costs each way. CMYK photos come two ways: Pillow's
   conversion (no black) and with full black generation (K = 255 - max(R, G, B),
   as print workflows make them); each is also shown decoded reduced (1/2), the
   way version 1 of the fast decode did.

Run: ``python benchmarks/decode_scale.py`` (about 9 minutes on 2 cores);
``--sections 4`` runs only section 4 (about 3 minutes of CPU).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from sktransfer import PretrainedFeaturizer, get_backbone_spec
from sktransfer._input.images import decode_image
from sktransfer._input.transforms import FAST_DECODE_FACTOR

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field")
SCALES = (2, 4, 8)
#: Photo sizes and the DCT scales tried on each: three sizes at every scale,
#: then phone sizes (12, 16, 48 and 8 megapixels) and their neighbours at the
#: scales that bring them near the threshold.
SIZES = (
    ((4032, 3024), SCALES),
    ((2731, 2048), SCALES),
    ((1981, 1486), SCALES),
    ((4000, 3000), (4,)),
    ((3960, 2970), (4,)),
    ((4624, 3468), (4,)),
    ((3264, 2448), (2, 4)),
    ((2000, 1500), (2,)),
    ((2560, 1920), (2,)),
    ((8000, 6000), (8,)),
    ((7920, 5940), (8,)),
)


def phone_jpeg(photo: np.ndarray, size=(4032, 3024), seed=0, quality=92) -> bytes:
    """A phone-like JPEG of ``photo``: 4:3 centre crop, upscaled, sensor noise, quality 92."""
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    h, w = photo.shape[:2]
    target = size[0] / size[1]
    if w / h > target:
        keep = round(h * target)
        photo = photo[:, (w - keep) // 2 :][:, :keep]
    else:
        keep = round(w / target)
        photo = photo[(h - keep) // 2 :][:keep]
    big = np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC), dtype=np.float32)
    rng = np.random.default_rng(seed)
    # Luminance noise plus weaker per-channel noise, as a small phone sensor gives.
    noise = rng.normal(0, 3.0, big.shape[:2])[..., None] + rng.normal(0, 1.5, big.shape)
    noisy = np.clip(big + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def features(featurizer, data: list[bytes], scale: int | None) -> np.ndarray:
    """Features of ``data`` decoded at 1/``scale`` (None: full decode) by the featurizer."""
    images = []
    for item in data:
        short = min(Image.open(io.BytesIO(item)).size)
        images.append(decode_image(item, None if scale is None else short // scale))
    return featurizer.transform(images)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def cosine_by_ratio(featurizer, resize: int):
    print("\n1. Cosine to the full decode's features, by decoded shorter side / resize size")
    print(f"{'photo size':>11} {'scale':>6} {'ratio':>6} {'min cos':>9} {'mean cos':>9}")
    import skimage.data

    sources = [getattr(skimage.data, name)() for name in PHOTOS]
    results = []
    for size, scales in SIZES:
        data = [phone_jpeg(photo, size, seed=i) for i, photo in enumerate(sources)]
        full = features(featurizer, data, None)
        for scale in scales:
            cos = cosine(features(featurizer, data, scale), full)
            results.append((size[1] / scale / resize, scale, size, cos))
    for ratio, scale, size, cos in sorted(results):
        name = f"{size[0]}x{size[1]}"
        print(f"{name:>11} 1/{scale:<4} {ratio:6.2f} {cos.min():9.5f} {cos.mean():9.5f}")


def probe(featurizer, n_per_class=30):
    from skimage.data import lfw_subset
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    print("\n2. Linear probe, faces vs non-faces (lfw_subset) as 4032x3024 JPEGs, 5-fold CV")
    faces = lfw_subset()  # 100 faces, then 100 non-faces, 25x25 floats
    chosen = np.r_[0:n_per_class, 100 : 100 + n_per_class]
    data = [phone_jpeg((faces[i] * 255).astype(np.uint8), seed=int(i)) for i in chosen]
    y = np.r_[np.zeros(n_per_class), np.ones(n_per_class)]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    full = features(featurizer, data, None)
    reference = cross_val_predict(model, full, y, cv=cv)
    print(f"{'decode':>8} {'ratio':>6} {'accuracy':>9} {'agrees w/ full':>15} {'min cos':>8}")
    print(f"{'full':>8} {3024 / 256:6.2f} {(reference == y).mean():9.3f} {1:15.3f} {1:8.5f}")
    for scale in SCALES:
        reduced = features(featurizer, data, scale)
        predicted = cross_val_predict(model, reduced, y, cv=cv)
        print(
            f"{'1/' + str(scale):>8} {3024 / scale / 256:6.2f} {(predicted == y).mean():9.3f} "
            f"{(predicted == reference).mean():15.3f} {cosine(reduced, full).min():8.5f}"
        )


def reduce_pays(featurizer, resize: int, k: float, repeat=3):
    import skimage.data
    import torch
    import torchvision.transforms.v2.functional as F

    min_side = round(k * resize)
    print(
        f"\n3. Large non-JPEG files (4032x3024): Image.reduce to >= {min_side} px before the resize"
    )
    print(f"{'format':>6} {'decode ms':>10} {'resize ms':>10} {'reduce+resize ms':>17}")
    photo = np.asarray(Image.open(io.BytesIO(phone_jpeg(skimage.data.coffee()))))

    def resized(rgb):
        return F.resize(torch.from_numpy(np.array(rgb)).permute(2, 0, 1), [resize], antialias=True)

    for fmt, options in (("PNG", {}), ("TIFF", {}), ("WebP", {"quality": 90})):
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format=fmt, **options)
        timings = {"decode": [], "resize": [], "reduce": []}
        for _ in range(repeat):
            start = time.perf_counter()
            image = Image.open(io.BytesIO(buffer.getvalue()))
            image.load()
            timings["decode"].append(time.perf_counter() - start)
            start = time.perf_counter()
            resized(np.asarray(image))
            timings["resize"].append(time.perf_counter() - start)
            start = time.perf_counter()
            resized(np.asarray(image.reduce(min(image.size) // min_side)))
            timings["reduce"].append(time.perf_counter() - start)
        best = {key: 1000 * min(value) for key, value in timings.items()}
        print(f"{fmt:>6} {best['decode']:10.1f} {best['resize']:10.1f} {best['reduce']:17.1f}")
    print("cosine of the features, reduced against full (lossless TIFFs of the photos):")
    sources = [getattr(skimage.data, name)() for name in PHOTOS]
    for size in ((4032, 3024), (2731, 2048)):
        data = []
        for i, photo in enumerate(sources):
            buffer = io.BytesIO()
            decoded = Image.open(io.BytesIO(phone_jpeg(photo, size, seed=i)))
            decoded.save(buffer, format="TIFF")
            data.append(buffer.getvalue())
        decoded = [Image.open(io.BytesIO(item)) for item in data]
        full = featurizer.transform(decoded)
        # Reduced here, not by decode_image: decode="fast" leaves these formats whole.
        factor = size[1] // min_side
        cos = cosine(featurizer.transform([image.reduce(factor) for image in decoded]), full)
        print(f"  {size[0]}x{size[1]}, reduce({factor}): min {cos.min():.5f} mean {cos.mean():.5f}")


def cmyk(rgb: np.ndarray, black: bool) -> Image.Image:
    """``rgb`` as CMYK: Pillow's conversion (K = 0), or with full black generation.

    With black, K = 255 - max(R, G, B) and C, M, Y what is left, which
    Pillow's CMYK to RGB conversion, (255 - C)(255 - K) / 255, inverts exactly.
    """
    if not black:
        return Image.fromarray(rgb).convert("CMYK")
    rgb = rgb.astype(np.float32)
    top = rgb.max(axis=-1, keepdims=True)
    cmy = 255 - 255 * rgb / np.maximum(top, 1)
    cmyk = np.concatenate([cmy, 255 - top], axis=-1)
    return Image.fromarray(np.round(cmyk).astype(np.uint8), "CMYK")


def phone_files(kind: str, photos, size) -> list[bytes]:
    """The phone JPEGs of ``photos`` at ``size`` as ``kind``: RGB, CMYK, CMYK+K or MPO files."""
    files = []
    for i, photo in enumerate(photos):
        data = phone_jpeg(photo, size, seed=i)
        if kind != "RGB":
            rgb = np.asarray(Image.open(io.BytesIO(data)))
            buffer = io.BytesIO()
            if kind == "MPO":
                # A depth map after the photo, as portrait modes save: 1/4 size, grayscale.
                depth = Image.fromarray(rgb).convert("L").reduce(4)
                Image.open(io.BytesIO(data)).save(
                    buffer, "MPO", save_all=True, append_images=[depth], quality=92
                )
                assert Image.open(buffer).format == "MPO"
            else:
                cmyk(rgb, black=kind == "CMYK+K").save(buffer, "JPEG", quality=92)
            data = buffer.getvalue()
        files.append(data)
    return files


def reduced_by_draft(data: bytes, scale: int) -> np.ndarray:
    """``data`` decoded at 1/``scale`` by libjpeg whatever its colours, as version 1 did."""
    image = Image.open(io.BytesIO(data))
    image.draft(None, (min(image.size) // scale,) * 2)
    return np.asarray(image.convert("RGB"))


def decode_ms(decode, data: list[bytes], repeat=3) -> float:
    """Median over ``data`` of the best of ``repeat`` runs of ``decode(item)``, in ms."""
    best = []
    for item in data:
        timings = []
        for _ in range(repeat):
            start = time.perf_counter()
            decode(item)
            timings.append(time.perf_counter() - start)
        best.append(1000 * min(timings))
    return float(np.median(best))


def cmyk_and_mpo(featurizer, resize: int, k: int):
    import skimage.data

    min_side = k * resize
    print(
        "\n4. CMYK and MPO phone photos: decode='fast' against decode='full', six photos each;"
        "\n   one decode in ms, median of three photos (best of 3 runs each)"
    )
    print(
        f"{'file':>22} {'size':>10} {'fast decodes':>13} {'min cos':>8} {'mean cos':>9} "
        f"{'fast ms':>8} {'full ms':>8}"
    )
    sources = [getattr(skimage.data, name)() for name in PHOTOS]
    fast = PretrainedFeaturizer(cache=None, progress=False, batch_size=8, decode="fast")
    full = PretrainedFeaturizer(cache=None, progress=False, batch_size=8, decode="full")
    fast.fit([np.zeros((8, 8, 3))])
    full.fit([np.zeros((8, 8, 3))])
    for size in ((4032, 3024), (2731, 2048)):
        for kind in ("RGB", "MPO", "CMYK", "CMYK+K"):
            data = phone_files(kind, sources, size)
            reference = full.transform(data)
            decoded = decode_image(data[0], min_side)
            scale = min(size) // min(decoded.shape[:2])
            timed = data[:3]
            ms_full = decode_ms(lambda item: decode_image(item), timed)
            ms_fast = decode_ms(lambda item: decode_image(item, min_side), timed)
            fast_decode = f"1/{scale}" if scale > 1 else "full"
            rows = [(kind, fast.transform(data), fast_decode, ms_fast)]
            if kind.startswith("CMYK"):
                drafted = featurizer.transform([reduced_by_draft(item, 2) for item in data])
                ms_drafted = decode_ms(lambda item: reduced_by_draft(item, 2), timed)
                rows.append((f"{kind}, reduced (v1)", drafted, "1/2", ms_drafted))
            for name, features_, decoded, ms in rows:
                cos = cosine(features_, reference)
                print(
                    f"{name:>22} {size[0]}x{size[1]:<5} {decoded:>13} {cos.min():8.5f} "
                    f"{cos.mean():9.5f} {ms:8.0f} {ms_full:8.0f}"
                )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4])
    sections = parser.parse_args().sections
    featurizer = PretrainedFeaturizer(cache=None, progress=False, batch_size=8)
    featurizer.fit([np.zeros((8, 8, 3))])
    resize = get_backbone_spec("efficientnet_lite0").preprocessing.resize_size
    if 1 in sections:
        cosine_by_ratio(featurizer, resize)
    if 2 in sections:
        probe(featurizer)
    if 3 in sections:
        reduce_pays(featurizer, resize, FAST_DECODE_FACTOR)
    if 4 in sections:
        cmyk_and_mpo(featurizer, resize, FAST_DECODE_FACTOR)


if __name__ == "__main__":
    main()
