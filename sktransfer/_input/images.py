"""Turn any accepted input into decoded RGB images, with clear errors.

Accepted collections (one image per sample): a sequence or pandas Series of
file paths, of encoded image files' ``bytes``, of PIL images, of arrays (each
(H, W) or (H, W, C)) or of tensors (each (C, H, W)); an ndarray (N, H, W) or
(N, H, W, C); a tensor (N, C, H, W). A lone image is refused rather than read
as a batch: an array (H, W, 3|4), a tensor (C, H, W), one path, one ``bytes``
object or one PIL image must be passed as ``[image]``. ``None`` (or NaN) in a
sequence is a missing sample, reported like any unreadable one.

Pixel values follow one rule, by dtype: uint8 is taken as it is; uint16 (either
byte order) is 16-bit data, 0-65535, scaled to 0-255; bool is black or white;
every other integer dtype must hold values in 0-255; floats must lie in [0, 1].

Every image comes out as a C-contiguous uint8 array (H, W, 3). This module
knows nothing of models.

Encoded files can be decoded *reduced*: a collection with ``min_side`` decodes
a JPEG, or the first picture of an MPO (a phone photo followed by a depth or
gain map), at the smallest of libjpeg's DCT scales (1/2, 1/4, 1/8) that keeps
its shorter side at least ``min_side`` (:meth:`PIL.Image.Image.draft`), which
costs a fraction of a full decode. Other formats (``Image.reduce`` before the
resize saved 9-35% on PNG, TIFF and WebP, but moved features below cosine
0.999), CMYK JPEGs (reduced, their features drifted below cosine 0.999), PIL
images, arrays and tensors, and JPEGs too small to reduce, decode exactly as
without it. :meth:`ImageCollection.content` says which way each sample decodes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

#: Images with more pixels than this are refused as possible decompression bombs.
#: Pillow's default limit, fixed here so that users who lift Pillow's own limit
#: (``PIL.Image.MAX_IMAGE_PIXELS = None``, common for large scans) keep this one.
MAX_PIXELS = 89_478_485

# Version of the reduced decode, in its identity: bump it when its output changes.
# 2: MPO files reduced (version 1 keyed their full decode as reduced), CMYK ones not.
_REDUCED_DECODE = "reduced-2"
# Formats that libjpeg decodes at a DCT scale: MPO is a JPEG followed by more pictures.
_DCT_SCALED_FORMATS = ("JPEG", "MPO")

#: EXIF tag of the orientation a viewer applies before display.
EXIF_ORIENTATION = 0x0112
# What turns an image stored with each EXIF orientation upright (ImageOps.exif_transpose's table).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# 32-bit PIL modes (TIFF holds them): what their pixels are, and the top of the range read.
_WIDE_MODES = {"I": ("32-bit integer", 255), "F": ("32-bit float", 1)}
_CLOSED = "the PIL image is closed: pass the path, or call load() before closing"
_SIXTEEN_BIT_SCALE = 257  # 65535 / 255
# Held while a PIL image object given in X is decoded (see decode_image).
_PIL_OBJECTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageFailure:
    """One sample that could not be used: where it is and what was wrong.

    :class:`InvalidImageError` lists one per bad sample in ``failures``.

    Attributes
    ----------
    index : int
        Position of the sample in the input.
    path : str or None
        The file, when the sample is a path.
    reason : str
        What was wrong with it.

    Examples
    --------
    >>> from sktransfer import ImageFailure
    >>> failure = ImageFailure(3, "photos/misty.jpg", "file does not exist")
    >>> print(failure)
    sample 3 (photos/misty.jpg): file does not exist
    """

    index: int
    path: str | None
    reason: str

    def __str__(self) -> str:
        where = f"sample {self.index}" + (f" ({self.path})" if self.path else "")
        return f"{where}: {self.reason}"


class InvalidImageError(ValueError):
    """Raised when samples cannot be read as images; lists every bad sample.

    Attributes
    ----------
    failures : list of ImageFailure
        Index, path (when the sample is a file) and reason of each bad sample.

    Examples
    --------
    A folder with one photo, one text file named like a photo, and a path
    to nothing:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skimage.data import chelsea
    >>> from sktransfer import InvalidImageError, PretrainedFeaturizer
    >>> folder = tempfile.TemporaryDirectory()
    >>> photo, notes = Path(folder.name, "tigger.jpg"), Path(folder.name, "notes.jpg")
    >>> Image.fromarray(chelsea()).save(photo)
    >>> _ = notes.write_text("Tigger, sleeping")
    >>> try:
    ...     PretrainedFeaturizer(progress=False).fit_transform([photo, notes, "misty.jpg"])
    ... except InvalidImageError as error:
    ...     for failure in error.failures:
    ...         print(failure.index, Path(failure.path).name, "-", failure.reason)
    1 notes.jpg - not an image file (unrecognised format)
    2 misty.jpg - file does not exist
    >>> folder.cleanup()

    ``on_error="nan"`` returns NaN rows for them instead, and features for the rest.
    """

    def __init__(self, failures: list[ImageFailure]):
        self.failures = list(failures)
        shown = "\n  ".join(str(f) for f in self.failures[:20])
        more = f"\n  ... and {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
        super().__init__(f"{len(self.failures)} bad image sample(s):\n  {shown}{more}")


class _BadImage(ValueError):
    """A single sample's problem; becomes an :class:`ImageFailure` with its index."""


