"""PretrainedFeaturizer with the rest of scikit-learn and pandas.

The running case: product photos plus a price, in one DataFrame. Each
product is a "mug" or a "poster" (what the photo shows) and "cheap" or
"premium" (what the price says), so only a model that reads both columns
can tell the four classes apart.
"""

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.compose import ColumnTransformer, make_column_transformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
    cross_validate,
    learning_curve,
)
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_html_repr

from sktransfer import PretrainedFeaturizer

from .conftest import TINY_PREPROCESSING, make_tiny_backbone
from .test_finetune import make_clf

pd = pytest.importorskip("pandas")
skimage_data = pytest.importorskip("skimage.data")

N_PER_CLASS = 20
CV = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)


def tiny_featurizer(seed=0):
    return PretrainedFeaturizer(
        make_tiny_backbone(seed), preprocessing=TINY_PREPROCESSING, progress=False
    )


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """A DataFrame of 80 products: photo path, price and class, indexed by product id."""
    folder = tmp_path_factory.mktemp("products")
    rng = np.random.default_rng(0)
    sources = {"mug": skimage_data.coffee(), "poster": skimage_data.astronaut()}
    rows = []
    for kind, photo in sources.items():
        for band, (low, high) in {"cheap": (5, 15), "premium": (25, 60)}.items():
            for _ in range(N_PER_CLASS):
                side = int(rng.uniform(0.4, 0.8) * min(photo.shape[:2]))
                top = rng.integers(0, photo.shape[0] - side + 1)
                left = rng.integers(0, photo.shape[1] - side + 1)
                path = folder / f"{len(rows):03d}.jpg"
                crop = photo[top : top + side, left : left + side]
                Image.fromarray(crop).resize((96, 96)).save(path, quality=90)
                rows.append((str(path), rng.uniform(low, high), f"{kind}-{band}"))
    frame = pd.DataFrame(rows, columns=["photo", "price", "label"])
    frame.index = [f"sku{i:03d}" for i in range(len(frame))]
    return frame


def photo_and_price(photo=None):
    """Photo features and the standardised price, side by side.

    A scalar column name hands the photo branch a 1-D Series of paths, as for
    text. By default the 1280 photo features are compressed to 8: next to a
    single price column they would let the head fit the training set from the
    photos alone and ignore the price.
    """
    photo = photo or make_pipeline(PretrainedFeaturizer(progress=False), PCA(n_components=8))
    return ColumnTransformer([("photo", photo, "photo"), ("price", StandardScaler(), ["price"])])


class TestPandasOutput:
    def test_columns_are_named_and_the_index_kept(self, products):
        featurizer = tiny_featurizer().set_output(transform="pandas")
        frame = featurizer.fit_transform(products["photo"])
        assert list(frame.columns) == [f"pretrainedfeaturizer{i}" for i in range(8)]
        assert list(frame.index) == list(products.index)
        assert (frame.dtypes == np.float32).all()
        np.testing.assert_array_equal(
            frame.to_numpy(), tiny_featurizer().fit_transform(list(products["photo"]))
        )

    def test_one_column_dataframe_of_paths_is_accepted(self, products):
        featurizer = tiny_featurizer().fit(products[["photo"]])
        np.testing.assert_array_equal(
            featurizer.transform(products[["photo"]]), featurizer.transform(products["photo"])
        )


class TestColumnTransformer:
    def test_feature_names_mix_photo_and_tabular_columns(self, products):
        columns = photo_and_price(tiny_featurizer()).set_output(transform="pandas")
        frame = columns.fit_transform(products)
        expected = [f"photo__pretrainedfeaturizer{i}" for i in range(8)] + ["price__price"]
        assert list(columns.get_feature_names_out()) == expected
        assert list(frame.columns) == expected
        assert list(frame.index) == list(products.index)
        np.testing.assert_allclose(frame["price__price"].mean(), 0, atol=1e-9)

    @pytest.mark.slow
    def test_a_classifier_reads_both_the_photo_and_the_price(self, products):
        X, y = products[["photo", "price"]], products["label"]
        both = make_pipeline(photo_and_price(), LogisticRegression(max_iter=1000))
        photo_only = make_pipeline(
            make_column_transformer((PretrainedFeaturizer(progress=False), "photo")),
            LogisticRegression(max_iter=1000),
        )
        price_only = make_pipeline(
            make_column_transformer((StandardScaler(), ["price"])), LogisticRegression()
        )
        assert cross_val_score(both, X, y, cv=CV).mean() >= 0.9
        # Each column alone tells only one half of the label: two classes of four.
        assert cross_val_score(photo_only, X, y, cv=CV).mean() <= 0.65
        assert cross_val_score(price_only, X, y, cv=CV).mean() <= 0.65

        both.fit(X, y)
        new = pd.DataFrame({"photo": [products["photo"].iloc[0]], "price": [45.0]})
        assert both.predict(new).tolist() == ["mug-premium"]


