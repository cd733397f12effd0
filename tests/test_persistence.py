"""Saving and loading fitted estimators: joblib files, another process, a GPU's file, versions.

The estimators use timm's ``test_resnet`` (470,000 parameters, random weights
from a seed, or a weights file) on 32 px images, so a pickle's size tells
whether the network's weights are inside it.
"""

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from skorch.exceptions import DeviceWarning

from sktransfer import (
    FineTuneClassifier,
    FineTuneRegressor,
    Preprocessing,
    PretrainedFeaturizer,
    _versions,
    load_backbone,
)

from ._helpers import run_python

SMALL = Preprocessing(input_size=32, resize_size=36)
TINY_TIMM = "test_resnet"
COMMON = dict(preprocessing=SMALL, random_state=0, progress=False, cache=None)


@pytest.fixture(scope="module")
def data():
    """Noisy 40x40 photos-to-be whose dominant channel is the label, and a number each."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (18, 40, 40, 3), dtype=np.uint8)
    labels = np.array(["red", "green", "blue"] * 6)
    for index, label in enumerate(labels):
        images[index, ..., ["red", "green", "blue"].index(label)] += 120
    return images, labels, images.mean(axis=(1, 2, 3))


def make_pipe(**weights):
    featurizer = PretrainedFeaturizer(TINY_TIMM, **{"weights": None, **weights}, **COMMON)
    return make_pipeline(featurizer, LogisticRegression(max_iter=1000))


def make_classifier(**params):
    return FineTuneClassifier(TINY_TIMM, weights=None, max_epochs=2, **COMMON, **params)


def make_regressor():
    return FineTuneRegressor(TINY_TIMM, weights=None, max_epochs=2, **COMMON)


def fitted(kind, data):
    images, labels, numbers = data
    if kind == "pipeline":
        return make_pipe().fit(images, labels)
    if kind == "classifier":
        return make_classifier().fit(images, labels)
    return make_regressor().fit(images, numbers)


def predictions(estimator, images):
    if hasattr(estimator, "predict_proba"):
        return estimator.predict_proba(images)
    return estimator.predict(images)


def parameter_bytes(module):
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


KINDS = ["pipeline", "classifier", "regressor"]


class TestJoblibFiles:
    @pytest.mark.parametrize("kind", KINDS)
    def test_reloads_with_identical_predictions_and_no_warning(self, kind, data, tmp_path):
        estimator = fitted(kind, data)
        joblib.dump(estimator, tmp_path / "model.joblib")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # same versions: nothing to warn about
            loaded = joblib.load(tmp_path / "model.joblib")
        np.testing.assert_array_equal(predictions(loaded, data[0]), predictions(estimator, data[0]))

    def test_a_featurizer_holds_no_weights(self, data, tmp_path):
        pipe = fitted("pipeline", data)
        joblib.dump(pipe[0], tmp_path / "featurizer.joblib")
        network = load_backbone(pipe[0].spec_)
        # Under 4 KB against the 1.5 MB of the network it computes with.
        assert parameter_bytes(network) > 1_400_000
        assert (tmp_path / "featurizer.joblib").stat().st_size < 4096

    @pytest.mark.parametrize("kind", ["classifier", "regressor"])
    def test_a_fine_tuner_holds_its_network(self, kind, data, tmp_path):
        estimator = fitted(kind, data)
        joblib.dump(estimator, tmp_path / "model.joblib")
        size = (tmp_path / "model.joblib").stat().st_size
        weights = parameter_bytes(estimator.module_)
        # The weights, the optimizer's state for the new head, and a little bookkeeping.
        assert weights < size < weights + 200_000


LOAD_ELSEWHERE = """
import sys, joblib, numpy as np
folder = sys.argv[1]
images = np.load(folder + "/images.npy")
pipe = joblib.load(folder + "/pipe.joblib")
clf = joblib.load(folder + "/clf.joblib")
np.save(folder + "/pipe_proba.npy", pipe.predict_proba(images))
np.save(folder + "/clf_proba.npy", clf.predict_proba(images))
"""

CHANGED_WEIGHTS = """
import sys, joblib, numpy as np
from sktransfer import WeightsIntegrityError
folder = sys.argv[1]
try:
    joblib.load(folder + "/pipe.joblib").predict(np.load(folder + "/images.npy"))
except WeightsIntegrityError as error:
    print(type(error).__name__, error)
"""


@pytest.mark.slow
class TestLoadedInAnotherProcess:
    """Where the featurizer's backbone is built again from its spec, as on another machine."""

    def test_predicts_the_same_and_refuses_changed_weights(self, data, tmp_path):
        import timm

        torch.manual_seed(0)
        weights = tmp_path / "test_resnet.pth"
        torch.save(timm.create_model(TINY_TIMM).state_dict(), weights)
        images, labels, _ = data
        pipe = make_pipe(weights=str(weights)).fit(images, labels)
        clf = make_classifier().fit(images, labels)
        np.save(tmp_path / "images.npy", images)
        joblib.dump(pipe, tmp_path / "pipe.joblib")
        joblib.dump(clf, tmp_path / "clf.joblib")

        run_python(LOAD_ELSEWHERE, tmp_path)
        for name, estimator in (("pipe", pipe), ("clf", clf)):
            elsewhere = np.load(tmp_path / f"{name}_proba.npy")
            np.testing.assert_array_equal(elsewhere, estimator.predict_proba(images))

        # Other weights under the same file name: an error there, never other features.
        torch.manual_seed(1)
        torch.save(timm.create_model(TINY_TIMM).state_dict(), weights)
        result = run_python(CHANGED_WEIGHTS, tmp_path)
        assert result.stdout.startswith("WeightsIntegrityError")
        assert "test_resnet.pth" in result.stdout


