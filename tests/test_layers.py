"""Features from any depth: layers and pooling chosen by search, computed once per image."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from sktransfer import Preprocessing, PretrainedFeaturizer
from sktransfer._backbones import get_backbone_spec, load_backbone, load_network
from sktransfer._featurizer import _sample_keys
from sktransfer._layers import entry_model_key, resolve_layers, selected_entries
from sktransfer._store import cache_info, clear_cache
from sktransfer._store.keys import feature_key

from ._helpers import CountingStage

TINY = Preprocessing(input_size=16, resize_size=16)


def counting_backbone():
    """Four stages (counter, then three convs) whose pooled widths are 3, 4, 6, 5."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            counter=CountingStage(),
            conv1=nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()),
            conv2=nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU()),
            conv3=nn.Conv2d(6, 5, 3),
        )
    ).eval()


def featurizer(backbone, **params):
    return PretrainedFeaturizer(backbone, preprocessing=TINY, progress=False, **params)


def make_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def fresh():
    clear_cache("memory")
    CountingStage.images_seen = 0
    yield
    clear_cache("memory")


def images_seen(fn):
    before = CountingStage.images_seen
    result = fn()
    return CountingStage.images_seen - before, result


def expected_features(backbone, X, stages, pooling):
    """The truth: each prefix of the Sequential run on the preprocessed batch, then pooled."""
    batch = torch.stack([TINY(image) for image in X])
    outputs, x = [], batch
    with torch.no_grad():
        for stage in backbone:
            x = stage(x)
            outputs.append(x)
    parts = []
    for index in stages:
        if pooling in ("avg", "avgmax"):
            parts.append(outputs[index].mean(dim=(2, 3)))
        if pooling in ("max", "avgmax"):
            parts.append(outputs[index].amax(dim=(2, 3)))
    return torch.cat(parts, dim=1).numpy()


class TestSearchComputesOnce:
    @pytest.mark.parametrize("cache", ["memory", "disk"])
    def test_search_over_layers_runs_the_backbone_once_per_image(self, cache, tmp_path):
        X, y = make_images(30), np.repeat([0, 1, 2], 10)
        cache = str(tmp_path) if cache == "disk" else cache
        backbone = counting_backbone()
        featurizer(backbone, cache=cache).fit(X)  # the width probe, once per process
        pipe = make_pipeline(featurizer(backbone, cache=cache), LogisticRegression(max_iter=300))
        search = GridSearchCV(pipe, {"pretrainedfeaturizer__layers": [-1, -2, (-2, -1)]}, cv=3)
        count, _ = images_seen(lambda: search.fit(X, y))
        assert count == len(X)  # not candidates x folds x images
        best = search.best_estimator_[0]
        count, widths = images_seen(
            lambda: {
                layers: best.set_params(layers=layers).fit(X).transform(X).shape[1]
                for layers in [-1, -2, (-2, -1)]
            }
        )
        assert widths == {-1: 5, -2: 6, (-2, -1): 11}
        assert count == 0  # each a slice of what the search stored

    def test_search_over_layers_and_pooling_is_a_slice_of_one_pass(self):
        X, y = make_images(24), np.repeat([0, 1], 12)
        backbone = counting_backbone()
        featurizer(backbone).fit(X)
        pipe = make_pipeline(featurizer(backbone), LogisticRegression(max_iter=300))
        grid = {
            "pretrainedfeaturizer__layers": [1, "conv2", (1, 2, 3)],
            "pretrainedfeaturizer__pooling": ["auto", "avg", "max", "avgmax"],
        }
        count, _ = images_seen(lambda: GridSearchCV(pipe, grid, cv=2).fit(X, y))
        assert count == len(X)
        for layers in grid["pretrainedfeaturizer__layers"]:
            for pooling in ("avg", "max", "avgmax"):
                stored = featurizer(backbone, layers=layers, pooling=pooling).fit_transform(X)
                fresh = featurizer(backbone, layers=layers, pooling=pooling, cache=None)
                np.testing.assert_allclose(stored, fresh.fit_transform(X), atol=1e-6)

    def test_default_features_keep_their_key(self):
        """The default entries are today's: the fine-tuner and old disk caches share them."""
        X = make_images(4)
        backbone = counting_backbone()
        default = featurizer(backbone).fit(X)
        default.transform(X)
        entries = cache_info("memory").entries
        assert entries == len(X) * (2 * len(backbone) + 1)
        model_key = default._model_key(torch.float32)
        entries = [("conv3", "own"), ("conv3", "avg")]
        entry_keys = [entry_model_key(model_key, e, default.spec_.stages) for e in entries]
        keys = _sample_keys(entry_keys, "c")
        assert keys[0] == feature_key(f"{default.spec_.key}|fp32", "c")
        assert keys[1] != keys[0]