def is_missing(item) -> bool:
    """None, NaN, pandas.NA or NaT: a missing value, as in a DataFrame column."""
    if item is None or (isinstance(item, float) and math.isnan(item)):
        return True
    return type(item).__name__ in ("NAType", "NaTType")


def _kind(item) -> str:
    """What a sample is, with its article, for messages."""
    if isinstance(item, str | os.PathLike):
        return "a path"
    if isinstance(item, bytes):
        return "encoded image bytes"
    if isinstance(item, Image.Image):
        return "a PIL image"
    if isinstance(item, np.ndarray):
        return "an array"
    if _is_tensor(item):
        return "a tensor"
    return f"an object of type {type(item).__name__}"


def _is_tensor(obj) -> bool:
    torch = __import__("sys").modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def read_once(X):
    """``X`` itself, or the images of an iterator (a generator, ``map``, ...) in a list.

    An iterator yields its images once: a call that reads ``X`` twice (as
    ``fit_transform`` does, in ``fit`` then in ``transform``) reads it here first.
    """
    return list(X) if isinstance(X, Iterator) else X


class ImageCollection:
    """A read-only, indexable view of the images in ``X``.

    Parameters
    ----------
    X : collection of images
        See the module docstring for what is accepted.
    min_side : int or None, default=None
        Decode encoded files reduced, to no less than this shorter side (see
        the module docstring); None decodes them in full.

    Raises
    ------
    ValueError
        ``X`` is empty, a single image, or an array of the wrong rank.
    InvalidImageError
        The samples mix kinds (paths with arrays, ...); each odd one is named.
    """

    def __init__(self, X, min_side: int | None = None):
        self.min_side = min_side
        if hasattr(X, "iloc"):  # pandas Series or one-column DataFrame
            X = X.to_numpy()
            if X.ndim == 2 and X.shape[1] == 1:
                X = X[:, 0]
        _refuse_single_image(X)
        if _is_tensor(X):
            X = self._tensor_to_channels_last(X)
        if isinstance(X, np.ndarray) and X.dtype != object and X.dtype.kind not in "US":
            if X.ndim not in (3, 4):
                raise ValueError(
                    f"an array of images must be (N, H, W) or (N, H, W, C); got shape {X.shape}"
                    + (
                        "; a single grayscale image? pass [image] or image[None]; flat pixel "
                        "rows? reshape them to images first"
                        if X.ndim == 2
                        else ""
                    )
                )
        elif not isinstance(X, list | tuple | np.ndarray):
            iterator = isinstance(X, Iterator)
            try:
                X = list(X)
            except TypeError:
                raise ValueError(
                    f"expected a collection of images, got {type(X).__name__}"
                ) from None
            if iterator and not X:
                raise ValueError(
                    "no images: X is an iterator that yielded none; an iterator yields its "
                    "images once, so if an earlier call read it, pass a list instead"
                )
        if len(X) == 0:
            raise ValueError("no images: X is empty")
        self._items = X
        self._check_same_kind()

    @staticmethod
    def _tensor_to_channels_last(X):
        if X.ndim != 4:
            raise ValueError(f"a tensor of images must be (N, C, H, W); got shape {tuple(X.shape)}")
        return X.permute(0, 2, 3, 1).detach().cpu().numpy()

    def _check_same_kind(self):
        if isinstance(self._items, np.ndarray) and self._items.dtype != object:
            return
        # Missing samples are reported when loaded, so on_error="nan" can skip them.
        kinds = {i: _kind(item) for i, item in enumerate(self._items) if not is_missing(item)}
        if not kinds:
            return
        first_index, first = next(iter(kinds.items()))
        odd = [
            ImageFailure(
                i, None, f"is {kind} but sample {first_index} is {first}; do not mix kinds"
            )
            for i, kind in kinds.items()
            if kind != first
        ]
        if odd:
            raise InvalidImageError(odd)

    def __len__(self) -> int:
        return len(self._items)

    def decoded_at(self, min_side: int | None) -> ImageCollection:
        """The same samples, decoded reduced to ``min_side`` (None: in full)."""
        view = copy.copy(self)
        view.min_side = min_side
        return view

    def content(self, index: int, content_hash) -> str | None:
        """Identity of what sample ``index`` decodes to, for cache keys, found before decoding it.

        Parameters
        ----------
        index : int
        content_hash : callable
            Maps a sample (an encoded file's ``bytes``, or the in-memory sample
            itself) to its hash; see :func:`sktransfer._store.keys.content_hash`.

        Returns
        -------
        content : str or None
            ``content_hash`` of the sample, followed by ``"|decode="`` and
            :func:`decode_identity` when it decodes reduced; a sample decoded in
            full has its plain hash, whichever way the collection decodes, so
            its entries serve both. The same as :meth:`load_with_content` gives
            for the same bytes. None when the sample cannot be read (its
            decode then says why).
        """
        item = self._items[index]
        if self.min_side is None or not isinstance(item, str | os.PathLike | bytes):
            return content_hash(item)
        try:
            data = item if isinstance(item, bytes) else _read_file(Path(item))
            with _decoding():
                reduced = _draft(Image.open(io.BytesIO(data)), self.min_side)
        except _BadImage:
            return None
        return self._decoded_content(content_hash(data), reduced)

    def _decoded_content(self, digest: str | None, reduced: bool) -> str | None:
        if digest is None or not reduced:
            return digest
        return f"{digest}|decode={decode_identity(self.min_side)}"

    def __getitem__(self, index: int):
        return self._items[index]

    def path(self, index: int) -> str | None:
        """File path of sample ``index``, or None when it is not a file."""
        item = self._items[index]
        return os.fspath(item) if isinstance(item, str | os.PathLike) else None

    @property
    def are_paths(self) -> bool:
        return self.path(0) is not None

    def load(self, index: int) -> np.ndarray:
        """Decode sample ``index`` to a uint8 (H, W, 3) array.

        Raises
        ------
        InvalidImageError
            Naming the sample, its path and what was wrong.
        """
        return self.load_with_content(index)[0]

    def load_with_content(self, index: int, content_hash=None) -> tuple[np.ndarray, str | None]:
        """Decode sample ``index`` and hash the very content decoded.

        A file is read once: its bytes are hashed and decoded, so a file
        replaced meanwhile cannot pair one content's hash with another's pixels.

        Parameters
        ----------
        index : int
        content_hash : callable, optional
            Maps a sample (an encoded file's ``bytes``, or the in-memory sample
            itself) to its hash; see :func:`sktransfer._store.keys.content_hash`.

        Returns
        -------
        image : ndarray of shape (H, W, 3), dtype uint8
        content : str or None
            :meth:`content` of what was decoded, and how; None without
            ``content_hash``.

        Raises
        ------
        InvalidImageError
            Naming the sample, its path and what was wrong.
        """
        item = self._items[index]
        try:
            if isinstance(item, str | os.PathLike):
                item = _read_file(Path(item))
            if isinstance(item, bytes):
                image, reduced = _decode_encoded(item, self.min_side)
            else:
                image, reduced = decode_image(item), False
        except _BadImage as exc:
            raise InvalidImageError([ImageFailure(index, self.path(index), str(exc))]) from None
        if content_hash is None:
            return image, None
        return image, self._decoded_content(content_hash(item), reduced)


