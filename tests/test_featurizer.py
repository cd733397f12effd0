"""PretrainedFeaturizer: real features, the scikit-learn contract, bad input."""

import pickle

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sktransfer import InvalidImageError, PretrainedFeaturizer
from sktransfer.datasets import load_textures

from .conftest import TINY_PREPROCESSING, make_tiny_backbone


def tiny_featurizer(**params):
    params = {"cache": None, **params}
    return PretrainedFeaturizer(
        make_tiny_backbone(), preprocessing=TINY_PREPROCESSING, progress=False, **params
    )


@pytest.fixture(scope="module")
def default_featurizer():
    # No cache, so that every transform below really runs the network.
    return PretrainedFeaturizer(progress=False, cache=None)


class TestRealFeatures:
    """The default backbone on real photos."""

    @pytest.fixture(scope="class")
    @staticmethod
    def features(default_featurizer, photos):
        return default_featurizer.fit_transform(photos)

    def test_shape_dtype_and_values(self, features, photos):
        assert features.shape == (len(photos), 1280) and features.dtype == np.float32
        assert np.isfinite(features).all() and features.std() > 0.1

    def test_paths_pil_and_arrays_agree(self, default_featurizer, features, photo_paths, photos):
        from_paths = default_featurizer.transform(photo_paths)
        from_pil = default_featurizer.transform([Image.open(p) for p in photo_paths])
        np.testing.assert_allclose(from_paths, features, atol=1e-5)
        np.testing.assert_allclose(from_pil, features, atol=1e-5)

    def test_row_order_follows_input_and_is_deterministic(
        self, default_featurizer, features, photos
    ):
        order = [3, 1, 0, 2]
        reordered = default_featurizer.transform([photos[i] for i in order])
        np.testing.assert_allclose(reordered, features[order], atol=1e-5)
        np.testing.assert_array_equal(default_featurizer.transform(photos), features)

    def test_jpeg_files_give_close_features(self, default_featurizer, features, photos, tmp_path):
        paths = []
        for i, photo in enumerate(photos):
            paths.append(tmp_path / f"{i}.jpg")
            Image.fromarray(photo).save(paths[-1], quality=95)
        jpeg = default_featurizer.transform(paths)
        similarity = (
            (jpeg * features).sum(1)
            / np.linalg.norm(jpeg, axis=1)
            / np.linalg.norm(features, axis=1)
        )
        assert similarity.min() > 0.97

    def test_grid_search_beats_chance_and_raw_pixels(self):
        X, y = load_textures(patch_size=128)  # 48 patches, 3 classes
        cv = StratifiedKFold(3, shuffle=True, random_state=0)
        pipe = make_pipeline(
            PretrainedFeaturizer(progress=False), LogisticRegression(max_iter=1000)
        )
        search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=cv).fit(X, y)
        raw = make_pipeline(
            FunctionTransformer(lambda a: a.reshape(len(a), -1) / 255.0),
            StandardScaler(),
            LogisticRegression(max_iter=1000),
        )
        raw_score = cross_val_score(raw, X, y, cv=cv).mean()
        assert search.best_score_ > 0.9
        assert search.best_score_ > raw_score + 0.15
        assert set(search.predict(X[:6])) <= set(y)


class TestSklearnContract:
    def test_get_set_params_and_clone(self):
        featurizer = tiny_featurizer(batch_size=4)
        assert featurizer.get_params()["batch_size"] == 4
        featurizer.set_params(batch_size=2, precision="bf16")
        copy = clone(featurizer)
        assert copy.batch_size == 2 and copy.precision == "bf16"
        assert not hasattr(copy, "spec_")

    def test_pickle_is_small_and_round_trips(self, small_images):
        featurizer = PretrainedFeaturizer(progress=False, cache=None).fit(small_images)
        blob = pickle.dumps(featurizer)
        assert len(blob) < 4096  # no weights inside: the backbone is rebuilt where it runs
        restored = pickle.loads(blob)
        np.testing.assert_array_equal(
            restored.transform(small_images[:2]), featurizer.transform(small_images[:2])
        )

    def test_batch_size_and_workers_do_not_change_features(self, small_images):
        reference = tiny_featurizer(batch_size=12).fit_transform(small_images)
        for params in ({"batch_size": 1}, {"batch_size": 5, "num_workers": 1}):
            np.testing.assert_allclose(
                tiny_featurizer(**params).fit_transform(small_images), reference, atol=1e-6
            )

    def test_feature_names_and_pandas_output(self, small_images):
        pd = pytest.importorskip("pandas")
        featurizer = tiny_featurizer().set_output(transform="pandas")
        frame = featurizer.fit_transform(pd.Series(list(small_images[:3]), index=[10, 11, 12]))
        assert list(frame.columns) == [f"pretrainedfeaturizer{i}" for i in range(8)]
        assert list(frame.index) == [10, 11, 12]

    def test_unfitted_featurizer_refuses_valid_images(self, small_images):
        # Our own form of check_estimators_unfitted and check_transformers_unfitted,
        # which feed 2-D tabular X: any featurizer refuses that, fitted or not.
        from sklearn.exceptions import NotFittedError

        featurizer = tiny_featurizer()
        for method in (featurizer.transform, lambda X: featurizer.get_feature_names_out()):
            with pytest.raises(NotFittedError):
                method(small_images)
        assert not hasattr(featurizer, "n_features_out_")

    def test_fit_sets_the_output_width_that_transform_and_names_follow(self, small_images):
        # Our form of check_n_features_in_after_fitting: images have no n_features_in_,
        # so the contract is on the output. Any image size fits any fitted featurizer.
        featurizer = tiny_featurizer().fit(small_images[:2])
        assert featurizer.n_features_out_ == 8
        names = featurizer.get_feature_names_out()
        assert list(names) == [f"pretrainedfeaturizer{i}" for i in range(8)]
        other_size = np.zeros((3, 17, 90, 3), np.uint8)
        assert featurizer.transform(other_size).shape == (3, len(names))
        assert not hasattr(featurizer, "n_features_in_")

    def test_invalid_parameters_are_named(self, small_images):
        with pytest.raises(ValueError, match="batch_size"):
            tiny_featurizer(batch_size=0).fit(small_images)
        with pytest.raises(ValueError, match="precision"):
            tiny_featurizer(precision="fp8").fit(small_images)


