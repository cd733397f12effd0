"""Image transforms for training and test-time augmentation, built from torchvision v2.

Every transform maps a decoded uint8 ``(H, W, 3)`` image to a normalised
float32 ``(3, S, S)`` tensor, sized and normalised by a backbone's
:class:`~sktransfer.Preprocessing`, like the preprocessing itself.
"""

from __future__ import annotations

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

#: ``decode="fast"`` decodes files to a shorter side of at least this many
#: times the resize size (see :func:`decode_min_side`).
FAST_DECODE_FACTOR = 2

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
        For :class:`~sktransfer._images.ImageCollection`.
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
        import torchvision.transforms.v2.functional as F

        if self.crop == "center":
            image = self.preprocessing(rgb)
        else:
            p = self.preprocessing
            image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
            image = F.resize(
                image,
                [p.resize_size],
                interpolation=F.InterpolationMode(p.interpolation),
                antialias=True,
            )
            image = F.five_crop(image, [p.input_size, p.input_size])
            image = image[_FIVE_CROP_ORDER.index(self.crop)]
            image = F.normalize(image.float().div_(255), p.mean, p.std)
        # Mirroring commutes with per-channel normalisation, so it can come last.
        return F.horizontal_flip(image) if self.flip else image


def eval_views(preprocessing, tta) -> list[EvalView]:
    """The views that ``tta`` averages over (one, the plain evaluation, when False)."""
    return [EvalView(preprocessing, crop, flip) for crop, flip in TTA_VIEWS[tta]]
