"""Load labelled image folders, and small real-photo data sets for demos and tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: File extensions :func:`load_image_folder` picks up (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

TEXTURES = ("brick", "grass", "gravel")


def load_image_folder(root, extensions=IMAGE_EXTENSIONS):
    """Paths and labels of a ``root/<label>/<image>`` tree, like ``load_files``.

    Parameters
    ----------
    root : str or PathLike
        A folder with one sub-folder per class, named by the class label.
    extensions : tuple of str, default=IMAGE_EXTENSIONS
        Only files with these extensions (case-insensitive) are taken;
        hidden files are skipped.

    Returns
    -------
    paths : ndarray of str, shape (n_samples,)
        Image file paths, sorted by label then file name.
    labels : ndarray of str, shape (n_samples,)
        The sub-folder name of each image.

    Examples
    --------
    >>> X, y = load_image_folder("pets/")  # doctest: +SKIP
    >>> sorted(set(y))  # doctest: +SKIP
    ['misty', 'neither', 'tigger']
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    extensions = tuple(e.lower() for e in extensions)
    paths, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.iterdir()):
            if (
                file.is_file()
                and not file.name.startswith(".")
                and (file.suffix.lower() in extensions)
            ):
                paths.append(os.fspath(file))
                labels.append(class_dir.name)
    if not paths:
        raise ValueError(
            f"no images found under {str(root)!r}; expected {root}/<label>/<image> files "
            f"with extensions {', '.join(extensions)}"
        )
    return np.array(paths), np.array(labels)


def load_textures(patch_size=64, stride=None):
    """Patches of three real texture photos: brick, grass and gravel.

    The photos are the 512x512 grayscale textures that scikit-image ships;
    each is cut into non-overlapping square patches. A raw-pixel classifier
    struggles here (textures shift), a pretrained network does not.

    Parameters
    ----------
    patch_size : int, default=64
        Side of each square patch in pixels.
    stride : int, default=None
        Step between patches; defaults to ``patch_size`` (no overlap).

    Returns
    -------
    images : ndarray of uint8, shape (n_samples, patch_size, patch_size)
    labels : ndarray of str, shape (n_samples,)
        ``"brick"``, ``"grass"`` or ``"gravel"``.
    """
    data = _skimage_data()
    stride = stride or patch_size
    images, labels = [], []
    for name in TEXTURES:
        photo = getattr(data, name)()
        for top in range(0, photo.shape[0] - patch_size + 1, stride):
            for left in range(0, photo.shape[1] - patch_size + 1, stride):
                images.append(photo[top : top + patch_size, left : left + patch_size])
                labels.append(name)
    return np.stack(images), np.array(labels)


def load_faces():
    """Small real photos of faces and non-faces (scikit-image's ``lfw_subset``).

    Returns
    -------
    images : ndarray of float64, shape (200, 25, 25)
        Grayscale in [0, 1].
    labels : ndarray of str, shape (200,)
        ``"face"`` for the first 100, ``"non-face"`` for the rest.
    """
    images = _skimage_data().lfw_subset()
    return images, np.array(["face"] * 100 + ["non-face"] * 100)


def save_image_folder(images, labels, root, suffix=".jpg"):
    """Write images as ``root/<label>/<index>.jpg`` files, the layout of :func:`load_image_folder`.

    Parameters
    ----------
    images : sequence of arrays
        uint8 (H, W) or (H, W, 3) images.
    labels : sequence of str
    root : str or PathLike
    suffix : str, default=".jpg"

    Returns
    -------
    root : Path
    """
    from PIL import Image

    root = Path(root)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image)).save(folder / f"{index:05d}{suffix}", quality=95)
    return root


def _skimage_data():
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError(
            "the demo data sets are photos that scikit-image ships; install it with "
            "`pip install scikit-image` (or `pip install sktransfer[demo]`)"
        ) from exc
    return skimage.data
