"""The bad-input table: each kind of sample, under on_error="raise" and on_error="nan".

Every row puts one odd sample after a good one. A row either must work (the
sample gets finite features) or must fail with a reason; under "raise" one
InvalidImageError names the sample (index, path) and says what was wrong, under
"nan" the sample's row is NaN, the good row is unchanged and a warning counts it.
That an EXIF-rotated photo comes out upright is checked pixel by pixel in test_images.
"""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from sktransfer import InvalidImageError, PretrainedFeaturizer

from .conftest import TINY_PREPROCESSING, make_tiny_backbone

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
}

ARRAY_ROWS = {
    "NaN": (np.full((8, 8, 3), np.nan), "NaN"),
    "inf": (np.full((8, 8, 3), np.inf), "infinity"),
    "wrong ndim": (np.zeros((2, 8, 8, 3), np.uint8), "not an image"),
    "zero-size": (np.zeros((0, 8, 3), np.uint8), "zero size"),
    "non-contiguous": (GOOD[:, ::-1], None),
    "read-only": (np.frombuffer(GOOD.tobytes(), np.uint8).reshape(GOOD.shape), None),
}


def featurizer(on_error):
    return PretrainedFeaturizer(
        make_tiny_backbone(),
        preprocessing=TINY_PREPROCESSING,
        progress=False,
        on_error=on_error,
        cache=None,
    )


def _check_row(sample, reason, path=None):
    X = [GOOD, sample] if path is None else [_save_good_next_to(path), sample]
    good_features = featurizer("raise").fit_transform(X[:1])
    if reason is None:
        features = featurizer("raise").fit_transform(X)
        assert np.isfinite(features).all()
        np.testing.assert_allclose(features[0], good_features[0], atol=1e-6)
        return
    with pytest.raises(InvalidImageError) as info:
        featurizer("raise").fit_transform(X)
    (failure,) = info.value.failures
    assert (failure.index, failure.path) == (1, path)
    assert reason in failure.reason and reason in str(info.value)
    with pytest.warns(UserWarning, match="1 of 2 samples"):
        features = featurizer("nan").fit_transform(X)
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