class TestModelSelection:
    @pytest.fixture(scope="class")
    @staticmethod
    def pipe():
        return make_pipeline(photo_and_price(), LogisticRegression(max_iter=1000))

    @pytest.mark.slow
    def test_cross_validate_with_several_metrics(self, pipe, products):
        result = cross_validate(
            pipe,
            products,
            products["label"],
            cv=CV,
            scoring=["accuracy", "neg_log_loss"],
            return_estimator=True,
        )
        assert result["test_accuracy"].mean() >= 0.9
        assert np.all(np.isfinite(result["test_neg_log_loss"]))
        photo = result["estimator"][0].named_steps["columntransformer"].named_transformers_["photo"]
        assert photo.named_steps["pretrainedfeaturizer"].n_features_out_ == 1280

    @pytest.mark.slow
    def test_cross_val_predict_probabilities(self, pipe, products):
        proba = cross_val_predict(pipe, products, products["label"], cv=CV, method="predict_proba")
        assert proba.shape == (len(products), 4)
        np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)
        classes = np.unique(products["label"])
        assert np.mean(classes[proba.argmax(axis=1)] == products["label"].to_numpy()) >= 0.9

    @pytest.mark.slow
    def test_learning_curve(self, pipe, products):
        sizes, train_scores, test_scores = learning_curve(
            pipe, products, products["label"], cv=CV, train_sizes=[0.5, 1.0]
        )
        assert list(sizes) == [30, 60]
        assert train_scores.shape == test_scores.shape == (2, 4)
        assert test_scores[-1].mean() >= 0.9


class TestComposition:
    def test_two_backbones_in_a_feature_union(self, products):
        union = FeatureUnion([("a", tiny_featurizer(0)), ("b", tiny_featurizer(1))])
        features = union.fit_transform(products["photo"])
        names = union.get_feature_names_out()
        assert features.shape == (len(products), 16) and len(names) == 16
        assert names[0] == "a__pretrainedfeaturizer0" and names[-1] == "b__pretrainedfeaturizer7"
        assert not np.allclose(features[:, :8], features[:, 8:])

    def test_feature_names_flow_through_a_pipeline(self, products):
        pipe = make_pipeline(tiny_featurizer(), PCA(n_components=3)).fit(products["photo"])
        assert list(pipe.get_feature_names_out()) == ["pca0", "pca1", "pca2"]

    def test_html_repr_for_notebooks(self):
        pipe = make_pipeline(photo_and_price(tiny_featurizer()), LogisticRegression())
        for html in (estimator_html_repr(pipe), pipe._repr_html_()):
            assert "PretrainedFeaturizer" in html and "StandardScaler" in html


class TestIterators:
    """A generator of images works in every call, read once per call (GridSearchCV aside)."""

    @pytest.fixture(scope="class")
    @staticmethod
    def photos(products):
        return list(products["photo"][:24]), products["label"][:24].to_numpy()

    def test_fit_transform_and_a_pipeline_read_a_generator_once(self, photos):
        paths, labels = photos
        expected = tiny_featurizer().fit_transform(paths)
        np.testing.assert_array_equal(tiny_featurizer().fit_transform(p for p in paths), expected)
        pipe = make_pipeline(tiny_featurizer(), LogisticRegression(max_iter=1000))
        from_list = clone(pipe).fit(paths, labels).predict_proba(paths)
        from_generators = pipe.fit((p for p in paths), labels).predict_proba(p for p in paths)
        np.testing.assert_array_equal(from_generators, from_list)

    def test_a_fine_tuner_in_a_pipeline_reads_a_generator_once(self, photos):
        paths, labels = photos
        pipe = make_pipeline(make_clf(max_epochs=1, random_state=0))
        from_list = clone(pipe).fit(paths, labels).predict_proba(paths)
        from_generators = pipe.fit(iter(paths), labels).predict_proba(iter(paths))
        np.testing.assert_allclose(from_generators, from_list, atol=1e-6)

    def test_a_generator_read_by_an_earlier_call_is_named(self, photos):
        images = (p for p in photos[0])
        featurizer = tiny_featurizer().fit(images)
        with pytest.raises(ValueError, match="iterator that yielded none.*pass a list"):
            featurizer.transform(images)

    def test_grid_search_needs_a_list_and_says_so(self, photos):
        """GridSearchCV indexes X by fold: scikit-learn refuses a generator, naming it."""
        paths, labels = photos
        search = GridSearchCV(
            make_pipeline(tiny_featurizer(), LogisticRegression(max_iter=1000)),
            {"logisticregression__C": [0.1, 1.0]},
            cv=2,
        )
        with pytest.raises(TypeError, match="generator object"):
            search.fit((p for p in paths), labels)
        assert search.fit(list(p for p in paths), labels).best_score_ > 0.5
