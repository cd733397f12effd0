"""The fine-tuners' parameters: checked at every fit, precision in use, learning rates.

Tiny three-stage conv nets on 32 px images, as in test_finetune.py. The
machinery is FineTuneBase's: the classifier runs every case, the regressor
the main ones.
"""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from sktransfer import FineTuneRegressor, PretrainedFeaturizer

from .test_finetune import COLOURS, TINY, colour_images, make_backbone, make_clf


@pytest.fixture(scope="module")
def data():
    return colour_images(4, seed=0)


def make_reg(backbone=None, **params):
    defaults = dict(preprocessing=TINY, max_epochs=3, lr=0.02, batch_size=8, cache=None)
    backbone = make_backbone() if backbone is None else backbone
    return FineTuneRegressor(backbone, progress=False, **{**defaults, **params})


@pytest.fixture(params=["classifier", "regressor"])
def task(request, data):
    """A factory of tiny fine-tuners of each kind, and targets for ``data``'s images."""
    X, y = data
    if request.param == "classifier":
        return make_clf, y
    return make_reg, np.linspace(0.0, 1.0, len(X))


class TestValidation:
    @pytest.mark.parametrize(
        ("param", "value"),
        [
            ("lr", -0.1),
            ("max_epochs", -1),
            ("batch_size", 0),
            ("train_split", 5),
            ("callbacks", "none"),
            ("callbacks", [print]),
            ("device", 3),
            ("backbone_lr_scale", -1.0),
            ("warmup_epochs", 1.5),
            ("dropout", 1.0),
            ("tta", "flips"),
        ],
    )
    def test_every_fit_and_partial_fit_checks_every_parameter(self, data, task, param, value):
        # A warm_start fit that keeps the network, and partial_fit, used to check nothing.
        (X, _), (make, y) = data, task
        clf = make(warm_start=True, max_epochs=1)
        clf.fit(X, y)
        weights = [p.detach().clone() for p in clf.module_.parameters()]
        clf.set_params(**{param: value})
        match = rf"The '{param}' parameter of {type(clf).__name__} must be"
        for method in (clf.fit, clf.partial_fit, make(**{param: value}).fit):
            with pytest.raises(InvalidParameterError, match=match):
                method(X, y)
        assert len(clf.history) == 1
        assert all(torch.equal(a, b) for a, b in zip(weights, clf.module_.parameters()))

    @pytest.mark.parametrize(
        ("param", "value", "match"),
        [("device", "gpu0", "a torch device name .* 'gpu0'"), ("optimizer", "adam", "callable")],
    )
    def test_skorch_parameters_are_checked_before_anything_is_built(
        self, data, param, value, match
    ):
        # skorch's set_params cannot replace the optimizer of a built net, so not above.
        with pytest.raises(InvalidParameterError, match=f"'{param}' parameter .*{match}"):
            make_clf(**{param: value}).fit(*data)

    def test_private_attributes_are_not_parameters(self, data):
        # skorch's bookkeeping set leaked into get_params, so clone passed it to __init__.
        clf = make_clf(optimizer=torch.optim.SGD, optimizer__momentum=0.9, max_epochs=1)
        assert not [name for name in clf.get_params() if name.startswith("_")]
        clf.fit(*data)
        assert not [name for name in clf.get_params() if name.startswith("_")]
        assert clone(clf).get_params()["optimizer__momentum"] == 0.9


def _featurizer(backbone, cache, precision="fp32"):
    return PretrainedFeaturizer(
        backbone, preprocessing=TINY, precision=precision, cache=cache, progress=False
    )


def _fp32_features_are_not_poisoned(backbone, images, cache):
    """The fp32 features read from ``cache`` equal those computed without it."""
    expected = _featurizer(backbone, None).fit(images).transform(images)
    stored = _featurizer(backbone, cache).fit(images).transform(images)
    np.testing.assert_allclose(stored, expected, atol=1e-5)


def _fp32_head_outputs(clf, backbone, images):
    """The head's probabilities on the fp32 features of ``images``."""
    features = _featurizer(backbone, None).fit(images).transform(images)
    logits = clf.module_.eval().head(torch.from_numpy(features))
    return torch.softmax(logits, 1).detach().numpy()