def _refuse_single_image(X) -> None:
    """Raise when ``X`` is one image, which would otherwise be read as a batch of rows."""
    if isinstance(X, str | os.PathLike | Image.Image | bytes | bytearray):
        raise ValueError(
            f"expected a collection of images (one per sample), got {_kind(X)}; "
            "wrap a single image in a list: [image]"
        )
    shape = tuple(X.shape) if isinstance(X, np.ndarray) or _is_tensor(X) else None
    if shape is None or len(shape) != 3:
        return
    if _is_tensor(X) or shape[-1] in (3, 4):
        # torch's convention: a 3-D tensor is one (C, H, W) image; a 3-D array whose
        # last axis is 3 or 4 is one (H, W, C) image, never H images 3 pixels wide.
        raise ValueError(
            f"X looks like a single image of shape {shape}; pass [image] or image[None] "
            "(X holds one image per sample)"
        )


def decode_identity(min_side: int | None) -> str:
    """What identifies a decode in cache keys: ``"full"``, or the reduced decode's version and size.

    Parameters
    ----------
    min_side : int or None
        As given to :class:`ImageCollection`.
    """
    return "full" if min_side is None else f"{_REDUCED_DECODE}:{int(min_side)}"


def decode_image(item, min_side: int | None = None) -> np.ndarray:
    """Decode one image (path, encoded bytes, PIL image, array or tensor) to uint8 RGB (H, W, 3).

    With ``min_side``, encoded files decode reduced (see the module docstring).
    """
    if is_missing(item):
        raise _BadImage(f"is missing ({item!r})")
    if isinstance(item, str | os.PathLike):
        return decode_image(_read_file(Path(item)), min_side)
    if isinstance(item, bytes):
        return _decode_encoded(item, min_side)[0]
    if isinstance(item, Image.Image):
        # A lazily opened image loads itself on first use, which PIL does not make
        # thread-safe; the same object may stand twice in X, decoded by two threads.
        with _PIL_OBJECTS_LOCK:
            return _pil_to_rgb(_upright(_loaded(item)))
    if _is_tensor(item):
        array = item.detach().cpu().numpy()
        return _array_to_rgb(np.moveaxis(array, 0, -1) if array.ndim == 3 else array)
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item)
    raise _BadImage(
        f"unsupported type {type(item).__name__}; expected a path, encoded image bytes, "
        "PIL image, array or tensor"
    )