class TestValues:
    @pytest.mark.parametrize("pooling", ["avg", "max", "avgmax"])
    @pytest.mark.parametrize("cache", [None, "memory"])
    def test_pooled_stages_equal_running_the_prefix(self, pooling, cache):
        X = make_images(5)
        backbone = counting_backbone()
        features = featurizer(backbone, layers=(3, 1), pooling=pooling, cache=cache)
        computed = features.fit_transform(X)
        expected = expected_features(backbone, X, (3, 1), pooling)
        np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-6)
        again = features.transform(X)  # from the store when there is one
        np.testing.assert_allclose(again, computed, atol=1e-6)

    def test_default_is_the_model_own_features(self):
        X = make_images(4)
        backbone = counting_backbone()
        default = featurizer(backbone, cache=None).fit_transform(X)
        np.testing.assert_array_equal(
            default, featurizer(backbone, layers="conv3", cache=None).fit_transform(X)
        )
        np.testing.assert_allclose(default, expected_features(backbone, X, [3], "avg"), atol=1e-6)

    def test_a_token_model_pools_its_own_way_at_the_end_and_over_tokens_before(self):
        X = make_images(3)
        vit = PretrainedFeaturizer("test_vit", weights=None, random_state=0, progress=False)
        own = vit.fit_transform(X)
        avg = vit.set_params(pooling="avg").fit_transform(X)
        inner = vit.set_params(layers="block2", pooling="avgmax").fit_transform(X)
        backbone = load_backbone(vit.spec_)  # seeded: the same network
        batch = torch.stack([vit.spec_.preprocessing(image) for image in X])
        with torch.no_grad():
            tokens = backbone.stages(batch)
            np.testing.assert_allclose(own, backbone.pool(tokens).numpy(), atol=1e-5)
            np.testing.assert_allclose(own, tokens[:, 0].numpy(), atol=1e-5)  # the class token
            np.testing.assert_allclose(avg, tokens.mean(dim=1).numpy(), atol=1e-5)
            block2 = backbone.stages[:4](batch)
        assert vit.layers_ == (("block2", "avg", 64), ("block2", "max", 64))
        expected = torch.cat([block2.mean(dim=1), block2.amax(dim=1)], dim=1).numpy()
        np.testing.assert_allclose(inner, expected, atol=1e-5)


class TestChannelsLastStages:
    """Swin-style stages output (N, h, w, C): pooled over h and w, as the libraries do."""

    @pytest.mark.parametrize("name", ["test_mambaout", "swin_tiny_patch4_window7_224"])
    def test_timm_stages_equal_timms_own_intermediates(self, name):
        X = make_images(2)
        features = PretrainedFeaturizer(name, weights=None, random_state=0, progress=False)
        n_stages = len(features.fit(X).spec_.stages)
        after_stem = tuple(range(1, n_stages))
        pooled = features.set_params(layers=after_stem, pooling="avg").fit_transform(X)
        model = load_network(features.spec_)
        batch = torch.stack([features.spec_.preprocessing(image) for image in X])
        with torch.no_grad():
            # timm returns every stage channels-first here, the last one normed.
            stages = model.forward_intermediates(
                batch, indices=n_stages - 1, norm=True, intermediates_only=True
            )
        expected = torch.cat([stage.mean(dim=(2, 3)) for stage in stages], dim=1)
        assert features.spec_.stage_format == "NHWC"
        assert features.stage_widths_[1:] == tuple(info["num_chs"] for info in model.feature_info)
        np.testing.assert_allclose(pooled, expected.numpy(), rtol=1e-4, atol=1e-5)

    def test_torchvision_swin_stages_pool_the_way_its_head_does(self):
        X = make_images(2)
        features = PretrainedFeaturizer("swin_t", weights=None, random_state=0, progress=False)
        stages = features.fit(X).spec_.stages[1:]
        pooled = features.set_params(layers=stages, pooling="avg").fit_transform(X)
        model = load_network(features.spec_)
        nodes = [f"features.{index}" for index in range(1, len(model.features))]
        extractor = create_feature_extractor(model, return_nodes=nodes)
        batch = torch.stack([features.spec_.preprocessing(image) for image in X])
        with torch.no_grad():
            outputs = extractor(batch)
            # Swin's own head: permute to channels-first, then average over space.
            expected = [model.avgpool(model.permute(outputs[node])).flatten(1) for node in nodes]
        np.testing.assert_allclose(pooled, torch.cat(expected, dim=1).numpy(), atol=1e-5)

    def test_their_cache_keys_are_new(self):
        # Entries stored when these stages were pooled channels-first must miss.
        assert "|NHWC|" in get_backbone_spec("swin_t").key
        assert "NHWC" not in get_backbone_spec("resnet18").key