class TestPrecisionInUse:
    """The frozen stages run in the precision their stored outputs are keyed by."""

    def test_precision_set_after_fit_applies_to_predict(self, data, task, tmp_path):
        (X, _), (make, y) = data, task
        X_new = colour_images(2, seed=5)[0]
        backbone = make_backbone()
        estimator = make(backbone, precision="bf16", cache=tmp_path, max_epochs=1).fit(X, y)
        bf16 = estimator.predict(X_new[:3])
        estimator.set_params(precision="fp32").predict(X_new)
        _fp32_features_are_not_poisoned(backbone, X_new, tmp_path)
        if isinstance(estimator, FineTuneRegressor):
            assert not np.allclose(estimator.predict(X_new[:3]), bf16, rtol=0, atol=1e-6)
        else:
            proba = estimator.predict_proba(X_new)
            expected = _fp32_head_outputs(estimator, backbone, X_new)
            np.testing.assert_allclose(proba, expected, atol=1e-5)

    def test_warm_start_refit_continues_in_the_new_precision(self, data, tmp_path):
        X, y = data
        backbone = make_backbone()
        clf = make_clf(backbone, precision="bf16", warm_start=True, cache=tmp_path, max_epochs=1)
        clf.fit(X[::2], y[::2]).set_params(precision="fp32").fit(X, y)
        assert len(clf.history) == 2  # the same network, trained further
        proba = clf.predict_proba(X)
        _fp32_features_are_not_poisoned(backbone, X, tmp_path)
        np.testing.assert_allclose(proba, _fp32_head_outputs(clf, backbone, X), atol=1e-5)

    def test_auto_model_from_a_gpu_predicts_in_fp32_on_a_cpu(self, data, tmp_path):
        # Simulated without a GPU: "auto" is bf16 on CUDA, so a model fitted there holds
        # a network that computed in bf16, under precision="auto".
        X, y = data
        backbone = make_backbone()
        clf = make_clf(backbone, precision="bf16", cache=tmp_path, max_epochs=1).fit(X, y)
        restored = pickle.loads(pickle.dumps(clf.set_params(precision="auto")))
        proba = restored.predict_proba(X)
        _fp32_features_are_not_poisoned(backbone, X, tmp_path)
        np.testing.assert_allclose(proba, _fp32_head_outputs(restored, backbone, X), atol=1e-5)


def _learning_rates(clf):
    """(backbone group's lr, head group's lr)."""
    backbone_group, head_group = clf.optimizer_.param_groups
    return backbone_group["lr"], head_group["lr"]


class TestLearningRate:
    """Every way of setting the learning rate keeps the backbone's scale."""

    @pytest.mark.parametrize("name", ["lr", "optimizer__lr"])
    def test_set_after_fit_then_train_further(self, data, task, name):
        (X, _), (make, y) = data, task
        clf = make(freeze=1, lr=0.1, backbone_lr_scale=0.1, warm_start=True, max_epochs=1)
        clf.fit(X, y).set_params(**{name: 0.3})
        assert _learning_rates(clf) == pytest.approx((0.03, 0.3))
        clf.partial_fit(X, y)
        assert _learning_rates(clf) == pytest.approx((0.03, 0.3))
        clf.fit(X, y)  # warm start: the same optimizer
        assert len(clf.history) == 3
        assert _learning_rates(clf) == pytest.approx((0.03, 0.3))
        assert clf.get_params()[name] == 0.3
        # A new fit, and a clone, build the optimizer from the same rate.
        assert _learning_rates(clone(clf).fit(X, y)) == pytest.approx((0.03, 0.3))
        clf.set_params(warm_start=False).fit(X, y)
        assert _learning_rates(clf) == pytest.approx((0.03, 0.3))

    @pytest.mark.parametrize("name", ["lr", "optimizer__lr"])
    def test_set_before_fit(self, data, name):
        clf = make_clf(freeze=1, lr=0.1, backbone_lr_scale=0.1, max_epochs=1)
        clf.set_params(**{name: 0.3}).fit(*data)
        assert _learning_rates(clf) == pytest.approx((0.03, 0.3))

    def test_lr_after_optimizer_lr_wins(self, data):
        X, y = data
        clf = make_clf(freeze=1, optimizer__lr=0.3, backbone_lr_scale=0.1, max_epochs=1)
        clf.fit(X, y).set_params(lr=0.2)
        assert _learning_rates(clf) == pytest.approx((0.02, 0.2))
        clf.fit(X, y)
        assert _learning_rates(clf) == pytest.approx((0.02, 0.2))

    def test_backbone_lr_scale_set_after_fit(self, data):
        X, y = data
        clf = make_clf(freeze=1, lr=0.1, backbone_lr_scale=0.1, warm_start=True, max_epochs=1)
        clf.fit(X, y).set_params(backbone_lr_scale=0.5)
        assert _learning_rates(clf) == pytest.approx((0.05, 0.1))
        clf.fit(X, y)
        assert len(clf.history) == 2
        assert _learning_rates(clf) == pytest.approx((0.05, 0.1))


class TestPartialFitClasses:
    def test_unknown_label_points_to_classes(self, data):
        X, y = data
        clf = make_clf(max_epochs=1).fit(X, y)
        with pytest.raises(ValueError, match=r"'purple'.*classes="):
            clf.partial_fit(X[:3], np.array(["red", "purple", "red"]))

    def test_first_partial_fit_takes_classes(self, data):
        X, y = data
        clf = make_clf(max_epochs=1)
        clf.partial_fit(X, y, classes=[*COLOURS, "purple"])
        assert list(clf.classes_) == [*COLOURS, "purple"]
        clf.partial_fit(X[:2], np.array(["purple", "red"]))
        assert clf.predict_proba(X[:2]).shape == (2, 4)
        with pytest.raises(ValueError, match="classes"):
            clf.partial_fit(X, y, classes=COLOURS)

    def test_fit_ignores_a_previous_partial_fit_classes(self, data):
        X, y = data
        clf = make_clf(max_epochs=1)
        clf.partial_fit(X, y, classes=[*COLOURS, "purple"]).fit(X, y)
        assert list(clf.classes_) == sorted(COLOURS)
