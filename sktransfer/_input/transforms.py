"""Image transforms, built from torchvision v2: the evaluation transform, its
test-time views and training augmentation, and the size images are decoded to.

Every transform maps a decoded uint8 ``(H, W, 3)`` image to a normalised
float32 ``(3, S, S)`` tensor, sized and normalised by a backbone's
:class:`~sktransfer.Preprocessing`, like the preprocessing itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

#: Views that ``tta`` averages over, as (crop position, mirrored) pairs. The
#: centre crop unmirrored is the plain evaluation transform. "ten_crop" is
#: torchvision's ``TenCrop``: the centre and four corner crops of the resized
#: image, and their mirror images.
TTA_VIEWS = {
    False: (("center", False),),
    "flip": (("center", False), ("center", True)),
    "ten_crop": tuple(
        (crop, flip)
        for flip in (False, True)
        for crop in ("center", "top_left", "top_right", "bottom_left", "bottom_right")
    ),
}
_FIVE_CROP_ORDER = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
# Longest side kept, in shorter sides: the crop never sees more of an elongated image.
_MAX_ASPECT = 4

#: ``decode="fast"`` decodes files to a shorter side of at least this many
#: times the resize size (see :func:`decode_min_side`).
FAST_DECODE_FACTOR = 4

DECODES = ("fast", "full")


def decode_min_side(preprocessing, decode: str = "fast") -> int | None:
    """The shorter side that files are decoded to for ``preprocessing``.

    Parameters
    ----------
    preprocessing : Preprocessing
    decode : {"fast", "full"}, default="fast"
        ``"fast"``: :data:`FAST_DECODE_FACTOR` times ``resize_size``, so a
        JPEG decodes at a DCT scale whose features match the full decode's;
        ``"full"``: None, a full decode (the exact reference pipeline).

    Returns
    -------
    min_side : int or None
        For :class:`~sktransfer._input.images.ImageCollection`.
    """
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    return None if decode == "full" else FAST_DECODE_FACTOR * preprocessing.resize_size


def train_augmentation(preprocessing, scale=(0.08, 1.0)):
    """Random resized crop and horizontal flip, then scaling and normalisation.

    Parameters
    ----------
    preprocessing : Preprocessing
        Gives the output size, interpolation, mean and std.
    scale : tuple of 2 floats, default=(0.08, 1.0)
        Range of the crop's area as a fraction of the image (torchvision's default).

    Returns
    -------
    transform : torchvision.transforms.v2.Compose
        Draws from torch's global random generator, so seeding torch seeds it.
    """
    from torchvision.transforms import v2

    p = preprocessing
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(
                p.input_size,
                scale=scale,
                interpolation=v2.InterpolationMode(p.interpolation),
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(p.mean, p.std),
            v2.ToPureTensor(),
        ]
    )


def eval_transform(preprocessing, crop: str = "center", flip: bool = False):
    """The evaluation transform of ``preprocessing``, or one of its test-time views.

    Resize the shorter side to ``resize_size`` (both sides with
    ``crop_mode="squash"``), keep an ``input_size`` square, mirror it when
    ``flip``, scale to [0, 1] and normalise: with the centre crop, exactly
    torchvision's and timm's evaluation transform.

    Parameters
    ----------
    preprocessing : Preprocessing
    crop : {"center", "top_left", "top_right", "bottom_left", "bottom_right"}, default="center"
        Which square of the resized image is kept (the corners are
        torchvision's ``FiveCrop``).
    flip : bool, default=False
        Mirror the crop left to right.

    Returns
    -------
    transform : torchvision.transforms.v2.Compose
        Maps a uint8 ``(H, W, 3)`` array to a float32 ``(3, S, S)`` tensor.
    """
    return _eval_transform(preprocessing, crop, flip)


@functools.lru_cache(maxsize=64)
def _eval_transform(preprocessing, crop: str, flip: bool):
    from torchvision.transforms import v2

    p = preprocessing
    size = [p.input_size, p.input_size]
    return v2.Compose(
        [
            centre_of_elongated,
            _as_image,
            v2.Resize(
                [p.resize_size] * (2 if p.crop_mode == "squash" else 1),
                interpolation=v2.InterpolationMode(p.interpolation),
                antialias=True,
            ),
            v2.CenterCrop(size) if crop == "center" else _Corner(crop, size),
            *([v2.RandomHorizontalFlip(p=1.0)] if flip else []),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(p.mean, p.std),
            v2.ToPureTensor(),
        ]
    )


def centre_of_elongated(rgb: np.ndarray) -> np.ndarray:
    """The centre of ``rgb``, cut to at most 4:1: all the evaluation transform keeps of it.

    Cut before resizing, so that resizing a very elongated image cannot take
    unbounded memory; the fine-tuner's kept images are cut the same way.
    """
    height, width = rgb.shape[:2]
    keep = _MAX_ASPECT * min(height, width)
    if height > keep:
        return rgb[(height - keep) // 2 :][:keep]
    if width > keep:
        return rgb[:, (width - keep) // 2 :][:, :keep]
    return rgb


def _as_image(rgb: np.ndarray):
    """A (3, H, W) view of a copy of the (H, W, 3) pixels: channels-last memory,
    which torch's uint8 resize reads fastest (``v2.ToImage`` would copy again)."""
    from torchvision import tv_tensors

    return tv_tensors.Image(torch.from_numpy(np.array(rgb)).permute(2, 0, 1))


@dataclass(frozen=True)
class _Corner:
    """One corner square of torchvision's ``FiveCrop``."""

    crop: str
    size: list

    def __call__(self, image):
        import torchvision.transforms.v2.functional as F

        return F.five_crop(image, self.size)[_FIVE_CROP_ORDER.index(self.crop)]


@dataclass(frozen=True)
class EvalView:
    """One deterministic view of an image for test-time augmentation.

    Parameters
    ----------
    preprocessing : Preprocessing
        The evaluation transform: resize the shorter side, crop, normalise.
    crop : {"center", "top_left", "top_right", "bottom_left", "bottom_right"}
        Which ``input_size`` square of the resized image is kept.
    flip : bool
        Mirror the crop left to right.
    """

    preprocessing: object
    crop: str = "center"
    flip: bool = False

    @property
    def name(self) -> str:
        """Short name, part of cache keys: ``"center"``, ``"top_left-flip"``, ..."""
        return self.crop + ("-flip" if self.flip else "")

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return eval_transform(self.preprocessing, self.crop, self.flip)(rgb)


def eval_views(preprocessing, tta) -> list[EvalView]:
    """The views that ``tta`` averages over (one, the plain evaluation, when False)."""
    return [EvalView(preprocessing, crop, flip) for crop, flip in TTA_VIEWS[tta]]