class TestParameters:
    def test_invalid_layers_name_the_stages(self):
        stages = ("stem", "block0", "head")
        for layers, message in [
            (3, "no stage 3"),
            (-4, "no stage -4"),
            ("block9", "'block9' is not a stage"),
            ((), "empty"),
            ((0, "stem"), "names a stage twice"),
            (True, "not a stage index or name"),
        ]:
            with pytest.raises(ValueError, match=message) as error:
                resolve_layers(layers, stages)
            assert "0 or -3 = 'stem', 1 or -2 = 'block0', 2 or -1 = 'head'" in str(error.value)
        assert resolve_layers((-1, "stem", 1), stages) == (2, 0, 1)

    def test_fit_rejects_bad_layers_and_pooling(self):
        X = make_images(2)
        with pytest.raises(ValueError, match="'conv9' is not a stage.*'counter'"):
            featurizer(counting_backbone(), layers="conv9").fit(X)
        with pytest.raises(InvalidParameterError, match="pooling"):
            featurizer(counting_backbone(), pooling="cls").fit(X)

    def test_auto_is_own_pooling_for_the_last_stage_only(self):
        stages = ("a", "b", "c")
        assert selected_entries((0, 2), "auto", stages) == (("a", "avg"), ("c", "own"))
        assert selected_entries((2,), "avgmax", stages) == (("c", "avg"), ("c", "max"))

    def test_feature_names_name_each_column_layer(self):
        X = make_images(2)
        backbone = counting_backbone()
        default = featurizer(backbone).fit(X)
        assert default.get_feature_names_out()[0] == "pretrainedfeaturizer0"
        chosen = featurizer(backbone, layers=("conv2", -1), pooling="avgmax").fit(X)
        names = chosen.get_feature_names_out()
        assert len(names) == chosen.n_features_out_ == 2 * (6 + 5)
        assert list(names[[0, 6, 12, 21]]) == [
            "conv2_avg_0",
            "conv2_max_0",
            "conv3_avg_0",
            "conv3_max_4",
        ]
        frame = chosen.set_output(transform="pandas").transform(X)
        assert list(frame.columns) == list(names)


def test_onnx_engine_computes_the_same_layers():
    pytest.importorskip("onnxruntime")
    X = make_images(4)
    backbone = counting_backbone()
    params = dict(layers=(1, -1), pooling="avgmax", cache=None)
    torch_features = featurizer(backbone, **params).fit_transform(X)
    onnx_features = featurizer(backbone, engine="onnxruntime", **params).fit_transform(X)
    np.testing.assert_allclose(onnx_features, torch_features, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_default_backbone_last_stage_average_is_its_own_pooling(photos):
    """EfficientNet-Lite pools by averaging: layers=-1 with "avg" is the default features."""
    default = PretrainedFeaturizer(progress=False, cache=None)
    own = default.fit_transform(photos)
    deep = default.set_params(layers=("block5", -1), pooling="avg").fit_transform(photos)
    assert deep.shape == (len(photos), 192 + 1280)
    np.testing.assert_allclose(deep[:, 192:], own, rtol=1e-4, atol=1e-5)
