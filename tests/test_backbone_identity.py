"""What names a backbone's function in cache keys, and what a user's module is spared."""

import os
import shutil

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from sktransfer import (
    Preprocessing,
    PretrainedFeaturizer,
    WeightsIntegrityError,
    WeightsNotFoundError,
    cache_info,
)
from sktransfer._backbones import get_backbone_spec, load_network, module_fingerprint, resolve_spec

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

    def test_a_file_swapped_keeping_size_and_mtime_gives_its_own_features(self, images, tmp_path):
        path, other = tmp_path / "w.safetensors", tmp_path / "other.safetensors"
        for seed, file in enumerate((path, other)):
            torch.manual_seed(seed)
            save_file(timm.create_model(TINY_TIMM).state_dict(), str(file))
        assert path.stat().st_size == other.stat().st_size
        old = featurize(TINY_TIMM, images, weights=str(path), cache="memory")
        before = path.stat()
        shutil.copyfile(other, path)  # then as `cp -p`, `rsync -a` or `tar x`: the mtime kept
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (
            before.st_size,
            before.st_mtime_ns,
        )
        new = featurize(TINY_TIMM, images, weights=str(path), cache="memory")
        truth = featurize(TINY_TIMM, images, weights=str(other), cache=None)
        np.testing.assert_allclose(new, truth, atol=1e-5)
        assert not np.allclose(old, new)

    def test_a_checkpoint_with_another_head_is_refused_at_fit_naming_the_keys(
        self, images, tmp_path
    ):
        torch.save(timm.create_model(TINY_TIMM, num_classes=10).state_dict(), tmp_path / "h.pth")
        with pytest.raises(WeightsIntegrityError, match="(?s)does not fit test_resnet.*fc.weight"):
            PretrainedFeaturizer(TINY_TIMM, weights=str(tmp_path / "h.pth")).fit(images)

    def test_a_checkpoint_with_an_extra_key_is_refused_at_fit_naming_it(self, images, tmp_path):
        state = {**timm.create_model(TINY_TIMM).state_dict(), "extra.weight": torch.zeros(1)}
        torch.save(state, tmp_path / "x.pth")
        with pytest.raises(WeightsIntegrityError, match="extra.weight"):
            PretrainedFeaturizer(TINY_TIMM, weights=str(tmp_path / "x.pth")).fit(images)

    def test_a_safetensors_file_with_the_network_names_is_paired_by_name(self, tmp_path):
        state = load_network(get_backbone_spec("efficientnet_lite0")).state_dict()
        path = tmp_path / "lite0.safetensors"  # safetensors stores its tensors sorted by name
        save_file(state, str(path))
        # What transform builds, after fit resolved the file.
        loaded = load_network(resolve_spec("efficientnet_lite0", str(path))).state_dict()
        assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())

    def test_a_directory_is_named_as_one(self, images, tmp_path):
        with pytest.raises(WeightsNotFoundError, match="is a directory"):
            PretrainedFeaturizer(weights=str(tmp_path)).fit(images)

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

    def test_without_a_seed_each_fit_builds_a_new_network(self, images):
        first = PretrainedFeaturizer(
            TINY_TIMM, weights=None, preprocessing=SMALL, cache=None, progress=False
        ).fit(images)
        a = first.transform(images)
        b = featurize(TINY_TIMM, images, weights=None, cache=None)
        assert not np.allclose(a, b)
        np.testing.assert_array_equal(first.transform(images), a)  # the same one until refit

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


class Trunk(nn.Module):
    """Runs its network's first ``upto`` layers: a plain int decides the function."""

    def __init__(self, net, upto):
        super().__init__()
        self.net, self.upto = net, upto

    def forward(self, x):
        for layer in self.net[: self.upto]:
            x = layer(x)
        return x


class Scaled(nn.Module):
    """Multiplies by a non-persistent buffer, which ``state_dict`` leaves out."""

    def __init__(self, scale):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, x):
        return self.conv(x) * self.scale


class Gain:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return "Gain()"


class Gained(Scaled):
    def __init__(self, gain):
        super().__init__(1.0)
        self.gain = gain

    def forward(self, x):
        return super().forward(x) * self.gain.value


