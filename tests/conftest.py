"""Shared fixtures: real photos from scikit-image, written to disk, and a tiny backbone."""

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sktransfer import Preprocessing

from . import _docs_build

skimage_data = pytest.importorskip("skimage.data")

PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket")


def pytest_configure(config):
    # torch's threads, shared out between pytest-xdist's workers: each worker using them all
    # oversubscribes the cores, and spinning OpenMP threads then waste them (on 2 cores the
    # suite took 638 s that way, 414 s this way). The environment variable carries the share
    # to the processes the tests start.
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        threads = max(1, torch.get_num_threads() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def docs_build_in_background(request, tmp_path_factory):
    """Start the docs build with the session when a selected test needs it.

    The build runs every gallery example and is the longest job of the suite;
    started first, it runs beside the other tests instead of after them.
    ``tests/test_examples.py`` waits for it.
    """
    needed = any("docs_build" in item.fixturenames for item in request.session.items)
    process = None
    if needed and _docs_build.can_build():
        process = _docs_build.start(_docs_build.build_folder(request.config, tmp_path_factory))
    yield
    if process is not None:
        # The other xdist worker may still be waiting for it: let it finish.
        try:
            process.wait(timeout=_docs_build.BUILD_TIMEOUT_S)
        finally:
            process.kill()


@pytest.fixture(scope="session")
def photos():
    """A few real RGB photos as uint8 (H, W, 3) arrays of different sizes."""
    return [getattr(skimage_data, name)() for name in PHOTO_NAMES]


@pytest.fixture(scope="session")
def photo_paths(photos, tmp_path_factory):
    """The same photos as lossless PNG files on disk."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, photo in zip(PHOTO_NAMES, photos):
        path = folder / f"{name}.png"
        Image.fromarray(photo).save(path)
        paths.append(str(path))
    return paths


def make_tiny_backbone(seed=0):
    """A small conv net with BatchNorm, three stages, 8-dim pooled output."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()),
    ).eval()


TINY_PREPROCESSING = Preprocessing(input_size=32, resize_size=36)


@pytest.fixture
def tiny_backbone():
    return make_tiny_backbone()


@pytest.fixture(scope="session")
def small_images():
    """Twelve small random RGB images."""
    return np.random.default_rng(0).integers(0, 256, (12, 40, 48, 3), dtype=np.uint8)


@contextlib.contextmanager
def unable_to_write(directory):
    """Make ``directory`` and its files read-only for this process, for real.

    root ignores permission bits, so as root the process acts as user nobody
    meanwhile (effective uid only, so it can switch back).
    """
    directory = Path(directory)
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in [directory, *directory.iterdir()]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)
    try:
        yield
    finally:
        if as_root:
            os.seteuid(0)
        for path, mode in modes.items():
            path.chmod(mode)


@pytest.fixture
def shared_tmp():
    """A folder that a process acting as user nobody can reach (pytest's is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="sktransfer-ro-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
