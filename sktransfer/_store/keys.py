"""Cache keys: what identifies an image's content, and one feature vector of it.

A frozen backbone is a fixed function, so an image's features need computing
once. Each feature vector is stored under :func:`feature_key`, which joins the
identity of the backbone (weights, preprocessing, precision) with
:func:`content_hash` of the image's bytes or pixels. Stores take rows under
keys as :func:`as_rows` checks them, and other arrays as :func:`as_arrays` does.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys

import numpy as np

from .._input.images import exif_orientation, is_closed

# Bump when hashing or key layout changes, so older entries can never match.
_CONTENT_VERSION = b"sktransfer-content-1\0"
_KEY_VERSION = "sktransfer-feature-1"
_FILE_CHUNK_BYTES = 1 << 20


class _NoContent(Exception):
    """A sample whose content cannot be read, so it has no cache key."""


def content_hash(item) -> str | None:
    """Hex sha256 of one image sample's content, or None when it cannot be read.

    Parameters
    ----------
    item : str, os.PathLike, bytes, PIL.Image.Image, ndarray or torch.Tensor
        One sample, as :class:`~sktransfer._input.images.ImageCollection` holds it.

    Returns
    -------
    digest : str or None
        64 hex digits. A file hashes its bytes, so a renamed or copied file
        hits and a changed byte misses; encoded ``bytes`` hash as the file
        holding them would; an array or tensor hashes its dtype,
        shape and pixels in C order, however it is laid out in memory; a PIL
        image hashes its mode, size, palette, transparency, EXIF orientation
        and pixels. The kind of sample is hashed too, because a tensor
        (C, H, W) decodes differently from an array with the same bytes.
        None when the sample has no readable content: a missing file, a
        directory or other non-regular file, an object array, a tensor that
        numpy cannot hold, an unsupported type. The caller computes such
        samples without the cache, and decoding then reports what is wrong
        through the usual bad-input path.
    """
    digest = hashlib.sha256(_CONTENT_VERSION)
    try:
        _hash_sample(digest, item)
    except _NoContent:
        return None
    return digest.hexdigest()


def feature_key(model_key: str, content: str) -> str:
    """Key of one feature vector: which function computed it, on which content.

    Parameters
    ----------
    model_key : str
        Identity of the feature function, e.g. ``BackboneSpec.key`` plus the
        precision; two functions that may give different features must have
        different keys.
    content : str
        What was decoded, and how: :func:`content_hash` of the image,
        followed by its decode when that was reduced
        (:meth:`~sktransfer._input.images.ImageCollection.content`).

    Returns
    -------
    key : str
        64 hex digits (sha256), so keys have one length however long
        ``model_key`` is.
    """
    return hashlib.sha256(f"{_KEY_VERSION}\0{model_key}\0{content}".encode()).hexdigest()


def _hash_sample(digest, item) -> None:
    if isinstance(item, str | os.PathLike):
        digest.update(b"file\0")
        _hash_file(digest, item)
    elif isinstance(item, bytes):  # an encoded file's content, read or received
        digest.update(b"file\0")
        digest.update(item)
    elif isinstance(item, np.ndarray):
        _hash_array(digest, "array", item)
    elif _is_instance(item, "PIL.Image", "Image"):
        _hash_pil_image(digest, item)
    elif _is_instance(item, "torch", "Tensor"):
        try:
            array = item.detach().cpu().numpy()
        except (TypeError, RuntimeError):  # bfloat16, sparse, ...: numpy cannot hold it
            raise _NoContent from None
        _hash_array(digest, "tensor", array)
    else:
        raise _NoContent


def _is_instance(item, module_name: str, class_name: str) -> bool:
    # A module that was never imported cannot have made the item; do not import it.
    cls = getattr(sys.modules.get(module_name), class_name, None)
    return cls is not None and isinstance(item, cls)


def _hash_file(digest, path) -> None:
    try:
        # Reading a FIFO or device could block forever; only regular files have content.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _NoContent
        with open(path, "rb") as file:
            while chunk := file.read(_FILE_CHUNK_BYTES):
                digest.update(chunk)
    except OSError:
        raise _NoContent from None


def _hash_array(digest, kind: str, array: np.ndarray) -> None:
    if array.dtype.hasobject:  # its bytes are pointers, not pixels
        raise _NoContent
    digest.update(f"{kind}\0{array.dtype.str}\0{array.shape}\0".encode())
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _hash_pil_image(digest, image) -> None:
    if is_closed(image):
        raise _NoContent
    try:
        pixels = image.tobytes()  # loads a lazily opened file first
        orientation = exif_orientation(image)
    except (OSError, ValueError):
        raise _NoContent from None
    palette = image.getpalette(rawmode=None)
    header = (image.mode, image.size, image.info.get("transparency"), palette is not None)
    if orientation != 1:  # decoding turns the image upright; unrotated images keep their keys
        header += (f"orientation={orientation}",)
    digest.update(f"pil\0{header!r}\0".encode())
    if palette is not None:
        digest.update(bytes(palette))
    digest.update(pixels)


def as_rows(keys, rows) -> tuple[list[str], np.ndarray]:
    keys = list(keys)
    if not all(isinstance(key, str) for key in keys):
        raise TypeError("feature cache keys must be str")
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] != len(keys):
        raise ValueError(
            f"expected rows of shape ({len(keys)}, n_features) for {len(keys)} keys; "
            f"got {rows.shape}"
        )
    return keys, rows


def as_arrays(keys, arrays) -> tuple[list[str], list[np.ndarray]]:
    """Check keys and n-d arrays for a store: one numeric array (bool, int, float) per key."""
    keys, arrays = list(keys), [np.asarray(array) for array in arrays]
    if not all(isinstance(key, str) for key in keys):
        raise TypeError("feature cache keys must be str")
    if len(arrays) != len(keys):
        raise ValueError(f"expected {len(keys)} arrays for {len(keys)} keys; got {len(arrays)}")
    for array in arrays:
        if array.dtype.kind not in "biuf":
            raise TypeError(f"a stored array must be numeric (bool, int, float); got {array.dtype}")
    return keys, arrays
