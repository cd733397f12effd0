"""engine="onnxruntime": the same features as torch, exported once, kept only when ours."""

import hashlib
import sys

import numpy as np
import pytest
import torch

from sktransfer import PretrainedFeaturizer
from sktransfer._engines import onnx as onnx_module
from sktransfer._engines.onnx import model_path
from sktransfer._store import cache_info, clear_cache, resolve_store
from sktransfer._store.disk import CacheWarning

from .conftest import TINY_PREPROCESSING, make_tiny_backbone

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def tiny(engine, cache=None, **params):
    return PretrainedFeaturizer(
        make_tiny_backbone(),
        preprocessing=TINY_PREPROCESSING,
        engine=engine,
        device="cpu",
        cache=cache,
        progress=False,
        **params,
    )


@pytest.fixture
def exports(monkeypatch):
    """Count exports; each test starts with no model in this process."""
    monkeypatch.setattr(onnx_module, "_sessions", type(onnx_module._sessions)())
    calls = []
    real = onnx_module.export_onnx

    def counting(*args):
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(onnx_module, "export_onnx", counting)
    return calls


class TestSameFunction:
    def test_features_equal_torch_to_float_rounding(self, small_images, exports):
        expected = tiny("torch").fit_transform(small_images)
        # A batch size that leaves a short last batch: the batch axis is dynamic.
        features = tiny("onnxruntime", batch_size=5).fit_transform(small_images)
        assert features.dtype == np.float32 and features.shape == expected.shape
        np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
        assert cosine(features, expected).min() >= 0.9999

    def test_the_cache_is_shared_with_the_torch_engine(self, small_images, exports):
        clear_cache("memory")
        computed = tiny("torch", cache="memory").fit_transform(small_images)
        reused = tiny("onnxruntime", cache="memory").fit_transform(small_images)
        np.testing.assert_array_equal(reused, computed)
        assert exports == []  # every row came from the cache: nothing to run
        clear_cache("memory")

    def test_bad_samples_are_named_as_with_torch(self, small_images, tmp_path, exports):
        missing = str(tmp_path / "missing.png")
        featurizer = tiny("onnxruntime", on_error="nan").fit([missing])
        with pytest.warns(UserWarning, match="missing.png"):
            assert np.isnan(featurizer.transform([missing])).all()


class TestExportOnce:
    def test_once_per_process(self, small_images, exports):
        tiny("onnxruntime").fit_transform(small_images[:4])
        tiny("onnxruntime").fit_transform(small_images[4:8])
        assert len(exports) == 1

    def test_kept_in_the_cache_directory_for_later_processes(self, small_images, tmp_path, exports):
        first = tiny("onnxruntime", cache=tmp_path).fit(small_images)
        expected = first.transform(small_images[:6])
        (key,) = exports
        assert model_path(tmp_path, key).is_file()
        # A later process: nothing in memory, the model comes from the directory.
        onnx_module._sessions.clear()
        features = tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[6:])
        assert len(exports) == 1
        np.testing.assert_allclose(
            features, tiny("torch").fit_transform(small_images[6:]), rtol=1e-4, atol=1e-5
        )
        assert np.isfinite(expected).all()

    def test_clearing_the_cache_deletes_its_models(self, small_images, tmp_path, exports):
        tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[:2])
        (key,) = exports
        clear_cache(tmp_path)
        assert not model_path(tmp_path, key).exists()
        assert cache_info(tmp_path).entries == 0
        onnx_module._sessions.clear()  # a later process exports again, and still computes
        features = tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[:2])
        assert len(exports) == 2 and model_path(tmp_path, key).is_file()
        np.testing.assert_allclose(
            features, tiny("torch").fit_transform(small_images[:2]), rtol=1e-4, atol=1e-5
        )

    @pytest.mark.parametrize("content", [b"not a model", "another key"])
    def test_a_file_that_is_not_ours_is_replaced(self, small_images, tmp_path, exports, content):
        tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[:2])
        (key,) = exports
        path = model_path(tmp_path, key)
        if isinstance(content, str):
            # A valid model, but of another function (what a stale or planted file is).
            content = onnx_module.export_onnx(make_tiny_backbone(seed=1), 32, content)
        path.write_bytes(content)
        onnx_module._sessions.clear()
        with pytest.warns(CacheWarning, match="sha256 differs"):
            features = tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[2:4])
        np.testing.assert_allclose(
            features, tiny("torch").fit_transform(small_images[2:4]), rtol=1e-4, atol=1e-5
        )
        recorded = resolve_store(tmp_path).model_digest(key)
        assert hashlib.sha256(path.read_bytes()).digest() == recorded

    def test_a_planted_model_that_keeps_the_key_is_not_used(self, small_images, tmp_path, exports):
        tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[:2])
        (key,) = exports
        # Another network's model, the same shape, relabelled with the key: a planted file.
        other = tiny("onnxruntime", cache=tmp_path / "other").set_params(
            backbone=make_tiny_backbone(seed=1)
        )
        other.fit_transform(small_images[:2])
        proto = onnx.load(model_path(tmp_path / "other", exports[1]))
        onnx.helper.set_model_props(proto, {"sktransfer_key": key})
        planted = proto.SerializeToString()
        model_path(tmp_path, key).write_bytes(planted)
        onnx_module._sessions.clear()
        with pytest.warns(CacheWarning, match="not the one this cache recorded"):
            features = tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[2:4])
        expected = tiny("torch").fit_transform(small_images[2:4])
        np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
        assert model_path(tmp_path, key).read_bytes() != planted

    def test_a_model_without_a_recorded_digest_is_exported_again(
        self, small_images, tmp_path, exports
    ):
        """A cache written before digests were recorded, or a model copied in from elsewhere."""
        tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[:2])
        resolve_store(tmp_path).clear()  # forgets the digest, keeps the file
        onnx_module._sessions.clear()
        tiny("onnxruntime", cache=tmp_path).fit_transform(small_images[:2])
        assert len(exports) == 2