class TestBadInput:
    def test_all_bad_samples_are_reported_at_once(self, tmp_path, small_images):
        good = tmp_path / "good.png"
        Image.fromarray(small_images[0]).save(good)
        (tmp_path / "empty.jpg").write_bytes(b"")
        X = [str(good), str(tmp_path / "missing.jpg"), str(good), str(tmp_path / "empty.jpg")]
        featurizer = tiny_featurizer().fit(X)
        with pytest.raises(InvalidImageError) as info:
            featurizer.transform(X)
        assert [(f.index, f.path) for f in info.value.failures] == [
            (1, str(tmp_path / "missing.jpg")),
            (3, str(tmp_path / "empty.jpg")),
        ]
        assert "2 bad image sample(s)" in str(info.value)

    def test_on_error_nan_keeps_the_good_rows(self, small_images):
        X = [small_images[0], np.full((8, 8, 3), np.nan), small_images[1]]
        featurizer = tiny_featurizer(on_error="nan").fit(X)
        with pytest.warns(UserWarning, match="1 of 3 samples"):
            features = featurizer.transform(X)
        assert np.isnan(features[1]).all() and np.isfinite(features[[0, 2]]).all()
        np.testing.assert_allclose(
            features[[0, 2]], featurizer.transform(small_images[:2]), atol=1e-6
        )


# parametrize_with_checks skips estimators without the two_d_array input tag as a
# whole, so the data-free API checks are listed here; those that feed 2-D tabular
# data are expected to fail with the exception they raise, each with its reason.
# check_estimators_unfitted and check_n_features_in_after_fitting return without
# checking anything for image input, and check_transformers_unfitted passes on the
# 2-D X's shape error alone: our own tests above assert their contracts.
_NEEDS_TABULAR_X = "feeds a 2-D tabular X, which is not a collection of images"
API_CHECKS = {
    "check_estimator_cloneable": None,
    "check_estimator_tags_renamed": None,
    "check_valid_tag_types": None,
    "check_estimator_repr": None,
    "check_no_attributes_set_in_init": None,
    "check_parameters_default_constructible": None,
    "check_get_params_invariance": None,
    "check_set_params": None,
    "check_do_not_raise_errors_in_init_or_set_params": None,
    "check_param_validation": None,
    "check_mixin_order": None,
    "check_get_feature_names_out_error": None,
    "check_fit_score_takes_y": (ValueError, _NEEDS_TABULAR_X),
    "check_estimators_overwrite_params": (ValueError, _NEEDS_TABULAR_X),
    "check_dont_overwrite_parameters": (ValueError, _NEEDS_TABULAR_X),
    "check_estimators_fit_returns_self": (ValueError, _NEEDS_TABULAR_X),
    "check_readonly_memmap_input": (ValueError, _NEEDS_TABULAR_X),
    "check_estimators_pickle": (ValueError, _NEEDS_TABULAR_X + " (pickling is tested above)"),
    "check_transformer_general": (ValueError, _NEEDS_TABULAR_X),
    # It reports the ValueError that negative tabular X meets as an AssertionError.
    "check_positive_only_tag_during_fit": (AssertionError, _NEEDS_TABULAR_X),
}


@pytest.mark.parametrize(
    "check_name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(raises=failure[0], reason=failure[1], strict=True),
        )
        if failure
        else name
        for name, failure in API_CHECKS.items()
    ],
)
def test_sklearn_api_checks(check_name):
    import sklearn.utils.estimator_checks as checks

    getattr(checks, check_name)("PretrainedFeaturizer", tiny_featurizer())
