"""FineTuneClassifier in a search: frozen outputs reused across fits, folds and predict;
reproducible fits; small-data defaults; probe-then-tune.

A parameter-free first stage counts the images that pass through it (in a
class attribute, so clones and copies of the backbone count too).
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import GridSearchCV, GroupKFold
from skorch.dataset import ValidSplit
from torch import nn

from sktransfer import PretrainedFeaturizer
from sktransfer._backbones import resolve_spec
from sktransfer._finetune import FineTuneClassifier, _decoded, _frozen
from sktransfer._layers import stage_widths
from sktransfer._store import cache_info
from tests._helpers import CountingStage
from tests.test_finetune import TINY, colour_images, make_backbone


def counting_backbone(seed=0):
    """The tiny backbone behind a counting stage; the count restarts after its one probe."""
    stages = OrderedDict(counter=CountingStage(), **dict(make_backbone(seed).named_children()))
    backbone = nn.Sequential(stages).eval()
    # Runs one blank image to learn the feature dim, and one on the meta device for each
    # stage's width (the featurizer's fit does).
    stage_widths(resolve_spec(backbone, preprocessing=TINY))
    CountingStage.images_seen = 0
    return backbone


@pytest.fixture
def count():
    """Images seen by the counting stage inside the with-block."""
    CountingStage.images_seen = 0

    def seen():
        return CountingStage.images_seen

    return seen


def make_clf(backbone=None, **params):
    defaults = dict(preprocessing=TINY, max_epochs=2, lr=0.02, batch_size=8, progress=False)
    return FineTuneClassifier(
        counting_backbone() if backbone is None else backbone, **{**defaults, **params}
    )


@pytest.fixture(scope="module")
def data():
    return colour_images(4, seed=0)


class TestFrozenOutputsInTheStore:
    def test_search_over_freeze_and_lr_runs_each_depth_once_per_image(self, data, count, tmp_path):
        X, y = data
        search = GridSearchCV(
            make_clf(cache=str(tmp_path)),
            {"freeze": ["backbone", -1], "lr": [1e-2, 1e-3]},
            cv=3,
        ).fit(X, y)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        # 3 folds x 2 depths x 2 learning rates, fits and scoring, plus the refit:
        # without the store the stage would see each image about 13 times.
        assert count() <= 2 * len(X)
        search.predict(X)
        assert count() <= 2 * len(X)

    def test_default_memory_store_is_shared_by_clones(self, data, count):
        X, y = data
        backbone = counting_backbone(seed=7)  # weights no other test uses: a cold store
        make_clf(backbone, freeze=-1).fit(X, y)
        assert count() == len(X)
        make_clf(backbone, freeze=-1, lr=0.5).fit(X, y).predict(X)
        assert count() == len(X)

    def test_featurizing_first_makes_the_head_free(self, data, count, tmp_path):
        X, y = data
        backbone = counting_backbone()
        featurizer = PretrainedFeaturizer(
            backbone, preprocessing=TINY, cache=str(tmp_path), progress=False
        )
        features = featurizer.fit_transform(X)
        assert count() == len(X)
        clf = make_clf(backbone, freeze="backbone", cache=str(tmp_path)).fit(X, y)
        clf.predict_proba(X)
        assert count() == len(X)
        # The featurizer stores each stage's average and maximum, and the features the head reads.
        assert cache_info(str(tmp_path)).entries == len(X) * (2 * len(backbone) + 1)
        # The head saw exactly the featurizer's rows.
        logits = clf.module_.head.eval()(torch.from_numpy(features))
        expected = torch.softmax(logits, dim=1).detach().numpy()
        np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=1e-5, atol=1e-6)

    def test_stored_partial_depth_trains_like_recomputing(self, data, tmp_path):
        X, y = data
        cached = make_clf(freeze=2, cache=str(tmp_path), random_state=0)
        cached.fit(X, y)  # fills the store
        from_store = make_clf(freeze=2, cache=str(tmp_path), random_state=0).fit(X, y)
        recomputed = make_clf(freeze=2, cache=None, cache_frozen=False, random_state=0).fit(X, y)
        np.testing.assert_allclose(
            from_store.predict_proba(X), recomputed.predict_proba(X), rtol=1e-4, atol=1e-6
        )

    def test_large_activations_are_not_stored(self, data, count, tmp_path, monkeypatch):
        X, y = data
        monkeypatch.setattr(_frozen, "FROZEN_STORE_MAX_ROW_BYTES", 16)
        backbone = counting_backbone()
        make_clf(backbone, freeze=1, cache=str(tmp_path)).fit(X, y)
        assert cache_info(str(tmp_path)).entries == 0
        make_clf(backbone, freeze="backbone", cache=str(tmp_path)).fit(X, y)  # 8 floats: too
        assert cache_info(str(tmp_path)).entries == 0
        assert count() == 2 * len(X)

    def test_cache_none_stores_nothing_across_fits(self, data, count):
        X, y = data
        backbone = counting_backbone()
        make_clf(backbone, freeze=-1, cache=None).fit(X, y)
        make_clf(backbone, freeze=-1, cache=None).fit(X, y)
        assert count() == 2 * len(X)

    def test_a_file_replaced_mid_predict_is_stored_under_what_was_decoded(
        self, data, tmp_path, monkeypatch
    ):
        X, y = data
        red, blue = X[0], X[-1]
        clf = make_clf(freeze=-1, cache=None, random_state=0).fit(X, y)
        truth = clf.predict_proba(np.stack([red, blue]))
        path = tmp_path / "photo.png"
        Image.fromarray(red).save(path)
        real_hash, calls = _decoded.content_hash, []

        def hash_then_replace(item):
            # The first call is the store lookup; the file changes right after it.
            calls.append(item)
            digest = real_hash(item)
            if len(calls) == 1:
                Image.fromarray(blue).save(path)
            return digest

        clf.set_params(cache=str(tmp_path / "store"))
        monkeypatch.setattr(_decoded, "content_hash", hash_then_replace)
        np.testing.assert_allclose(clf.predict_proba([path])[0], truth[1], atol=1e-6)
        monkeypatch.undo()
        # The red photo back: its outputs are its own, not the blue one's stored under its key.
        Image.fromarray(red).save(path)
        np.testing.assert_allclose(clf.predict_proba([path])[0], truth[0], atol=1e-6)

    def test_precision_is_part_of_the_key(self, data, count, tmp_path):
        X, y = data
        clf = make_clf(freeze=-1, cache=str(tmp_path)).fit(X, y)
        fp32 = clf.predict_proba(X)
        assert count() == len(X)
        bf16 = clf.set_params(precision="bf16").predict_proba(X)
        assert count() == 2 * len(X)
        np.testing.assert_allclose(bf16, fp32, atol=0.05)


class TestReproducible:
    @pytest.mark.parametrize(
        "params",
        [dict(freeze=1, dropout=0.5, augment=True), dict(freeze=0, head=(8,), warmup_epochs=1)],
        ids=["augmented", "mlp-warmup"],
    )
    def test_two_fits_with_random_state_are_identical(self, data, params):
        X, y = data
        first = make_clf(random_state=0, cache=None, **params).fit(X, y).predict_proba(X)
        torch.manual_seed(123)  # the global state must not matter
        second = make_clf(random_state=0, cache=None, **params).fit(X, y).predict_proba(X)
        np.testing.assert_array_equal(first, second)
        other = make_clf(random_state=1, cache=None, **params).fit(X, y).predict_proba(X)
        assert not np.array_equal(first, other)

    def test_random_state_seeds_a_randomly_initialised_backbone(self, data):
        X, y = data
        probas = [
            FineTuneClassifier(
                "mobilenet_v3_small",
                weights=None,
                preprocessing=TINY,
                max_epochs=1,
                random_state=seed,
                progress=False,
            )
            .fit(X, y)
            .predict_proba(X)
            for seed in (0, 0, 1)
        ]
        np.testing.assert_array_equal(probas[0], probas[1])
        assert not np.array_equal(probas[0], probas[2])

    def test_random_state_leaves_global_torch_state_alone(self, data):
        X, y = data
        clf = make_clf(random_state=0, cache=None)  # building the test backbone seeds torch
        torch.manual_seed(5)
        expected = torch.rand(3)
        torch.manual_seed(5)
        clf.fit(X, y)
        torch.testing.assert_close(torch.rand(3), expected)

    @pytest.mark.slow  # starts other Python processes
    def test_search_results_do_not_depend_on_n_jobs(self, data):
        X, y = data
        results = []
        for n_jobs in (1, 2):
            search = GridSearchCV(
                make_clf(make_backbone(), random_state=0, cache=None, dropout=0.5),
                {"freeze": ["backbone", 0], "lr": [0.05, 0.001]},
                cv=2,
                n_jobs=n_jobs,
            ).fit(X, y)
            results.append(search)
        single, parallel = results
        np.testing.assert_array_equal(
            single.cv_results_["mean_test_score"], parallel.cv_results_["mean_test_score"]
        )
        assert single.best_params_ == parallel.best_params_
        np.testing.assert_allclose(
            single.predict_proba(X), parallel.predict_proba(X), rtol=1e-5, atol=1e-7
        )


class TestSmallDataDefaults:
    def test_three_images_per_class_fit_with_defaults(self):
        X, y = colour_images(3, seed=2)
        clf = FineTuneClassifier(make_backbone(), preprocessing=TINY, max_epochs=2).fit(X, y)
        assert clf.train_split is None and len(clf.history) == 2
        assert "valid_loss" not in clf.history[-1]

    def test_split_that_cannot_stratify_says_so(self):
        X, y = colour_images(3, seed=2)
        clf = make_clf(train_split=ValidSplit(5, stratified=True))
        with pytest.raises(ValueError, match=r"cannot make a stratified .* only 3") as info:
            clf.fit(X, y)
        assert "train_split=None" in str(info.value)

    def test_fit_params_go_to_train_split(self, data):
        X, y = data
        groups = np.arange(len(X)) % 4
        clf = make_clf(train_split=ValidSplit(GroupKFold(4)), max_epochs=1, cache=None)
        clf.fit(X, y, groups=groups)  # used to reach the network's forward: TypeError
        assert "valid_loss" in clf.history[-1]


class TestProbeThenTune:
    def test_warmup_trains_only_the_head_on_whole_backbone_features(self, data, count):
        X, y = data
        params = dict(freeze=0, max_epochs=0, cache=None, random_state=0)
        untrained = make_clf(**params).fit(X, y)
        clf = make_clf(warmup_epochs=3, **params).fit(X, y)
        assert len(clf.history) == 3
        assert count() == len(X)  # one pass over the whole frozen backbone, for all 3 epochs
        pretrained = make_backbone().state_dict()
        assert all(
            torch.equal(value, clf.module_.stages.state_dict()[name])
            for name, value in pretrained.items()
        )
        assert not torch.equal(untrained.module_.head[-1].weight, clf.module_.head[-1].weight)
        assert all(p.requires_grad for p in clf.module_.stages.parameters())
        # Continuing a fit (warm start, nothing changed) does not probe again.
        clf.set_params(warm_start=True, max_epochs=1).fit(X, y)
        assert len(clf.history) == 4

    def test_warmup_then_tuning_moves_the_trainable_stages(self, data):
        X, y = data
        clf = make_clf(freeze=-1, warmup_epochs=2, max_epochs=2, cache=None, random_state=0)
        clf.fit(X, y)
        assert len(clf.history) == 4
        pretrained = make_backbone()
        assert not torch.equal(clf.module_.stages.top[0].weight, pretrained.top[0].weight)
        assert torch.equal(clf.module_.stages.middle[0].weight, pretrained.middle[0].weight)