class Branching(torch.nn.Module):
    """Doubles its features for a bright batch: a branch on the input's values."""

    def __init__(self):
        super().__init__()
        self.body = make_tiny_backbone()

    def forward(self, x):
        features = self.body(x).mean((2, 3))
        if x.mean() > 0:
            return 2 * features
        return features


class ShapeBranching(Branching):
    """Pools large inputs first: a branch on the input's shape, fixed by the input size."""

    def forward(self, x):
        if x.shape[-1] > 24:
            x = torch.nn.functional.avg_pool2d(x, 2)
        return self.body(x).mean((2, 3))


class TestFaithfulExport:
    def onnx_featurizer(self, module, cache=None):
        return PretrainedFeaturizer(
            module,
            preprocessing=TINY_PREPROCESSING,
            engine="onnxruntime",
            device="cpu",
            cache=cache,
            batch_size=3,
            progress=False,
        )

    def test_a_branch_on_the_input_is_refused_not_frozen(self, tmp_path, exports):
        rng = np.random.default_rng(0)
        dark = rng.integers(0, 40, (3, 40, 40, 3), dtype=np.uint8)
        images = np.concatenate([dark, 255 - dark])
        featurizer = self.onnx_featurizer(Branching(), cache=tmp_path).fit(images)
        with pytest.raises(RuntimeError, match="cannot be exported faithfully.*engine='torch'"):
            featurizer.transform(images)
        assert cache_info(tmp_path).entries == 0  # nothing stored under the key engines share
        features = featurizer.set_params(engine="torch").transform(images)
        body = self.onnx_featurizer(featurizer.backbone.body).set_params(engine="torch")
        expected = body.fit_transform(images)
        # Each batch took its own branch; one frozen branch is wrong for half the images.
        np.testing.assert_allclose(features, np.concatenate([expected[:3], 2 * expected[3:]]))

    def test_a_branch_on_the_input_size_is_exported(self, small_images, exports):
        module = ShapeBranching()
        features = self.onnx_featurizer(module).fit_transform(small_images)
        expected = (
            self.onnx_featurizer(module).set_params(engine="torch").fit_transform(small_images)
        )
        np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


