"""The bad-input table: each kind of sample, under on_error="raise" and on_error="nan".

Every row puts one odd sample after a good one. A row either must work (the
sample gets finite features) or must fail with a reason; under "raise" one
InvalidImageError names the sample (index, path) and says what was wrong, under
"nan" the sample's row is NaN, the good row is unchanged and a warning counts it.
That an EXIF-rotated photo comes out upright is checked pixel by pixel in test_images.
"""

import collections
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageOps, UnidentifiedImageError

from sktransfer import FineTuneClassifier, InvalidImageError, PretrainedFeaturizer
from sktransfer._input.images import ImageCollection
from sktransfer._store import cache_info, clear_cache
from sktransfer._store.keys import content_hash

from ._helpers import (
    ASCII,
    RESOLUTION_UNIT,
    exif_entries,
    phone_exif,
    retyped,
    run_python,
)
from .conftest import TINY_PREPROCESSING, make_tiny_backbone

UINT8_TOP = np.float32(255)
GOOD = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


def _save(path, image, **kwargs):
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path, **kwargs)
    return str(path)


def _png_claiming(width, height):
    """A tiny valid-looking PNG whose header claims width x height pixels."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _truncated_jpeg(path):
    _save(path, np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _corrupt_png(path):
    _save(path, GOOD)
    data = bytearray(path.read_bytes())
    data[60:80] = bytes(20)
    path.write_bytes(bytes(data))
    return str(path)


def _exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(path, GOOD, exif=exif)


def _exif_mistyped(path, fmt):
    """A rotated photo whose resolution unit is declared ASCII: rewriting such EXIF raises."""
    return _save(path, GOOD, format=fmt, exif=retyped(phone_exif(), RESOLUTION_UNIT, ASCII))


def _exif_unreadable(path):
    """A WebP whose EXIF block has no valid TIFF header: reading its orientation raises."""
    block = phone_exif()
    return _save(path, GOOD, format="WEBP", exif=block[:6] + b"XX" + block[8:])


# id -> (make the sample from a tmp folder, None if it must work else a reason substring)
FILE_ROWS = {
    "missing file": (lambda d: str(d / "missing.jpg"), "does not exist"),
    "directory": (lambda d: (d / "folder.jpg").mkdir() or str(d / "folder.jpg"), "directory"),
    "0-byte file": (lambda d: (d / "e.jpg").write_bytes(b"") or str(d / "e.jpg"), "empty"),
    "text named .jpg": (
        lambda d: (d / "t.jpg").write_text("hi") and str(d / "t.jpg"),
        "not an image",
    ),
    "truncated JPEG": (lambda d: _truncated_jpeg(d / "cut.jpg"), "truncated"),
    "corrupt PNG": (lambda d: _corrupt_png(d / "bad.png"), "corrupt"),
    "decompression bomb": (
        lambda d: (d / "bomb.png").write_bytes(_png_claiming(60000, 60000)) and str(d / "bomb.png"),
        "decompression bomb",
    ),
    "PNG named .jpg": (lambda d: _save(d / "p.jpg", GOOD, format="PNG"), None),
    "grayscale": (lambda d: _save(d / "g.png", GOOD[..., 0]), None),
    "RGBA": (lambda d: _save(d / "a.png", Image.fromarray(GOOD).convert("RGBA")), None),
    "palette": (lambda d: _save(d / "p.png", Image.fromarray(GOOD).convert("P")), None),
    "16-bit": (lambda d: _save(d / "d.png", (GOOD[..., 0].astype(np.uint16) * 257)), None),
    "CMYK": (lambda d: _save(d / "c.jpg", Image.fromarray(GOOD).convert("CMYK")), None),
    "1 pixel": (lambda d: _save(d / "one.png", GOOD[:1, :1]), None),
    "very elongated": (lambda d: _save(d / "long.png", np.zeros((2, 3000, 3), np.uint8)), None),
    "EXIF-rotated": (lambda d: _exif_rotated(d / "r.jpg"), None),
    "mistyped EXIF tag, JPEG": (lambda d: _exif_mistyped(d / "m.jpg", "JPEG"), None),
    "mistyped EXIF tag, WebP": (lambda d: _exif_mistyped(d / "m.webp", "WEBP"), None),
    "unreadable EXIF": (lambda d: _exif_unreadable(d / "x.webp"), "malformed EXIF"),
    "32-bit float TIFF in 0-1": (
        lambda d: _save(d / "f.tif", GOOD[..., 0] / np.float32(255)),
        None,
    ),
    "32-bit float TIFF": (
        lambda d: _save(d / "f.tif", GOOD[..., 0].astype(np.float32) * 4),
        "is a 32-bit float image (PIL mode 'F', float32) with values in [0, 1020]",
    ),
    "32-bit integer TIFF": (
        lambda d: _save(d / "i.tif", GOOD[..., 0].astype(np.int32) - 128),
        "is a 32-bit integer image (PIL mode 'I', int32) with values in [-128, 127]",
    ),
}

ARRAY_ROWS = {
    "NaN": (np.full((8, 8, 3), np.nan), "NaN"),
    "inf": (np.full((8, 8, 3), np.inf), "infinity"),
    "wrong ndim": (np.zeros((2, 8, 8, 3), np.uint8), "not an image"),
    "zero-size": (np.zeros((0, 8, 3), np.uint8), "zero size"),
    "non-contiguous": (GOOD[:, ::-1], None),
    "read-only": (np.frombuffer(GOOD.tobytes(), np.uint8).reshape(GOOD.shape), None),
}


def featurizer(on_error, cache=None):
    return PretrainedFeaturizer(
        make_tiny_backbone(),
        preprocessing=TINY_PREPROCESSING,
        progress=False,
        on_error=on_error,
        cache=cache,
    )


def _check_row(sample, reason, path=None, good=GOOD, cache=None):
    X = [good, sample] if path is None else [_save_good_next_to(path), sample]
    good_features = featurizer("raise").fit_transform(X[:1])
    if reason is None:
        features = featurizer("raise", cache).fit_transform(X)
        assert np.isfinite(features).all()
        np.testing.assert_allclose(features[0], good_features[0], atol=1e-6)
        return
    with pytest.raises(InvalidImageError) as info:
        featurizer("raise", cache).fit_transform(X)
    (failure,) = info.value.failures
    assert (failure.index, failure.path) == (1, path)
    assert reason in failure.reason and reason in str(info.value)
    with pytest.warns(UserWarning, match="1 of 2 samples"):
        features = featurizer("nan", cache).fit_transform(X)
    assert np.isnan(features[1]).all()
    np.testing.assert_allclose(features[0], good_features[0], atol=1e-6)


def _save_good_next_to(path):
    return _save(f"{path}.good.png", GOOD)


@pytest.mark.parametrize("row", FILE_ROWS, ids=list(FILE_ROWS))
def test_files(row, tmp_path):
    make, reason = FILE_ROWS[row]
    path = make(tmp_path)
    _check_row(path, reason, path=path)


@pytest.mark.parametrize("row", ARRAY_ROWS, ids=list(ARRAY_ROWS))
def test_arrays(row):
    array, reason = ARRAY_ROWS[row]
    _check_row(array, reason)


def _closed_on_leaving_with(path):
    with Image.open(path) as image:
        pass
    return image


def _closed_by_close(path):
    image = Image.open(path)
    image.load()
    image.close()
    return image


def _loaded_before_closing(path):
    with Image.open(path) as image:
        image.load()
    return image


CLOSED = "the PIL image is closed: pass the path, or call load() before closing"
# id -> (make the PIL image from a file's path, None if it must work else a reason substring)
PIL_ROWS = {
    "closed on leaving with": (_closed_on_leaving_with, CLOSED),
    "closed by close()": (_closed_by_close, CLOSED),
    "loaded before closing": (_loaded_before_closing, None),
}


@pytest.mark.parametrize("cache", [None, "memory"])
@pytest.mark.parametrize("row", PIL_ROWS, ids=list(PIL_ROWS))
def test_pil_images(row, cache, tmp_path):
    make, reason = PIL_ROWS[row]
    _check_row(
        make(_save(tmp_path / "a.png", GOOD)), reason, good=Image.fromarray(GOOD), cache=cache
    )


class TestWholeInputErrors:
    """Problems of the whole input are raised whatever on_error says."""

    @pytest.mark.parametrize("on_error", ["raise", "nan"])
    def test_object_array_mixing_paths_and_arrays(self, on_error, tmp_path):
        X = np.array([_save(tmp_path / "g.png", GOOD), GOOD], dtype=object)
        with pytest.raises(InvalidImageError, match="sample 1: is an array but sample 0 is a path"):
            featurizer(on_error).fit(X)

    @pytest.mark.parametrize("on_error", ["raise", "nan"])
    def test_empty_input(self, on_error):
        with pytest.raises(ValueError, match="no images: X is empty"):
            featurizer(on_error).fit([])


def _png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


ONE_IMAGE = {
    "HxWx3 array": GOOD,
    "3xHxW tensor": torch.from_numpy(GOOD).permute(2, 0, 1),
    "encoded bytes": _png_bytes(GOOD),
}


class TestOneImageIsRefused:
    """A lone image would be read as a batch of pixel rows: every entry point refuses it."""

    MESSAGE = r"single image of shape|wrap a single image in a list"

    @pytest.mark.parametrize("image", ONE_IMAGE.values(), ids=list(ONE_IMAGE))
    def test_featurizer_fit_and_transform(self, image):
        with pytest.raises(ValueError, match=self.MESSAGE):
            featurizer("nan").fit(image)
        fitted = featurizer("raise").fit([GOOD])
        with pytest.raises(ValueError, match=self.MESSAGE):
            fitted.transform(image)
        assert fitted.transform([image] if isinstance(image, bytes) else image[None]).shape[0] == 1

    def test_fine_tuner_fit_and_predict(self):
        labels = np.array(["a", "b"] * 15)  # as many labels as GOOD has rows
        clf = FineTuneClassifier(
            make_tiny_backbone(),
            preprocessing=TINY_PREPROCESSING,
            max_epochs=1,
            batch_size=4,
            train_split=None,
            verbose=0,
        )
        with pytest.raises(ValueError, match=self.MESSAGE):
            clf.fit(GOOD, labels)
        clf.fit(np.stack([GOOD, GOOD[::-1]]), labels[:2])
        with pytest.raises(ValueError, match=self.MESSAGE):
            clf.predict(GOOD)
        assert clf.predict(GOOD[None]).shape == (1,)


def test_encoded_bytes_get_the_features_of_their_file(tmp_path):
    path = _save(tmp_path / "a.png", GOOD)
    data = open(path, "rb").read()
    np.testing.assert_array_equal(
        featurizer("raise").fit_transform([data]), featurizer("raise").fit_transform([path])
    )
    assert content_hash(data) == content_hash(path)  # one cache entry for both


def test_missing_value_gives_a_nan_row():
    with pytest.warns(UserWarning, match="1 of 3 samples"):
        features = featurizer("nan").fit_transform([GOOD, None, GOOD])
    assert np.isnan(features[1]).all() and np.isfinite(features[[0, 2]]).all()
    with pytest.raises(InvalidImageError, match=r"sample 1: is missing \(None\)"):
        featurizer("raise").fit_transform([GOOD, None])


@pytest.mark.slow  # starts other Python processes
def test_lifting_pillows_pixel_limit_before_import_keeps_ours(tmp_path):
    """Users of large scans set PIL.Image.MAX_IMAGE_PIXELS = None, often before any import."""
    good = _save(tmp_path / "good.png", GOOD)
    (tmp_path / "bomb.png").write_bytes(_png_claiming(60000, 60000))
    script = f"""
