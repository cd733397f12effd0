"""What names a backbone's function in cache keys, and what a user's module is spared."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from sktransfer import Preprocessing, PretrainedFeaturizer, WeightsNotFoundError, cache_info
from sktransfer._backbones import get_backbone_spec, load_network, resolve_spec

from ._helpers import run_python

SMALL = Preprocessing(input_size=32, resize_size=36)
TINY_TIMM = "test_resnet"  # timm's own test model: 96 features in a few milliseconds


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)


def conv_then(activation):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), activation)


def featurize(backbone, images, **params):
    params = {"preprocessing": SMALL, "progress": False, **params}
    return PretrainedFeaturizer(backbone, **params).fit_transform(images)


class TestUserModules:
    def test_same_tensors_different_structure_get_their_own_features(self, images, tmp_path):
        relu, tanh = conv_then(nn.ReLU()), conv_then(nn.Tanh())
        assert torch.equal(relu[0].weight, tanh[0].weight)
        for cache in ("memory", str(tmp_path)):
            with_relu = featurize(relu, images, cache=cache)
            with_tanh = featurize(tanh, images, cache=cache)
            np.testing.assert_allclose(with_tanh, featurize(tanh, images, cache=None), atol=1e-6)
            assert not np.allclose(with_relu, with_tanh)

    def test_the_module_is_copied_never_changed(self, images):
        module = conv_then(nn.ReLU()).train()
        module[0].weight.requires_grad_(True)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        featurize(module, images, cache=None)
        assert module.training and all(m.training for m in module.modules())
        assert module[0].weight.is_contiguous()  # not moved to channels_last
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())

    def test_a_module_changed_after_fit_is_a_new_function_at_the_next_fit(self, images):
        module = conv_then(nn.ReLU())
        first = featurize(module, images, cache="memory")
        with torch.no_grad():
            module[0].weight.mul_(2)
        second = featurize(module, images, cache="memory")
        np.testing.assert_allclose(second, featurize(module, images, cache=None), atol=1e-6)
        assert not np.allclose(first, second)


class TestWeightsFiles:
    def save_random(self, path, seed):
        torch.manual_seed(seed)
        torch.save(timm.create_model(TINY_TIMM).state_dict(), path)

    @pytest.mark.slow  # starts other Python processes
    def test_a_file_resaved_in_place_gives_the_new_network(self, images, tmp_path):
        path, cache = tmp_path / "w.pth", tmp_path / "cache"
        self.save_random(path, 0)
        old = featurize(TINY_TIMM, images, weights=str(path), cache=str(cache))
        self.save_random(path, 1)
        new = featurize(TINY_TIMM, images, weights=str(path), cache=str(cache))
        truth = featurize(TINY_TIMM, images, weights=str(path), cache=None)
        np.testing.assert_allclose(new, truth, atol=1e-5)
        assert not np.allclose(old, new)
        # A new process reads the disk cache: it must find the new file's features.
        script = (
            "import sys, numpy as np; from sktransfer import PretrainedFeaturizer, Preprocessing\n"
            "X = np.load(sys.argv[1])\n"
            f"f = PretrainedFeaturizer({TINY_TIMM!r}, weights=sys.argv[2], cache=sys.argv[3],"
            " preprocessing=Preprocessing(input_size=32, resize_size=36), progress=False)\n"
            "np.save(sys.argv[4], f.fit_transform(X))\n"
        )
        np.save(tmp_path / "X.npy", images)
        out = tmp_path / "out.npy"
        args = [tmp_path / "X.npy", path, cache, out]
        run_python(script, *args)
        np.testing.assert_allclose(np.load(out), truth, atol=1e-5)

    def test_a_file_changed_after_fit_is_refused_not_mixed(self, images, tmp_path):
        path = tmp_path / "w.pth"
        self.save_random(path, 0)
        featurizer = PretrainedFeaturizer(
            TINY_TIMM, weights=str(path), preprocessing=SMALL, cache=None, progress=False
        ).fit(images)
        self.save_random(path, 1)
        with pytest.raises(ValueError, match="sha256"):
            featurizer.transform(images)

    @pytest.mark.parametrize("weights", ["DEFAULT", "imagenet", "none"])
    def test_weights_names_that_are_not_default_are_clear_errors(self, images, weights):
        with pytest.raises(ValueError, match="'default'"):
            PretrainedFeaturizer(weights=weights).fit(images)

    def test_a_misspelt_weights_name_is_a_missing_file_at_fit(self, images):
        with pytest.raises(WeightsNotFoundError, match="'defualt' does not exist.*'default'"):
            PretrainedFeaturizer(weights="defualt").fit(images)


class TestRandomWeights:
    def test_a_seed_builds_the_same_network_and_its_features_are_cached(self, images):
        before = cache_info("memory").entries
        a = featurize(TINY_TIMM, images, weights=None, random_state=0)
        assert cache_info("memory").entries > before  # stored: a seeded network is cacheable
        b = featurize(TINY_TIMM, images, weights=None, random_state=0, cache=None)
        c = featurize(TINY_TIMM, images, weights=None, random_state=1, cache=None)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)
        assert "random:0" in resolve_spec(TINY_TIMM, None, random_state=0).key

    def test_without_a_seed_nothing_is_cached(self, images):
        before = cache_info("memory").entries
        featurize(TINY_TIMM, images, weights=None)
        assert cache_info("memory").entries == before

    def test_seeding_does_not_touch_the_global_generator(self):
        torch.manual_seed(5)
        expected = torch.rand(1)
        torch.manual_seed(5)
        load_network(resolve_spec(TINY_TIMM, None, random_state=0))
        assert torch.equal(torch.rand(1), expected)


class TestPreprocessingOverride:
    def test_lists_are_stored_as_tuples(self):
        p = Preprocessing(mean=[0.5, 0.5, 0.5], std=np.array([0.25, 0.25, 0.25]))
        assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.25, 0.25, 0.25)
        assert hash(p) == hash(Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3))

    @pytest.mark.parametrize(
        "bad, match",
        [
            (dict(mean=[0.5, 0.5]), "mean must be 3"),
            (dict(std=[0.5, 0.0, 0.5]), "std must be positive"),
            (dict(input_size=0), "input_size"),
            (dict(interpolation="lanczos"), "interpolation"),
        ],
    )
    def test_bad_values_are_refused_at_construction(self, bad, match):
        with pytest.raises(ValueError, match=match):
            Preprocessing(**bad)

    def test_an_override_changes_the_key(self):
        spec = get_backbone_spec("efficientnet_lite0")
        other = resolve_spec("efficientnet_lite0", preprocessing=SMALL)
        assert other.preprocessing == SMALL and other.key != spec.key
