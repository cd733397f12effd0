"""Image input: every accepted kind decodes to RGB, every bad sample is named."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sktransfer import InvalidImageError
from sktransfer._input import images as images_module
from sktransfer._input.images import ImageCollection, decode_image
from sktransfer._store.keys import content_hash

from ._helpers import ASCII, RESOLUTION_UNIT, phone_exif, retyped


def _rgb(height=20, width=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _decode_file(path):
    return ImageCollection([str(path)]).load(0)


class TestAcceptedInputs:
    def test_png_file_decodes_exactly(self, tmp_path):
        image = _rgb()
        Image.fromarray(image).save(tmp_path / "a.png")
        assert np.array_equal(_decode_file(tmp_path / "a.png"), image)

    def test_png_with_jpg_extension_works(self, tmp_path):
        image = _rgb()
        Image.fromarray(image).save(tmp_path / "a.jpg", format="PNG")
        assert np.array_equal(_decode_file(tmp_path / "a.jpg"), image)

    def test_grayscale_becomes_three_equal_channels(self, tmp_path):
        gray = _rgb()[..., 0]
        Image.fromarray(gray).save(tmp_path / "g.png")
        out = _decode_file(tmp_path / "g.png")
        assert out.shape == (20, 30, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))

    def test_sixteen_bit_png_is_scaled_not_clipped(self, tmp_path):
        deep = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
        Image.fromarray(deep).save(tmp_path / "d.png")
        out = _decode_file(tmp_path / "d.png")
        assert out.shape == (20, 30, 3)
        assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200

    def test_rgba_is_composited_on_white(self, tmp_path):
        rgba = np.zeros((4, 4, 4), np.uint8)
        rgba[..., 0] = 255  # red, fully transparent on the left half
        rgba[:, 2:, 3] = 255
        Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
        out = _decode_file(tmp_path / "t.png")
        assert (out[:, :2] == 255).all()
        assert (out[:, 2:] == [255, 0, 0]).all()

    def test_palette_and_cmyk_become_rgb(self, tmp_path):
        image = Image.fromarray(_rgb())
        image.convert("P").save(tmp_path / "p.png")
        image.convert("CMYK").save(tmp_path / "c.jpg")
        for name in ("p.png", "c.jpg"):
            out = _decode_file(tmp_path / name)
            assert out.shape == (20, 30, 3) and out.dtype == np.uint8

    def test_exif_orientation_is_honoured(self, tmp_path):
        wide = np.zeros((20, 60, 3), np.uint8)
        wide[:, :30] = 255  # left half white
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        Image.fromarray(wide).save(tmp_path / "r.jpg", exif=exif, quality=100)
        out = _decode_file(tmp_path / "r.jpg")
        assert out.shape == (60, 20, 3)
        assert out[:30].mean() > 200 and out[30:].mean() < 50  # left half is now on top

    def test_one_pixel_and_elongated_images(self):
        assert decode_image(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1, 3)
        assert decode_image(np.zeros((1, 5000), np.uint8)).shape == (1, 5000, 3)

    def test_array_dtypes(self):
        floats = np.random.default_rng(0).random((5, 6, 3))
        assert np.array_equal(decode_image(floats), np.round(floats * 255).astype(np.uint8))
        assert decode_image(np.ones((5, 6), bool)).max() == 255
        assert np.array_equal(decode_image(np.full((5, 6), 7, np.int64)), np.full((5, 6, 3), 7))

    def test_non_contiguous_and_read_only_arrays_work(self):
        image = _rgb()
        flipped = image[:, ::-1]
        frozen = image.copy()
        frozen.flags.writeable = False
        assert np.array_equal(decode_image(flipped), np.ascontiguousarray(flipped))
        assert np.array_equal(decode_image(frozen), image)

    def test_collections(self):
        batch = np.stack([_rgb(seed=i) for i in range(3)])
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2)
        for X in (batch, list(batch), tensor, [Image.fromarray(b) for b in batch]):
            images = ImageCollection(X)
            assert len(images) == 3
            assert np.array_equal(images.load(2), batch[2])
        assert ImageCollection(batch[..., 0]).load(0).shape == (20, 30, 3)

    def test_pandas_series_of_paths(self, tmp_path):
        pd = pytest.importorskip("pandas")
        Image.fromarray(_rgb()).save(tmp_path / "a.png")
        images = ImageCollection(pd.Series([str(tmp_path / "a.png")], index=[7]))
        assert images.path(0) == str(tmp_path / "a.png")


def _failure(X):
    images = ImageCollection(X)
    with pytest.raises(InvalidImageError) as info:
        images.load(len(images) - 1)
    (failure,) = info.value.failures
    assert failure.index == len(images) - 1
    return failure


@pytest.fixture
def good_png(tmp_path):
    path = tmp_path / "good.png"
    Image.fromarray(_rgb()).save(path)
    return str(path)


class TestBadFiles:
    """Each bad file is named by index and path, with what was wrong."""

    @pytest.mark.parametrize(
        "make, reason",
        [
            (lambda p: p, "does not exist"),
            (lambda p: p.mkdir() or p, "directory"),
            (lambda p: p.write_bytes(b"") and p or p, "empty"),
            (lambda p: p.write_text("hello, not a photo") and p, "not an image"),
        ],
        ids=["missing", "directory", "zero-byte", "text-as-jpg"],
    )
    def test_unreadable_files(self, tmp_path, good_png, make, reason):
        path = make(tmp_path / "bad.jpg")
        failure = _failure([good_png, str(path)])
        assert failure.path == str(path) and reason in failure.reason
        assert f"sample 1 ({path})" in str(InvalidImageError([failure]))

    def test_truncated_jpeg(self, tmp_path, good_png):
        Image.fromarray(_rgb(200, 200)).save(tmp_path / "full.jpg")
        data = (tmp_path / "full.jpg").read_bytes()
        (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
        assert "truncated" in _failure([good_png, str(tmp_path / "cut.jpg")]).reason

    def test_corrupt_png(self, tmp_path, good_png):
        data = bytearray(open(good_png, "rb").read())
        data[60:80] = b"\x00" * 20  # inside the IDAT chunk: its checksum no longer matches
        (tmp_path / "bad.png").write_bytes(bytes(data))
        assert "corrupt" in _failure([good_png, str(tmp_path / "bad.png")]).reason

    def test_decompression_bomb_is_refused_before_decoding(self, tmp_path, good_png, monkeypatch):
        Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "bomb.png")
        monkeypatch.setattr("sktransfer._input.images.MAX_PIXELS", 100_000)
        reason = _failure([good_png, str(tmp_path / "bomb.png")]).reason
        assert "120000 pixels" in reason and "decompression bomb" in reason


class TestBadArrays:
    @pytest.mark.parametrize(
        "array, reason",
        [
            (np.full((4, 4, 3), np.nan), "NaN"),
            (np.full((4, 4, 3), np.inf), "NaN or infinity"),
            (np.zeros((0, 4, 3), np.uint8), "zero size"),
            (np.zeros((4, 4, 2), np.uint8), "not an image"),
            (np.zeros((2, 4, 4, 3), np.uint8), "not an image"),
            (np.full((4, 4), 300), "[0, 255]"),
            (np.full((4, 4), 2.0), "[0, 1]"),
            (np.zeros((4, 4), complex), "dtype"),
        ],
        ids=[
            "nan",
            "inf",
            "zero-size",
            "two-channels",
            "4-d",
            "int-range",
            "float-range",
            "complex",
        ],
    )
    def test_bad_sample_in_a_list(self, array, reason):
        failure = _failure([_rgb(), array])
        assert reason in failure.reason and failure.path is None

    def test_mixed_kinds_name_every_odd_sample(self, good_png):
        with pytest.raises(InvalidImageError) as info:
            ImageCollection(np.array([good_png, _rgb(), good_png, _rgb()], dtype=object))
        assert [f.index for f in info.value.failures] == [1, 3]
        assert "is an array but sample 0 is a path" in str(info.value)

    @pytest.mark.parametrize(
        "X, message",
        [
            ([], "empty"),
            (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
            (np.zeros((5, 64)), r"\(N, H, W\)"),
            ("photo.jpg", "got a path; wrap a single image"),
            (torch.zeros(3, 3), r"\(N, C, H, W\)"),
            (42, "int"),
        ],
    )
    def test_bad_collections(self, X, message):
        with pytest.raises(ValueError, match=message):
            ImageCollection(X)


class TestOneImageIsNotABatch:
    """A lone image is refused with how to pass it, never read as a batch of rows."""

    @pytest.mark.parametrize(
        "X",
        [_rgb(30, 45), np.dstack([_rgb(30, 45), _rgb(30, 45)[..., :1]])],
        ids=["HxWx3", "HxWx4"],
    )
    def test_array(self, X):
        message = r"single image of shape \(30, 45, \d\); pass \[image\]"
        with pytest.raises(ValueError, match=message):
            ImageCollection(X)
        assert ImageCollection(X[None]).load(0).shape == (30, 45, 3)

    def test_tensor(self):
        tensor = torch.from_numpy(_rgb(30, 45)).permute(2, 0, 1)
        message = r"single image of shape \(3, 30, 45\); pass \[image\]"
        with pytest.raises(ValueError, match=message):
            ImageCollection(tensor)
        assert np.array_equal(ImageCollection([tensor]).load(0), _rgb(30, 45))
        assert np.array_equal(ImageCollection(tensor[None]).load(0), _rgb(30, 45))

    def test_grayscale_array_says_how_to_pass_one(self):
        with pytest.raises(ValueError, match=r"single grayscale image\? pass \[image\]"):
            ImageCollection(_rgb()[..., 0])

    def test_bytes_and_pil_image(self, good_png):
        data = open(good_png, "rb").read()
        for X in (data, Image.open(good_png)):
            with pytest.raises(ValueError, match=r"wrap a single image in a list: \[image\]"):
                ImageCollection(X)

    def test_batch_of_grayscale_images_is_still_a_batch(self):
        assert len(ImageCollection(np.zeros((5, 8, 9), np.uint8))) == 5


class TestEncodedBytes:
    def test_list_of_encoded_files_decodes_like_the_files(self, tmp_path):
        image = _rgb()
        Image.fromarray(image).save(tmp_path / "a.png")
        Image.fromarray(image).save(tmp_path / "a.jpg", quality=90)
        blobs = [(tmp_path / name).read_bytes() for name in ("a.png", "a.jpg")]
        images = ImageCollection(blobs)
        assert np.array_equal(images.load(0), image)
        assert np.array_equal(images.load(1), _decode_file(tmp_path / "a.jpg"))
        assert images.path(0) is None

    def test_bad_bytes_are_named(self, good_png):
        data = open(good_png, "rb").read()
        assert "not an image" in _failure([data, b"hello, not a photo"]).reason
        assert "empty" in _failure([data, b""]).reason
        assert "truncated" in _failure([data, data[: len(data) // 2]]).reason


class TestOnePixelRule:
    """By dtype: uint8 as is, uint16 (any byte order) as 16-bit, other integers 0-255."""

    def test_every_integer_dtype_but_uint16_takes_values_as_they_are(self):
        values = np.arange(0, 256, dtype=np.int64).reshape(16, 16)
        for dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64):
            if np.iinfo(dtype).max < 255:
                continue
            assert np.array_equal(decode_image(values.astype(dtype))[..., 0], values), dtype

    @pytest.mark.parametrize("dtype", ["<u2", ">u2"])
    def test_uint16_is_sixteen_bit_in_either_byte_order(self, dtype):
        values = (np.arange(0, 256).reshape(16, 16) * 257).astype(dtype)
        assert np.array_equal(decode_image(values)[..., 0], np.arange(0, 256).reshape(16, 16))

    def test_big_endian_sixteen_bit_tiff(self, tmp_path):
        values = np.arange(0, 256).reshape(16, 16)
        Image.fromarray((values * 257).astype(">u2")).save(tmp_path / "b.tif")
        assert Image.open(tmp_path / "b.tif").mode == "I;16B"
        assert np.array_equal(_decode_file(tmp_path / "b.tif")[..., 0], values)

    def test_out_of_range_integers_get_the_rule_in_the_error(self):
        reason = _failure([_rgb(), np.full((4, 4), 300, np.int32)]).reason
        assert "dtype int32 must lie in [0, 255]" in reason
        assert "uint16 as 16-bit" in reason

    def test_thirty_two_bit_files_say_what_they_hold_and_how_to_convert(self, tmp_path):
        floats = np.linspace(-1, 300, 64, dtype=np.float32).reshape(8, 8)
        Image.fromarray(floats).save(tmp_path / "f.tif")
        reason = _failure([str(tmp_path / "f.tif")]).reason
        assert "is a 32-bit float image (PIL mode 'F', float32) with values in [-1, 300]" in reason
        assert "read as 0-1: rescale it" in reason and "cast 0-255 data" not in reason
        Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 1000).save(tmp_path / "i.tif")
        reason = _failure([str(tmp_path / "i.tif")]).reason
        assert "32-bit integer image (PIL mode 'I', int32) with values in [0, 63000]" in reason
        assert "read as 0-255: rescale it" in reason and "cast 16-bit data" not in reason
        floats[0, 0] = np.nan
        Image.fromarray(floats).save(tmp_path / "n.tif")
        assert "with NaN or infinite values" in _failure([str(tmp_path / "n.tif")]).reason


class TestExifOrientation:
    """Upright from the orientation value alone, the way ``ImageOps.exif_transpose`` turns it."""

    @pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
    @pytest.mark.parametrize("orientation", range(1, 9))
    def test_even_with_a_mistyped_tag(self, tmp_path, fmt, orientation):
        # A resolution unit declared ASCII: exif_transpose, which rewrites the block, raised.
        picture = Image.fromarray(_rgb(32, 64))
        clean, mistyped = tmp_path / "clean", tmp_path / "mistyped"
        picture.save(clean, fmt, exif=phone_exif(orientation), quality=95)
        block = retyped(phone_exif(orientation), RESOLUTION_UNIT, ASCII)
        picture.save(mistyped, fmt, exif=block, quality=95)
        with Image.open(clean) as opened:
            expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        assert expected.shape == ((64, 32, 3) if orientation >= 5 else (32, 64, 3))
        for path in (clean, mistyped):
            assert np.array_equal(_decode_file(path), expected)
            # The fast decode turns it the same way (a JPEG at 1/4 for min_side 8).
            scale = 4 if fmt == "JPEG" else 1
            fast = ImageCollection([str(path)], min_side=8).load(0)
            assert fast.shape == (expected.shape[0] // scale, expected.shape[1] // scale, 3)

    def test_an_unreadable_exif_block_names_the_sample(self, tmp_path):
        block = phone_exif()
        path = tmp_path / "x.webp"
        Image.fromarray(_rgb()).save(path, "WEBP", exif=block[:6] + b"XX" + block[8:])
        failure = _failure([str(path)])
        assert failure.path == str(path)
        assert failure.reason.startswith("malformed EXIF metadata, so its orientation is unknown")
        with Image.open(path) as opened:
            assert "malformed EXIF" in _failure([opened]).reason
        with Image.open(path) as opened:
            assert content_hash(opened) is None  # computed without the cache, then named


class TestMissingSamples:
    @pytest.mark.parametrize("missing", [None, float("nan")])
    def test_missing_value_in_a_list_is_one_bad_sample(self, good_png, missing):
        images = ImageCollection([good_png, missing, good_png])
        assert images.load(2).shape == (20, 30, 3)
        failure = _failure([good_png, missing])
        assert "missing" in failure.reason and failure.path is None

    def test_missing_value_in_a_pandas_column_of_paths(self, good_png):
        pd = pytest.importorskip("pandas")
        column = pd.Series([good_png, None, pd.NA], dtype=object)
        images = ImageCollection(column)
        assert images.load(0).shape == (20, 30, 3)
        for index in (1, 2):
            with pytest.raises(InvalidImageError, match=f"sample {index}: is missing"):
                images.load(index)


def test_lifting_pillows_pixel_limit_keeps_ours(tmp_path, good_png, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert _decode_file(good_png).shape == (20, 30, 3)
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr("sktransfer._input.images.MAX_PIXELS", 100_000)
    assert "decompression bomb" in _failure([good_png, str(tmp_path / "big.png")]).reason


def test_pil_images_passed_in_are_turned_upright(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide).save(tmp_path / "r.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "r.jpg") as opened:
        out = ImageCollection([opened]).load(0)
    assert np.array_equal(out, _decode_file(tmp_path / "r.jpg"))
    assert out.shape == (60, 20, 3) and out[:30].mean() > 200


class TestReducedDecode:
    """``min_side``: a large JPEG decodes at a libjpeg DCT scale; nothing else changes."""

    @staticmethod
    def _jpeg(path, photo, size, **kwargs):
        Image.fromarray(photo).resize(size, Image.BILINEAR).save(path, quality=95, **kwargs)
        return str(path)

    def test_large_jpeg_decodes_at_the_smallest_scale_keeping_min_side(self, tmp_path, photos):
        path = self._jpeg(tmp_path / "big.jpg", photos[1], (1600, 1200))
        full = ImageCollection([path]).load(0)
        for min_side, shape in ((300, (300, 400)), (301, (600, 800)), (700, (1200, 1600))):
            reduced = ImageCollection([path], min_side=min_side).load(0)
            assert reduced.shape == (*shape, 3) and reduced.dtype == np.uint8
            # The same picture: a DCT-scaled decode is close to the full decode box-reduced.
            scale = 1200 // shape[0]
            boxed = np.asarray(Image.fromarray(full).reduce(scale), dtype=float)
            assert np.abs(reduced - boxed).mean() < 3

    def test_exif_rotated_large_jpeg_decoded_reduced_is_upright(self, tmp_path):
        wide = np.zeros((800, 1600, 3), np.uint8)
        wide[:, :800] = 255  # left half white
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        path = tmp_path / "r.jpg"
        Image.fromarray(wide).save(path, exif=exif, quality=95)
        out = ImageCollection([str(path)], min_side=200).load(0)
        assert out.shape == (400, 200, 3)  # 1/4 of the upright 1600x800
        assert out[:190].mean() > 240 and out[210:].mean() < 15  # left half is now on top

    def test_grayscale_large_jpeg_decodes_reduced_to_rgb(self, tmp_path, photos):
        path = tmp_path / "L.jpg"
        Image.fromarray(photos[0]).resize((1200, 800)).convert("L").save(path, quality=95)
        full = ImageCollection([str(path)]).load(0)
        out = ImageCollection([str(path)], min_side=200).load(0)
        assert out.shape == (200, 300, 3) and out.dtype == np.uint8
        boxed = np.asarray(Image.fromarray(full).reduce(4), dtype=float)
        assert np.abs(out - boxed).mean() < 3

    def test_cmyk_large_jpeg_decodes_in_full(self, tmp_path, photos):
        # Reduced, CMYK photos' features drifted below cosine 0.999 (benchmarks/decode_scale.py).
        path = tmp_path / "CMYK.jpg"
        Image.fromarray(photos[0]).resize((1200, 800)).convert("CMYK").save(path, quality=95)
        full = ImageCollection([str(path)]).load(0)
        assert full.shape == (800, 1200, 3)
        assert np.array_equal(ImageCollection([str(path)], min_side=200).load(0), full)

    @staticmethod
    def _mpo(path, photo, size):
        """A phone photo followed by its depth map, as portrait modes save them."""
        picture = Image.fromarray(photo).resize(size, Image.BILINEAR)
        depth = picture.convert("L").reduce(4)
        picture.save(path, "MPO", save_all=True, append_images=[depth], quality=95)
        with Image.open(path) as image:
            assert image.format == "MPO" and image.n_frames == 2
        return str(path)

    def test_mpo_decodes_its_first_picture_reduced_as_a_jpeg(self, tmp_path, photos):
        mpo = self._mpo(tmp_path / "a.mpo", photos[1], (1600, 1200))
        jpeg = self._jpeg(tmp_path / "a.jpg", photos[1], (1600, 1200))
        reduced = ImageCollection([mpo], min_side=300).load(0)
        assert reduced.shape == (300, 400, 3)  # 1/4, as the JPEG of the same picture
        assert np.array_equal(reduced, ImageCollection([jpeg], min_side=300).load(0))
        np.testing.assert_array_equal(
            ImageCollection([mpo]).load(0), ImageCollection([jpeg]).load(0)
        )

    def test_pixel_limit_applies_to_the_full_size(self, tmp_path, photos, monkeypatch):
        path = self._jpeg(tmp_path / "big.jpg", photos[0], (800, 600))
        monkeypatch.setattr("sktransfer._input.images.MAX_PIXELS", 100_000)
        with pytest.raises(InvalidImageError, match="decompression bomb"):
            ImageCollection([path], min_side=60).load(0)

    def test_small_jpegs_other_formats_and_in_memory_images_decode_in_full(self, tmp_path, photos):
        small = self._jpeg(tmp_path / "small.jpg", photos[1], (500, 375))
        big_png = tmp_path / "big.png"
        Image.fromarray(photos[1]).resize((1600, 1200)).save(big_png)
        samples = [[small], [str(big_png)], [photos[1]], [Image.fromarray(photos[1])]]
        for X in samples:
            assert np.array_equal(
                ImageCollection(X, min_side=256).load(0), ImageCollection(X).load(0)
            )

    def test_each_file_is_keyed_by_the_decode_it_got(self, tmp_path, photos):
        """A sample's content names a reduced decode exactly when it was decoded reduced."""
        big = (1600, 1200)
        cmyk, gray, png = tmp_path / "c.jpg", tmp_path / "g.jpg", tmp_path / "p.png"
        Image.fromarray(photos[1]).resize(big).convert("CMYK").save(cmyk, quality=95)
        Image.fromarray(photos[1]).resize(big).convert("L").save(gray, quality=95)
        Image.fromarray(photos[1]).resize(big).save(png)
        jpeg = self._jpeg(tmp_path / "a.jpg", photos[1], big)
        files = {  # sample -> decoded reduced at min_side=300
            jpeg: True,
            Path(jpeg).read_bytes(): True,
            self._mpo(tmp_path / "a.mpo", photos[1], big): True,
            str(gray): True,
            str(cmyk): False,
            self._jpeg(tmp_path / "small.jpg", photos[1], (500, 375)): False,
            str(png): False,
        }
        for sample, reduced in files.items():
            plain = content_hash(sample)
            expected = plain + "|decode=reduced-2:300" if reduced else plain
            images = ImageCollection([sample], min_side=300)
            before = images.content(0, content_hash)
            decoded, after = images.load_with_content(0, content_hash)
            assert before == after == expected, sample
            was_reduced = decoded.shape != ImageCollection([sample]).load(0).shape
            assert was_reduced == reduced, sample
            # Decoded in full, the same content serves decode="full" too.
            assert ImageCollection([sample]).content(0, content_hash) == plain
        # In-memory samples always decode in full.
        for X in ([photos[1]], np.stack([photos[1]] * 2), [Image.fromarray(photos[1])]):
            in_memory = ImageCollection(X, min_side=8)
            assert in_memory.content(0, content_hash) == content_hash(X[0])
            assert in_memory.load_with_content(0, content_hash)[1] == content_hash(X[0])

    def test_unreadable_files_have_no_content(self, tmp_path):
        text = tmp_path / "t.jpg"
        text.write_text("not an image")
        images = ImageCollection([str(text), str(tmp_path / "missing.jpg")], min_side=300)
        assert images.content(0, content_hash) is None
        assert images.content(1, content_hash) is None
        assert images.decoded_at(None).content(0, content_hash) == content_hash(str(text))


def test_a_pil_image_is_never_decoded_by_two_threads_at_once(tmp_path, monkeypatch):
    # The same lazily opened image twice in X: the decoding threads must take turns.
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    image = Image.open(path)
    active, most = [], []
    to_rgb = images_module._pil_to_rgb

    def slow_to_rgb(pil):
        active.append(1)
        most.append(len(active))
        time.sleep(0.05)
        active.pop()
        return to_rgb(pil)

    monkeypatch.setattr(images_module, "_pil_to_rgb", slow_to_rgb)
    with ThreadPoolExecutor(2) as pool:
        decoded = list(pool.map(decode_image, [image, image]))
    assert max(most) == 1
    assert all(d.shape == (8, 8, 3) for d in decoded)