def _read_file(path: Path) -> bytes:
    """The file's bytes, read once, so that what is hashed is what is decoded."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise _BadImage("file does not exist") from None
    except OSError as exc:
        raise _BadImage(f"cannot read the file: {exc}") from None
    if not stat.S_ISREG(mode):
        # Reading a FIFO or a device could block forever.
        raise _BadImage("is a directory, not an image file" if stat.S_ISDIR(mode) else "not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _BadImage(f"cannot read the file: {exc}") from None
    if not data:
        raise _BadImage("file is empty (0 bytes)")
    return data


def _decode_encoded(data: bytes, min_side: int | None) -> tuple[np.ndarray, bool]:
    """An encoded file's RGB pixels, and whether they were decoded reduced."""
    if not data:
        raise _BadImage("is empty (0 bytes)")
    with _decoding():
        image = Image.open(io.BytesIO(data))
        _check_pixel_count(image.size)
        reduced = _draft(image, min_side)
        image.load()
    return _pil_to_rgb(_upright(image)), reduced


def _draft(image: Image.Image, min_side: int | None) -> bool:
    """Set an opened, unloaded file to decode reduced to ``min_side`` where it can; whether it will.

    libjpeg's DCT scaling: the largest of 1/2, 1/4, 1/8 that keeps both sides
    >= ``min_side`` (the shorter one decides). Not for CMYK, whose reduced
    decode moved features below cosine 0.999 (``benchmarks/decode_scale.py``).
    """
    if min_side is None or image.format not in _DCT_SCALED_FORMATS or image.mode == "CMYK":
        return False
    size = image.size
    image.draft(None, (min_side, min_side))
    return image.size != size


@contextlib.contextmanager
def _decoding():
    """Pillow's errors on a bad file, raised as this sample's problem."""
    try:
        with warnings.catch_warnings():
            # MAX_PIXELS is the limit; Pillow's own still applies when lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except _BadImage:
        raise
    except UnidentifiedImageError:
        raise _BadImage("not an image file (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise _BadImage(
            f"image is larger than Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS}); possible decompression bomb"
        ) from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise _BadImage(f"corrupt or truncated image: {exc}") from None


def _loaded(image: Image.Image) -> Image.Image:
    """A PIL image given in ``X``, its pixels read; a closed one is named as such."""
    if is_closed(image):
        raise _BadImage(_CLOSED)
    with _decoding():
        image.load()
    return image


