"""The shared batched inference loop: same function as the module, failures beside results."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sktransfer._backbones import Backbone, module_stages
from sktransfer._engines.torch import Engine, TorchEngine, run_batches
from sktransfer._input.images import ImageCollection

from .conftest import TINY_PREPROCESSING, make_tiny_backbone


@pytest.fixture(scope="module")
def model():
    return Backbone(module_stages(make_tiny_backbone())).eval()


def expected(model, images):
    batch = torch.stack([TINY_PREPROCESSING(image) for image in images])
    with torch.no_grad():
        return model(batch).numpy()


def test_outputs_are_the_module_applied_to_each_batch_in_order(model, small_images):
    chosen = [7, 0, 3, 11, 5]
    results = list(
        run_batches(
            model,
            ImageCollection(small_images),
            chosen,
            transform=TINY_PREPROCESSING,
            batch_size=2,
        )
    )
    assert [len(indices) for indices, _, _ in results] == [2, 2, 1]
    indices = np.concatenate([indices for indices, _, _ in results])
    rows = np.concatenate([rows for _, rows, _ in results])
    np.testing.assert_array_equal(indices, chosen)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, expected(model, small_images[chosen]), rtol=1e-5, atol=1e-6)


def test_bad_samples_are_yielded_beside_the_good_ones(model, small_images, tmp_path):
    missing = str(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = []
    for i in range(2):
        good.append(str(tmp_path / f"good{i}.png"))
        Image.fromarray(small_images[i]).save(good[-1])
    images = ImageCollection([good[0], missing, str(broken), good[1]])
    results = list(run_batches(model, images, transform=TINY_PREPROCESSING, batch_size=2))
    (first, rows_a, bad_a), (second, rows_b, bad_b) = results
    assert first.tolist() == [0] and rows_a.shape == (1, 8)
    assert [failure.index for failure in bad_a] == [1]
    assert missing in str(bad_a[0])
    # A batch where every sample failed yields no outputs, and the loop goes on.
    assert second.tolist() == [3] and rows_b.shape == (1, 8)
    assert [failure.index for failure in bad_b] == [2]
    one_bad = ImageCollection([missing])
    ((indices, rows, bad),) = run_batches(
        model, one_bad, transform=TINY_PREPROCESSING, batch_size=2
    )
    assert len(indices) == 0 and rows is None and len(bad) == 1


def test_tensor_outputs_can_feed_training(small_images):
    """Outputs made under inference mode could not be saved for backward; ours can."""
    stem = make_tiny_backbone()[0]
    ((_, activations, _),) = run_batches(
        stem,
        ImageCollection(small_images[:3]),
        transform=TINY_PREPROCESSING,
        batch_size=4,
        as_numpy=False,
    )
    assert isinstance(activations, torch.Tensor) and activations.shape[:2] == (3, 4)
    head = nn.Conv2d(4, 2, 1)
    head(activations).sum().backward()
    assert head.weight.grad is not None


def test_an_engine_is_used_as_it_is(small_images):
    class Doubling(Engine):
        def __call__(self, batch):
            return 2 * batch.flatten(1)[:, :3]

    ((_, rows, _),) = run_batches(
        Doubling(), ImageCollection(small_images[:2]), transform=TINY_PREPROCESSING, batch_size=4
    )
    batch = torch.stack([TINY_PREPROCESSING(image) for image in small_images[:2]])
    np.testing.assert_array_equal(rows, 2 * batch.flatten(1)[:, :3].numpy())


def test_torch_engine_autocasts_and_returns_float32(model, small_images):
    batch = torch.stack([TINY_PREPROCESSING(image) for image in small_images[:4]])
    outputs = TorchEngine(model, torch.device("cpu"), torch.bfloat16)(batch)
    assert outputs.dtype == torch.float32
    # bf16 keeps about 3 significant digits: close to, but not equal to, fp32.
    np.testing.assert_allclose(outputs.numpy(), expected(model, small_images[:4]), atol=0.05)