import warnings
import PIL.Image
PIL.Image.MAX_IMAGE_PIXELS = None
import numpy as np
from tests.conftest import TINY_PREPROCESSING, make_tiny_backbone
from sktransfer import PretrainedFeaturizer
featurizer = PretrainedFeaturizer(make_tiny_backbone(), preprocessing=TINY_PREPROCESSING,
                                  progress=False, cache=None, on_error="nan")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    features = featurizer.fit_transform([{good!r}, {str(tmp_path / "bomb.png")!r}])
assert np.isfinite(features[0]).all() and np.isnan(features[1]).all(), features
assert "decompression bomb" in str(caught[-1].message), caught[-1].message
"""
    run_python(script, timeout=120)


def test_file_replaced_while_transforming_is_stored_under_what_was_decoded(tmp_path, monkeypatch):
    """Hash and decode the same bytes: the stored key matches the decoded content."""
    import sktransfer._featurizer as featurizer_module

    other = np.ascontiguousarray(GOOD[::-1])
    path = _save(tmp_path / "a.png", GOOD)
    fresh = featurizer("raise").fit_transform([GOOD, other])  # no cache: the truth
    real_hash, calls = content_hash, []

    def hash_then_replace(item):
        # The first call is the cache lookup; the file changes right after it.
        digest = real_hash(item)
        calls.append(item)
        if len(calls) == 1:
            _save(path, other)
        return digest

    monkeypatch.setattr(featurizer_module, "content_hash", hash_then_replace)
    clear_cache("memory")
    cached = featurizer("raise").set_params(cache="memory").fit([path])
    np.testing.assert_allclose(cached.transform([path])[0], fresh[1], atol=1e-6)
    monkeypatch.undo()
    # One image: each of the tiny backbone's 3 stages averaged and maxed, and its own features.
    assert cache_info("memory").entries == 2 * 3 + 1
    # Put the old content back: its features must be its own, not the replacement's.
    _save(path, GOOD)
    np.testing.assert_allclose(cached.transform([path])[0], fresh[0], atol=1e-6)
    _save(path, other)
    np.testing.assert_allclose(cached.transform([path])[0], fresh[1], atol=1e-6)
    clear_cache("memory")


_array_images = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
    shape=st.one_of(
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4, 5])),
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
    ),
)  # float elements include NaN and infinity


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_array_images)
def test_any_array_gives_features_or_a_clear_error(array):
    """Never a crash deep inside torch: finite features of the right shape, or our error."""
    estimator = featurizer("raise")
    try:
        features = estimator.fit_transform([array])
    except InvalidImageError as error:
        (failure,) = error.failures
        assert failure.index == 0 and failure.reason
        return
    assert features.shape == (1, estimator.n_features_out_)
    assert np.isfinite(features).all()


def _fuzzed(block: bytes, rng) -> bytes:
    """``block`` damaged one way: a tag's type or count, a few bytes, its header or its end."""
    order, entries = exif_entries(block)
    at = int(rng.choice(list(entries.values())))
    data = bytearray(block)
    damage = rng.integers(5)
    if damage == 0:  # declared of another type (EXIF types are 1-13)
        data[at + 2 : at + 4] = struct.pack(order + "H", int(rng.integers(0, 20)))
    elif damage == 1:  # another number of values
        count = int(rng.choice([0, 2, 3, 7, 255, 2**16, 2**31]))
        data[at + 4 : at + 8] = struct.pack(order + "I", count)
    elif damage == 2:  # bytes overwritten anywhere after the b"Exif\0\0" marker
        for where in rng.integers(6, len(data), rng.integers(1, 5)):
            data[where] = rng.integers(256)
    elif damage == 3:  # a byte of the TIFF header: byte order, magic number, first IFD's offset
        data[rng.integers(6, 14)] = rng.integers(256)
    else:
        data = data[: rng.integers(8, len(data))]
    return bytes(data)