class TestClearErrors:
    def test_without_onnxruntime_the_error_names_the_extra(self, small_images, monkeypatch):
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
        with pytest.raises(ImportError, match=r"sktransfer\[onnx\]"):
            tiny("onnxruntime").fit(small_images)

    def test_reduced_precision_needs_the_torch_engine(self, small_images):
        with pytest.raises(ValueError, match='precision="bf16" needs engine="torch"'):
            tiny("onnxruntime", precision="bf16").fit(small_images)

    def test_unknown_engine_is_named(self, small_images):
        with pytest.raises(ValueError, match="engine"):
            tiny("tensorflow").fit(small_images)


@pytest.mark.slow
def test_default_backbone_on_real_photos(photos):
    """The real default network, exported, computes the torch engine's features."""
    torch_features = PretrainedFeaturizer(cache=None, progress=False).fit_transform(photos)
    onnx_features = PretrainedFeaturizer(
        engine="onnxruntime", cache=None, progress=False
    ).fit_transform(photos)
    assert cosine(onnx_features, torch_features).min() >= 0.9999
    # Different photos stay different: the comparison is not between constant vectors.
    assert cosine(onnx_features[:1], onnx_features[1:2])[0] < 0.95
    assert torch.allclose(
        torch.from_numpy(onnx_features), torch.from_numpy(torch_features), atol=1e-3
    )


def test_a_method_exports_too(small_images, exports):
    """What the fine-tuner needs: its frozen prefix is a method, its output a feature map."""
    from sktransfer._engines.onnx import onnx_engine
    from sktransfer._engines.torch import run_batches
    from sktransfer._input.images import ImageCollection

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = make_tiny_backbone()

        def frozen_prefix(self, x):
            return self.stages[:2](x)

    network = Network().eval()
    engine = onnx_engine("prefix", lambda: network.frozen_prefix, 32, torch.device("cpu"))
    images = ImageCollection(small_images)

    def outputs(model):
        batches = run_batches(model, images, transform=TINY_PREPROCESSING, batch_size=5)
        return np.concatenate([rows for _, rows, _ in batches])

    expected = outputs(network.frozen_prefix)
    assert expected.ndim == 4 and len(expected) == len(small_images)
    np.testing.assert_allclose(outputs(engine), expected, rtol=1e-4, atol=1e-5)
    # Exporting leaves every module's mode as it was (the exporter toggles them).
    network.train()
    network.stages[0].eval()
    modes = [module.training for module in network.modules()]
    onnx_module.export_onnx(network.frozen_prefix, 32, "again")
    assert [module.training for module in network.modules()] == modes


@pytest.mark.parametrize("freeze", ["backbone", 1])
def test_fine_tuner_frozen_pass_runs_on_onnxruntime(small_images, exports, freeze):
    """Same fit and predictions as the torch engine: the frozen stages are one function."""
    from sktransfer import FineTuneClassifier

    y = np.array(["a", "b", "c"] * 4)

    def fit(engine):
        clf = FineTuneClassifier(
            make_tiny_backbone(),
            preprocessing=TINY_PREPROCESSING,
            freeze=freeze,
            engine=engine,
            max_epochs=2,
            batch_size=4,
            cache=None,
            random_state=0,
            progress=False,
        )
        return clf.fit(small_images, y)

    torch_clf, onnx_clf = fit("torch"), fit("onnxruntime")
    assert len(exports) == 1  # prediction reuses the export of fit
    np.testing.assert_allclose(
        onnx_clf.predict_proba(small_images), torch_clf.predict_proba(small_images), atol=1e-4
    )
    assert len(exports) == 1
    # Training amplifies float rounding a little; the weights end up all but equal.
    for name, value in torch_clf.module_.state_dict().items():
        torch.testing.assert_close(onnx_clf.module_.state_dict()[name], value, atol=1e-3, rtol=0)


def test_fine_tuner_reduced_precision_needs_the_torch_engine(small_images):
    from sktransfer import FineTuneClassifier

    clf = FineTuneClassifier(
        make_tiny_backbone(),
        preprocessing=TINY_PREPROCESSING,
        engine="onnxruntime",
        precision="bf16",
        max_epochs=1,
        progress=False,
    )
    with pytest.raises(ValueError, match='precision="bf16" needs engine="torch"'):
        clf.fit(small_images, np.array(["a", "b"] * 6))
