"""Train augmentation and test-time views, checked against torchvision's own transforms."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from sktransfer import Preprocessing
from sktransfer._input.transforms import (
    TTA_VIEWS,
    EvalView,
    eval_transform,
    eval_views,
    train_augmentation,
)

P = Preprocessing(input_size=24, resize_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def image(photos):
    return photos[0][::8, ::8].copy()  # chelsea, 38x57


def torchvision_resized(image):
    return v2.Compose(
        [v2.ToImage(), v2.Resize(P.resize_size, antialias=True), v2.ToDtype(torch.uint8)]
    )(image)


def normalise(tensor, preprocessing=P):
    return v2.Normalize(preprocessing.mean, preprocessing.std)(tensor.float() / 255)


def test_the_plain_view_is_the_preprocessing(image):
    (view,) = eval_views(P, False)
    torch.testing.assert_close(view(image), P(image))


def test_ten_crop_views_are_torchvisions_ten_crop(image):
    views = eval_views(P, "ten_crop")
    expected = [normalise(crop) for crop in v2.TenCrop(P.input_size)(torchvision_resized(image))]
    assert len(views) == len(TTA_VIEWS["ten_crop"]) == 10
    # The same ten crops (torchvision crops the mirrored image, so its mirrored
    # "top left" is our mirrored top right): each view matches exactly one.
    matches = [
        [i for i, crop in enumerate(expected) if torch.allclose(view(image), crop, atol=1e-6)]
        for view in views
    ]
    assert sorted(i for found in matches for i in found) == list(range(10))
    assert matches[1] == [0]  # top_left, unmirrored, is torchvision's first


def test_flip_view_mirrors_the_plain_view(image):
    plain, mirrored = eval_views(P, "flip")
    assert mirrored == EvalView(P, "center", True) and mirrored.name == "center-flip"
    torch.testing.assert_close(mirrored(image), plain(image).flip(-1))


def test_train_augmentation_is_random_seeded_and_normalised(image):
    augment = train_augmentation(P)
    torch.manual_seed(0)
    first = [augment(image) for _ in range(4)]
    torch.manual_seed(0)
    second = [augment(image) for _ in range(4)]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
        assert a.shape == (3, P.input_size, P.input_size) and a.dtype == torch.float32
        assert type(a) is torch.Tensor
    assert not torch.equal(first[0], first[1])
    # Normalised with the preprocessing's mean and std: pixels in [0, 1] map into this range.
    low = (0 - np.array(P.mean)) / np.array(P.std)
    high = (1 - np.array(P.mean)) / np.array(P.std)
    stacked = torch.stack(first).numpy()
    for channel in range(3):
        assert low[channel] - 1e-5 <= stacked[:, channel].min()
        assert stacked[:, channel].max() <= high[channel] + 1e-5


def test_eval_transform_is_one_torchvision_v2_pipeline(image):
    transform = eval_transform(P)
    assert isinstance(transform, v2.Compose) and eval_transform(P) is transform
    expected = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(P.resize_size, antialias=True),
            v2.CenterCrop(P.input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(P.mean, P.std),
        ]
    )(image)
    torch.testing.assert_close(P(image), expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(40, 400, 3), (400, 40, 3)])
def test_corner_views_crop_the_image_the_plain_view_resizes(shape):
    # An elongated image loses all but its central 4:1 before resizing, and a squashed
    # one is resized on both sides: the corners are of that same resized image.
    rgb = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for p in (P, replace(P, crop_mode="squash")):
        if shape[0] < shape[1]:
            centre = rgb[:, 120:280]
        else:
            centre = rgb[120:280]
        size = [p.resize_size] * (2 if p.crop_mode == "squash" else 1)
        resized = v2.Resize(size, antialias=True)(torch.from_numpy(centre).permute(2, 0, 1))
        top_left = v2.FiveCrop(p.input_size)(resized)[0]
        torch.testing.assert_close(EvalView(p, "top_left")(rgb), normalise(top_left, p))
        torch.testing.assert_close(EvalView(p)(rgb), p(rgb))