def test_fuzzed_exif_blocks_give_features_or_a_named_error(tmp_path):
    """1,000 damaged EXIF blocks of phone photos: each file decodes or names itself.

    The old decode (``ImageOps.exif_transpose``, which rewrites the block)
    raised struct.error, SyntaxError, TypeError or AttributeError on some of
    these, outside the handling of bad samples, and stopped the whole call.
    """
    rng = np.random.default_rng(24)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    blocks = [phone_exif(orientation) for orientation in range(1, 9)]
    paths, old_crashes = [], collections.Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns of each corrupt block it reads
        for i in range(1000):
            fmt = ("JPEG", "WEBP")[i % 2]
            block = _fuzzed(blocks[i // 2 % 8], rng)
            paths.append(_save(tmp_path / f"{i}.{fmt.lower()}", pixels, format=fmt, exif=block))
            try:
                image = Image.open(paths[-1])
            except UnidentifiedImageError:
                continue  # so damaged that the file is no image; named as such below
            with image:
                try:
                    ImageOps.exif_transpose(image)
                except (struct.error, SyntaxError, TypeError, AttributeError) as exc:
                    old_crashes[fmt, type(exc).__name__] += 1
            with Image.open(paths[-1]) as image:
                content_hash(image)  # hashing a PIL image reads its orientation too
        # The blocks include ones that crashed the old decode, in both formats.
        assert old_crashes["JPEG", "error"] and old_crashes["WEBP", "error"], old_crashes
        assert old_crashes["WEBP", "SyntaxError"], old_crashes

        full, fast = ImageCollection(paths), ImageCollection(paths, min_side=8)
        bad = []
        for i, path in enumerate(paths):
            try:
                upright = full.load(i)
            except InvalidImageError as error:
                (failure,) = error.failures
                assert (failure.index, failure.path) == (i, path) and failure.reason
                with pytest.raises(InvalidImageError):
                    fast.load(i)
                bad.append(i)
                continue
            # Fast and full decodes turn it the same way; a JPEG decodes at 1/2.
            half = 2 if path.endswith(".jpeg") else 1
            assert fast.load(i).shape == (upright.shape[0] // half, upright.shape[1] // half, 3)
        assert 0 < len(bad) < len(paths) // 10

        # Through the featurizer and its store: the bad files and as many good ones.
        sample = sorted(bad + [i for i in range(len(paths)) if i not in bad][: len(bad)])
        with pytest.warns(UserWarning, match=f"{len(bad)} of {len(sample)} samples"):
            features = featurizer("nan", str(tmp_path / "store")).fit_transform(
                [paths[i] for i in sample]
            )
    is_bad = np.isin(sample, bad)
    assert np.isnan(features[is_bad]).all() and np.isfinite(features[~is_bad]).all()
