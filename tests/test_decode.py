"""``decode``: files decoded at the size the network needs, or in full, the exact reference."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from sktransfer import Preprocessing, PretrainedFeaturizer
from sktransfer._input.transforms import FAST_DECODE_FACTOR, decode_min_side

from ._helpers import CountingStage

# Small, so that the network's input itself can be the features (nn.Flatten).
P = Preprocessing(input_size=56, resize_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def big_jpeg(photos, tmp_path_factory):
    """A 1600x1200 JPEG: large enough for the fast decode to reduce it for P."""
    path = tmp_path_factory.mktemp("decode") / "big.jpg"
    Image.fromarray(photos[1]).resize((1600, 1200), Image.BICUBIC).save(path, quality=92)
    return str(path)


@pytest.fixture(scope="module")
def big_mpo(photos, tmp_path_factory):
    """The big JPEG's picture followed by a depth map, as a phone's portrait mode saves it."""
    path = tmp_path_factory.mktemp("decode") / "big.mpo"
    picture = Image.fromarray(photos[1]).resize((1600, 1200), Image.BICUBIC)
    depth = picture.convert("L").reduce(4)
    picture.save(path, "MPO", save_all=True, append_images=[depth], quality=92)
    with Image.open(path) as image:
        assert image.format == "MPO"
    return str(path)


def network_input(decode, X, preprocessing=P, cache=None):
    """What the network sees, through a featurizer whose backbone is nn.Flatten."""
    featurizer = PretrainedFeaturizer(
        nn.Flatten(), preprocessing=preprocessing, decode=decode, cache=cache, progress=False
    )
    size = preprocessing.input_size
    return featurizer.fit(X).transform(X).reshape(len(X), 3, size, size)


def torchvision_eval(preprocessing):
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(preprocessing.resize_size, antialias=True),
            v2.CenterCrop(preprocessing.input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preprocessing.mean, preprocessing.std),
        ]
    )


def test_min_side_is_the_fast_factor_times_the_resize_size():
    assert decode_min_side(P, "fast") == FAST_DECODE_FACTOR * 64
    assert decode_min_side(P, "full") is None
    with pytest.raises(ValueError, match="decode must be one of"):
        decode_min_side(P, "exact")


def test_full_decode_is_torchvisions_own_pipeline_exactly(big_jpeg):
    with Image.open(big_jpeg) as image:
        expected = torchvision_eval(P)(image.convert("RGB")).numpy()
    full = network_input("full", [big_jpeg])[0]
    np.testing.assert_allclose(full, expected, rtol=0, atol=1e-6)
    # The fast decode of this file (at 1/4) is another picture, a few levels apart.
    fast = network_input("fast", [big_jpeg])[0]
    assert np.abs(fast - expected).max() > 1e-3
    assert np.corrcoef(fast.ravel(), expected.ravel())[0, 1] > 0.99


def test_full_decode_is_timms_own_pipeline(big_jpeg):
    p = PretrainedFeaturizer().fit([np.zeros((8, 8, 3))]).spec_.preprocessing
    transform = timm.data.create_transform(
        input_size=p.input_size,
        interpolation=p.interpolation,
        mean=p.mean,
        std=p.std,
        crop_pct=p.input_size / p.resize_size,
    )
    with Image.open(big_jpeg) as image:
        expected = transform(image.convert("RGB")).numpy()
    full = network_input("full", [big_jpeg], p)[0]
    # timm resizes with PIL, torchvision with torch: the same filter, rounded apart by a level.
    level = 1 / 255 / min(p.std)
    assert np.abs(full - expected).max() <= level + 1e-6


def test_fast_and_full_are_cached_apart(big_jpeg):
    fast, full = network_input("fast", [big_jpeg]), network_input("full", [big_jpeg])
    assert not np.allclose(fast, full)
    for decode, expected in (("fast", fast), ("full", full), ("fast", fast)):
        np.testing.assert_array_equal(network_input(decode, [big_jpeg], cache="memory"), expected)


def test_an_mpo_decodes_as_the_jpeg_of_its_first_picture(big_jpeg, big_mpo):
    for decode in ("fast", "full"):
        np.testing.assert_array_equal(
            network_input(decode, [big_mpo]), network_input(decode, [big_jpeg])
        )


def test_each_file_is_cached_under_the_decode_it_got(big_jpeg, big_mpo, tmp_path):
    """A file decoded in full either way has one entry for both; a reduced decode its own."""
    png = tmp_path / "big.png"
    Image.open(big_jpeg).save(png)
    files = [big_jpeg, big_mpo, str(png)]

    def computed(decode):
        featurizer = PretrainedFeaturizer(
            nn.Sequential(CountingStage(), nn.Flatten()),
            preprocessing=P,
            decode=decode,
            cache=str(tmp_path / "store"),
            progress=False,
        ).fit(files)
        CountingStage.images_seen = 0
        featurizer.transform(files)
        return CountingStage.images_seen

    assert computed("fast") == 3
    assert computed("full") == 2  # the PNG's full decode is its fast one
    assert computed("fast") == computed("full") == 0


def test_in_memory_images_and_small_files_are_the_same_either_way(photos, tmp_path):
    small = tmp_path / "small.jpg"
    Image.fromarray(photos[1]).save(small, quality=92)  # 600x400: nothing to reduce for 2x256
    default = PretrainedFeaturizer().fit([np.zeros((8, 8, 3))]).spec_.preprocessing
    for X in (photos[:2], [str(small)]):
        np.testing.assert_array_equal(
            network_input("fast", X, default), network_input("full", X, default)
        )


@pytest.mark.slow
def test_fast_decode_of_phone_photos_keeps_the_default_backbones_features(photos, tmp_path):
    paths = []
    for i, photo in enumerate(photos[:2]):
        paths.append(str(tmp_path / f"{i}.jpg"))
        big = Image.fromarray(photo).resize((4032, 3024), Image.BICUBIC)
        big.save(paths[-1], quality=92)
    features = {
        decode: PretrainedFeaturizer(decode=decode, cache=None, progress=False).fit_transform(paths)
        for decode in ("fast", "full")
    }
    a, b = features["fast"], features["full"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999 and not np.array_equal(a, b)