def direct(module, images):
    """Features computed by hand: the module on SMALL's preprocessing, average-pooled."""
    batch = torch.stack([SMALL(image) for image in images])
    with torch.inference_mode():
        return module.eval()(batch).mean(dim=(2, 3)).numpy()


class TestModuleIdentity:
    def test_a_plain_attribute_that_changes_the_function_changes_the_features(self, images):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3))
        for cache in (None, "memory"):
            two, three = Trunk(net, 2), Trunk(net, 3)
            got = featurize(two, images, cache=cache)
            np.testing.assert_allclose(got, direct(two, images), rtol=1e-5, atol=1e-6)
            # Six features, not the four probed for the first module.
            got = featurize(three, images, cache=cache)
            np.testing.assert_allclose(got, direct(three, images), rtol=1e-5, atol=1e-6)

    def test_a_non_persistent_buffer_is_part_of_the_identity(self, images):
        one, two = Scaled(1.0), Scaled(2.0)
        assert resolve_spec(one).key != resolve_spec(two).key
        for cache in (None, "memory"):
            featurize(one, images, cache=cache)
            got = featurize(two, images, cache=cache)
            np.testing.assert_allclose(got, direct(two, images), rtol=1e-5, atol=1e-6)

    def test_a_built_network_is_never_served_to_another_module(self, images):
        # An object the identity cannot read (slots, a constant repr): equal identities.
        one, two = Gained(Gain(1.0)), Gained(Gain(-1.0))
        assert resolve_spec(one).key == resolve_spec(two).key
        featurize(one, images, cache=None)
        got = featurize(two, images, cache=None)
        np.testing.assert_allclose(got, direct(two, images), rtol=1e-5, atol=1e-6)

    def test_the_class_source_is_part_of_the_identity(self):
        namespace = {}
        for body in ("x * 2", "x * 3"):
            source = f"class Op(nn.Module):\n    def forward(self, x):\n        return {body}\n"
            exec(source, {"nn": nn}, namespace)  # the same qualified name, another forward
            namespace[body] = module_fingerprint(nn.Sequential(namespace["Op"]()))
        assert namespace["x * 2"] != namespace["x * 3"]


class TestModuleWeights:
    def test_a_weights_file_is_loaded_into_a_copy_of_the_module(self, images, tmp_path):
        module, other = Scaled(1.0), Scaled(1.0)
        with torch.no_grad():
            other.conv.weight.mul_(-1)
        torch.save(other.state_dict(), tmp_path / "other.pth")
        got = featurize(module, images, weights=str(tmp_path / "other.pth"), cache="memory")
        np.testing.assert_allclose(got, direct(other, images), rtol=1e-5, atol=1e-6)
        assert not torch.equal(module.conv.weight, other.conv.weight)  # the module is spared

    def test_a_file_that_does_not_fit_the_module_names_its_keys_at_fit(self, images, tmp_path):
        torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "part.pth")
        with pytest.raises(WeightsIntegrityError, match="conv.bias"):
            PretrainedFeaturizer(Scaled(1.0), weights=str(tmp_path / "part.pth")).fit(images)

    @pytest.mark.parametrize("weights", [None, "missing.pth"])
    def test_no_weights_or_a_missing_file_is_refused_at_fit(self, images, weights):
        with pytest.raises((ValueError, WeightsNotFoundError), match="weights"):
            PretrainedFeaturizer(Scaled(1.0), weights=weights).fit(images)


class TestModuleContract:
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    @pytest.mark.parametrize(
        "module, match",
        [
            (Pair(), "returned a tuple"),
            (nn.Conv2d(3, 4, 3).double(), "torch.float64"),
            (nn.Linear(3, 4), "failed on a blank"),
        ],
        ids=["tuple", "double", "shape"],
    )
    def test_a_module_outside_the_contract_is_told_what_a_backbone_returns(
        self, images, module, match
    ):
        with pytest.raises((TypeError, ValueError), match=f"{match}.*must map a float32 batch"):
            PretrainedFeaturizer(module, preprocessing=SMALL).fit(images)
