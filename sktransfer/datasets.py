"""Load labelled image folders, and small real-photo data sets for demos and tests."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

TEXTURES = ("brick", "grass", "gravel")


def _pillow_extensions() -> tuple[str, ...]:
    """Extensions of the formats Pillow decodes (as torchvision's ImageFolder, with Pillow's list).

    Stub formats (HDF5, GRIB, WMF) need a handler Pillow does not ship, and
    MPEG is only identified, never decoded: files of those are not images here.
    """
    from PIL import Image, ImageFile

    Image.init()
    decoded = {
        name
        for name, (factory, _) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    } - {"MPEG"}
    return tuple(sorted(e for e, name in Image.registered_extensions().items() if name in decoded))


#: File extensions :func:`load_image_folder` picks up (case-insensitive): every format Pillow
#: decodes, ``.jfif`` and ``.jpe`` included.
IMAGE_EXTENSIONS = _pillow_extensions()


def load_image_folder(root, extensions=None):
    """Paths and labels of a ``root/<label>/.../<image>`` tree, like torchvision's ``ImageFolder``.

    Each folder directly under ``root`` is a class; its images are found at
    any depth below it (``cat/indoor/1.png`` is a ``cat``), following links.
    Hidden files and folders (names starting with ``.``) are left out; any
    other file that is not an image, and files directly under ``root``, are
    left out with a warning that names them.

    Parameters
    ----------
    root : str or PathLike
        A folder with one sub-folder per class, named by the class label.
    extensions : tuple of str, default=None
        Only files with these extensions (case-insensitive) are taken; None
        takes :data:`IMAGE_EXTENSIONS`, every format Pillow can decode.

    Returns
    -------
    paths : ndarray of str, shape (n_samples,)
        Image file paths under ``root``, sorted by label, then by their path
        within the class folder.
    labels : ndarray of str, shape (n_samples,)
        The class folder of each image.

    Raises
    ------
    FileNotFoundError
        ``root`` is not a folder.
    ValueError
        ``root`` has no class folder, a class folder holds no image (as
        torchvision's ``ImageFolder``), or a class folder is a link to
        ``root`` or a folder above it (its images would be every class's).

    Warns
    -----
    UserWarning
        Files left out, and links back to a folder already walked (a loop,
        which is not followed).

    Examples
    --------
    A ``pets/`` folder with one sub-folder per class, made here from photos
    that scikit-image ships (your own photos go in such folders):

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skimage.data import astronaut, chelsea, coffee
    >>> from sktransfer.datasets import load_image_folder
    >>> folder = tempfile.TemporaryDirectory()
    >>> pets = Path(folder.name, "pets")
    >>> photos = {
    ...     "tigger/0.jpg": chelsea(),
    ...     "neither/1.jpg": coffee(),
    ...     "neither/2.jpg": astronaut(),
    ...     "misty/indoor/3.jpg": chelsea()[:, ::-1],  # images at any depth count
    ... }
    >>> for name, photo in photos.items():
    ...     (pets / name).parent.mkdir(parents=True, exist_ok=True)
    ...     Image.fromarray(photo).save(pets / name)
    >>> X, y = load_image_folder(pets)
    >>> y
    array(['misty', 'neither', 'neither', 'tigger'], dtype='<U7')
    >>> [str(Path(path).relative_to(pets)) for path in X]
    ['misty/indoor/3.jpg', 'neither/1.jpg', 'neither/2.jpg', 'tigger/0.jpg']
    >>> folder.cleanup()

    ``X`` goes straight into :class:`~sktransfer.PretrainedFeaturizer` or a
    fine-tuner.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    extensions = tuple(e.lower() for e in (IMAGE_EXTENSIONS if extensions is None else extensions))
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise ValueError(
            f"no class folders found under {str(root)!r}; expected {root}/<label>/<image> files"
        )
    skipped = [p for p in entries if not p.is_dir()]
    looped, paths, labels = [], [], []
    for class_dir in classes:
        if root.resolve().is_relative_to(class_dir.resolve()):
            raise ValueError(
                f"class folder {str(class_dir)!r} is a link to {str(root)!r} or a folder "
                "above it: its images would be those of every class. Remove the link or "
                "point it elsewhere"
            )
        images = _find_images(class_dir, root, extensions, skipped, looped)
        if not images:
            raise ValueError(
                f"no images found in class folder {str(class_dir)!r}; expected files with "
                f"one of the extensions {', '.join(extensions)} (at any depth). Remove the "
                "folder or add its images"
            )
        paths += images
        labels += [class_dir.name] * len(images)
    _warn_skipped(root, skipped, looped)
    return np.array(paths), np.array(labels)


def _find_images(class_dir: Path, root: Path, extensions, skipped: list, looped: list) -> list:
    """Image paths at any depth under ``class_dir``, each folder walked once (links followed)."""
    seen = {root.resolve()}
    images = []
    folders = [class_dir]
    while folders:
        folder = folders.pop()
        real = folder.resolve()
        if real in seen:  # a link back to a folder already walked: a loop, or a duplicate
            looped.append(folder)
            continue
        seen.add(real)
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(entry)
            elif entry.is_file() and entry.suffix.lower() in extensions:
                images.append(entry)
            else:
                skipped.append(entry)
    return [os.fspath(p) for p in sorted(images, key=lambda p: p.relative_to(class_dir).parts)]


def _warn_skipped(root: Path, skipped: list, looped: list, shown: int = 5) -> None:
    def listing(found):
        names = ", ".join(repr(os.fspath(p.relative_to(root))) for p in found[:shown])
        return names + (f" and {len(found) - shown} more" if len(found) > shown else "")

    if skipped:
        warnings.warn(
            f"load_image_folder left out {len(skipped)} file(s) under {str(root)!r} that are "
            f"not images in a class folder: {listing(skipped)}",
            UserWarning,
            stacklevel=3,
        )
    if looped:
        warnings.warn(
            f"load_image_folder did not follow {len(looped)} link(s) under {str(root)!r} back "
            f"to a folder already walked (a loop): {listing(looped)}",
            UserWarning,
            stacklevel=3,
        )


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

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.datasets import load_textures
    >>> images, labels = load_textures()
    >>> images.shape, images.dtype
    ((192, 64, 64), dtype('uint8'))
    >>> np.unique(labels)
    array(['brick', 'grass', 'gravel'], dtype='<U6')
    >>> load_textures(patch_size=128)[0].shape  # larger patches, fewer of them
    (48, 128, 128)
    >>> load_textures(patch_size=128, stride=64)[0].shape  # overlapping
    (147, 128, 128)
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

    Examples
    --------
    >>> from sktransfer.datasets import load_faces
    >>> images, labels = load_faces()
    >>> images.shape, float(images.min()), float(images.max())
    ((200, 25, 25), 0.0, 1.0)
    >>> labels[0], labels[-1]
    (np.str_('face'), np.str_('non-face'))
    """
    images = _skimage_data().lfw_subset()
    return images, np.array(["face"] * 100 + ["non-face"] * 100)


#: The colour photos :func:`make_exposure_patches` cuts patches from.
EXPOSURE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def make_exposure_patches(n_samples, patch_size=64, gain_range=(0.25, 1.75), random_state=None):
    """A regression task on real photos: random patches, each times an exposure gain.

    Patches are cut at random places from five colour photos that
    scikit-image ships (in turn); each is multiplied by a gain drawn
    uniformly from ``gain_range`` (in sRGB values, clipped to 0-255), and the
    gain is the target: how much brighter or darker the patch was made.

    Parameters
    ----------
    n_samples : int
    patch_size : int, default=64
        Side of each square patch in pixels.
    gain_range : tuple of float, default=(0.25, 1.75)
    random_state : int or None, default=None
        Seeds the places and the gains (numpy's ``default_rng``).

    Returns
    -------
    images : ndarray of uint8, shape (n_samples, patch_size, patch_size, 3)
    gains : ndarray of float64, shape (n_samples,)

    Examples
    --------
    >>> from sktransfer.datasets import make_exposure_patches
    >>> images, gains = make_exposure_patches(5, patch_size=32, random_state=0)
    >>> images.shape, images.dtype
    ((5, 32, 32, 3), dtype('uint8'))
    >>> gains.round(2)
    array([1.21, 0.65, 0.31, 0.27, 1.47])

    The same ``random_state`` gives the same patches and gains:

    >>> again, _ = make_exposure_patches(5, patch_size=32, random_state=0)
    >>> bool((again == images).all())
    True
    """
    data = _skimage_data()
    photos = [getattr(data, name)() for name in EXPOSURE_PHOTOS]
    rng = np.random.default_rng(random_state)
    patches, gains = [], rng.uniform(*gain_range, n_samples)
    for index, gain in enumerate(gains):
        photo = photos[index % len(photos)]
        top = rng.integers(0, photo.shape[0] - patch_size + 1)
        left = rng.integers(0, photo.shape[1] - patch_size + 1)
        patch = photo[top : top + patch_size, left : left + patch_size] * gain
        patches.append(np.clip(patch, 0, 255).round().astype(np.uint8))
    return np.stack(patches), gains


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

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sktransfer.datasets import load_image_folder, load_textures, save_image_folder
    >>> images, labels = load_textures(patch_size=128)
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = save_image_folder(images[::16], labels[::16], Path(folder.name, "textures"))
    >>> sorted(str(path.relative_to(root)) for path in root.rglob("*.jpg"))
    ['brick/00000.jpg', 'grass/00001.jpg', 'gravel/00002.jpg']
    >>> X, y = load_image_folder(root)
    >>> y
    array(['brick', 'grass', 'gravel'], dtype='<U6')
    >>> folder.cleanup()
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