# Re-saves CPU-fitted fine-tuners as a CUDA machine writes them: torch.save tags every
# tensor's storage with its device ("cuda:0" there), and skorch pickles the network, the
# optimizer and the criterion with torch.save. register_package is torch's public hook for
# device tags; it is used only in this throwaway process.
AS_SAVED_ON_A_GPU = """
import sys, joblib, torch
folder = sys.argv[1]
torch.serialization.register_package(
    -1, lambda storage: "cuda:0" if storage.device.type == "cpu" else None, lambda s, loc: None
)
torch.save(torch.ones(3), folder + "/probe.pt")
for device in ("cuda", "auto"):
    clf = joblib.load(folder + "/clf.joblib")
    clf.device = device
    clf.module_.precision = torch.bfloat16  # precision="auto" on a recent GPU
    joblib.dump(clf, folder + f"/gpu-{device}.joblib")
"""


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """A fine-tuner fitted here, and its files as a GPU machine would have written them."""
    folder = tmp_path_factory.mktemp("gpu")
    clf = make_classifier(device="cpu").fit(*data[:2])
    joblib.dump(clf, folder / "clf.joblib")
    run_python(AS_SAVED_ON_A_GPU, folder)
    return folder, clf


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
class TestFittedOnAGpu:
    def test_the_file_holds_cuda_tensors(self, saved):
        folder, _ = saved
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(folder / "probe.pt")

    def test_device_cuda_loads_on_the_cpu_with_a_warning(self, saved, data):
        folder, clf = saved
        with pytest.warns(DeviceWarning):
            loaded = joblib.load(folder / "gpu-cuda.joblib")
        assert str(loaded.device) == "cpu"
        assert {p.device.type for p in loaded.module_.parameters()} == {"cpu"}
        np.testing.assert_array_equal(loaded.predict_proba(data[0]), clf.predict_proba(data[0]))

    def test_device_auto_loads_on_the_cpu_silently(self, saved, data):
        folder, clf = saved
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = joblib.load(folder / "gpu-auto.joblib")
        assert loaded.get_params()["device"] == "auto"
        assert {p.device.type for p in loaded.module_.parameters()} == {"cpu"}
        # precision="auto" is fp32 on a CPU, whatever it was where the model was fitted.
        np.testing.assert_array_equal(loaded.predict_proba(data[0]), clf.predict_proba(data[0]))


@pytest.fixture(scope="module", params=KINDS)
def estimator(request, data):
    return fitted(request.param, data)


class TestLibraryVersions:
    def saved_with(self, estimator, monkeypatch, **versions):
        """A pickle of ``estimator`` as made where ``versions`` were installed."""
        installed = _versions.installed_versions()
        with monkeypatch.context() as patch:
            patch.setattr(_versions, "installed_versions", lambda: {**installed, **versions})
            return pickle.dumps(estimator)

    def test_other_versions_warn_naming_each_change(self, estimator, data, monkeypatch):
        installed = _versions.installed_versions()
        blob = self.saved_with(estimator, monkeypatch, timm="0.9.2", torch="2.0.0")
        with pytest.warns(_versions.LibraryVersionWarning) as record:
            loaded = pickle.loads(blob)
        message = str(record[0].message)
        assert f"timm 0.9.2 -> {installed['timm']}" in message
        assert f"torch 2.0.0 -> {installed['torch']}" in message
        assert "skorch" not in message
        # A warning, not a failure: the model still works.
        np.testing.assert_array_equal(predictions(loaded, data[0]), predictions(estimator, data[0]))

    def test_scikit_learns_filter_makes_it_an_error(self, estimator, monkeypatch):
        blob = self.saved_with(estimator, monkeypatch, sktransfer="0.0.1")
        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            with pytest.raises(InconsistentVersionWarning, match="sktransfer 0.0.1 ->"):
                pickle.loads(blob)

    def test_a_pickle_without_versions_warns(self, estimator):
        step = estimator[0] if hasattr(estimator, "steps") else estimator
        state = step.__getstate__()
        del state[_versions.STATE_KEY]
        copy = object.__new__(type(step))
        with pytest.warns(_versions.LibraryVersionWarning, match="without a record"):
            copy.__setstate__(state)

    def test_same_versions_are_silent(self, estimator):
        blob = pickle.dumps(estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pickle.loads(blob)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_a_pickle_from_before_mixed_precision_training_predicts_the_same(kind, data):
    # Such a pickle had no version record, no loss scale and no fp32_head on its network.
    estimator = fitted(kind, data)
    old = copy.deepcopy(estimator)
    del old.module_.fp32_head, old.grad_scaler_
    state = old.__getstate__()
    del state[_versions.STATE_KEY]
    loaded = object.__new__(type(estimator))
    with pytest.warns(_versions.LibraryVersionWarning, match="without a record"):
        loaded.__setstate__(state)
    assert loaded.grad_scaler_ is None
    assert loaded.module_.fp32_head is (kind == "regressor")
    np.testing.assert_array_equal(predictions(loaded, data[0]), predictions(estimator, data[0]))