def is_closed(image: Image.Image) -> bool:
    """Whether a PIL image can no longer give its pixels.

    ``Image.close()`` destroys them; leaving ``with Image.open(path) as image:``
    closes the file, which loses them if they were never read.
    """
    if isinstance(image, ImageFile.ImageFile) and image.tile:
        return image.fp is None  # not read yet: only its file can give the pixels
    try:
        image.load()  # read already, or made in memory: a no-op unless closed
    except ValueError:  # "Operation on closed image"
        return True
    return False


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image``: 1 to 8, or 1 (as stored) when absent or invalid.

    Raises
    ------
    ValueError
        The EXIF block cannot be read; the message says so.
    """
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception as exc:  # Pillow's EXIF parser raises many kinds on malformed tags
        raise _BadImage(
            f"malformed EXIF metadata, so its orientation is unknown ({type(exc).__name__}: {exc})"
        ) from None
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied.

    From the orientation alone: ``ImageOps.exif_transpose`` also rewrites the
    EXIF block, which raises on malformed tags that reading them does not.
    """
    method = _UPRIGHT.get(exif_orientation(image))
    return image if method is None else image.transpose(method)


def _check_pixel_count(size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise _BadImage(
            f"image is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{MAX_PIXELS} (possible decompression bomb; raise sktransfer._input.images.MAX_PIXELS "
            "if you trust it)"
        )
    if width == 0 or height == 0:
        raise _BadImage(f"image has zero size ({width}x{height})")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    _check_pixel_count(image.size)
    if image.mode in _WIDE_MODES:
        return _wide_to_rgb(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _array_to_rgb(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        return _array_to_rgb(np.asarray(image.convert("RGBA")))
    if image.mode == "RGB":  # a JPEG photo: convert("RGB") would only copy its pixels first
        return np.asarray(image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _wide_to_rgb(image: Image.Image) -> np.ndarray:
    """A 32-bit image (TIFFs of measurements, depth, HDR), read as arrays of its dtype are."""
    array = np.asarray(image)
    kind, top = _WIDE_MODES[image.mode]
    if not np.isfinite(array).all():
        problem = "NaN or infinite values"
    else:
        low, high = array.min(), array.max()
        if low >= 0 and high <= top:
            return _array_to_rgb(array)
        problem = f"values in [{low:g}, {high:g}]"
    raise _BadImage(
        f"is a {kind} image (PIL mode {image.mode!r}, {array.dtype}) with {problem}, but "
        f"{kind} pixels are read as 0-{top}: rescale it, e.g. a = np.asarray(Image.open(path), "
        "dtype=float) and pass (a - a.min()) / (a.max() - a.min()) in its place, or save "
        "that times 255 as uint8 to an 8-bit file"
    )


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise _BadImage(
            f"array of shape {array.shape} is not an image; expected (H, W) or (H, W, C) "
            "with C in 1, 3, 4"
        )
    if array.size == 0:
        raise _BadImage(f"image has zero size (shape {array.shape})")
    array = _to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.shape[-1] == 4:
        array = _composite_on_white(array)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixels to uint8 by one rule, by dtype (see the module docstring)."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "u" and size == 1:
        return array
    if kind == "b":
        return array.astype(np.uint8) * 255
    if kind == "u" and size == 2:  # 16-bit data, little- or big-endian
        scaled = (array.astype(np.uint32) + _SIXTEEN_BIT_SCALE // 2) // _SIXTEEN_BIT_SCALE
        return scaled.astype(np.uint8)
    if kind in "iu":
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise _BadImage(
                f"pixels of dtype {array.dtype} must lie in [0, 255]; got values in "
                f"[{low}, {high}] (uint8 is taken as is, uint16 as 16-bit 0-65535, other "
                "integer dtypes as 0-255, floats as 0-1: cast 16-bit data to uint16)"
            )
        return array.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(array).all():
            raise _BadImage("array contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise _BadImage(
                f"float pixels must lie in [0, 1]; got values in [{low:g}, {high:g}] "
                "(cast 0-255 data to uint8)"
            )
        return np.round(array * 255).astype(np.uint8)
    raise _BadImage(f"unsupported pixel dtype {array.dtype}")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Flatten transparency onto white, which is how viewers show such images."""
    alpha = rgba[..., 3:].astype(np.float32) / 255
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255 * (1 - alpha)
    return np.round(rgb).astype(np.uint8)
