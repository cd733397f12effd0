"""PretrainedFeaturizer on a Dask cluster of two worker processes.

Two uses: ``GridSearchCV(n_jobs=-1)`` under ``joblib.parallel_backend("dask")``,
and transform mapped over the chunks of a Dask array of images. A counting
backbone tells how many images went through the network in each worker
process, so the tests see where the work happened and how often.
"""

import logging

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from torch import nn

from sktransfer import Preprocessing, PretrainedFeaturizer, cache_info
from sktransfer.datasets import load_textures

distributed = pytest.importorskip("dask.distributed")
da = pytest.importorskip("dask.array")

#: Images that went through a CountingBackbone in this process (each worker has its own).
FORWARDS = {"images": 0}


class CountingBackbone(nn.Module):
    """A tiny conv net that counts the images it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        FORWARDS["images"] += len(x)
        return torch.relu(self.conv(x))


#: Store entries per image: the one stage's average and maximum, and the model's own features.
ENTRIES = 3


def counting_featurizer(**params):
    return PretrainedFeaturizer(
        CountingBackbone(),
        preprocessing=Preprocessing(input_size=32, resize_size=32),
        progress=False,
        **params,
    )


def forwards_per_worker(client):
    """Images each worker's backbones processed since the last reset."""
    return list(client.run(_read_forwards).values())


def _read_forwards():
    return FORWARDS["images"]


def _reset_forwards():
    FORWARDS["images"] = 0


def _shared_backbone_info():
    from sktransfer._featurizer import _shared_backbone

    return _shared_backbone.cache_info()


def _clear_worker_caches():
    from sktransfer import clear_cache
    from sktransfer._featurizer import _shared_backbone

    _shared_backbone.cache_clear()
    clear_cache("memory")
    # fit probes a module's feature size with one blank image, once per process:
    # done here, so that the counts below are of real images only.
    counting_featurizer().fit(np.zeros((1, 8, 8, 3), dtype=np.uint8))
    _reset_forwards()


@pytest.fixture(scope="module")
def client():
    # Processes, one thread each: what a real cluster does, on the 2 cores we have.
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def fresh_workers(client):
    client.run(_clear_worker_caches)
    return client


@pytest.fixture(scope="module")
def textures():
    X, y = load_textures(patch_size=128)  # 48 patches, 3 classes
    return X[::2], y[::2]


def grid_search(featurizer, n_jobs, **params):
    pipe = make_pipeline(featurizer, LogisticRegression(max_iter=1000))
    return GridSearchCV(
        pipe, {"logisticregression__C": [0.1, 1.0]}, cv=3, n_jobs=n_jobs, refit=False, **params
    )


@pytest.mark.slow  # starts other Python processes
class TestGridSearchOnWorkers:
    """GridSearchCV fits run in the workers; features are computed once per cache."""

    def test_workers_compute_each_image_once_per_process(self, fresh_workers, textures):
        X, y = textures
        search = grid_search(counting_featurizer(), n_jobs=-1)
        with joblib.parallel_backend("dask"):
            search.fit(X, y)
        counts = forwards_per_worker(fresh_workers)
        # Six fits, each featurizing every image (train and test folds): the memory
        # cache of each worker process keeps that to one pass per process.
        assert sum(counts) >= len(X)
        assert max(counts) == len(X)
        local = grid_search(counting_featurizer(cache=None), n_jobs=1).fit(X, y)
        np.testing.assert_allclose(
            search.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
        )

    def test_workers_share_a_disk_cache(self, fresh_workers, textures, tmp_path):
        X, y = textures
        cache = tmp_path / "features"
        first = grid_search(counting_featurizer(cache=cache), n_jobs=-1)
        with joblib.parallel_backend("dask"):
            first.fit(X, y)
        assert cache_info(cache).entries == len(X) * ENTRIES
        # Two workers may both compute an image before either has stored it; never more.
        assert len(X) <= sum(forwards_per_worker(fresh_workers)) <= 2 * len(X)

        fresh_workers.run(_clear_worker_caches)
        second = grid_search(counting_featurizer(cache=cache), n_jobs=-1)
        with joblib.parallel_backend("dask"):
            second.fit(X, y)
        assert forwards_per_worker(fresh_workers) == [0, 0]  # all read from the disk
        np.testing.assert_array_equal(
            second.cv_results_["mean_test_score"], first.cv_results_["mean_test_score"]
        )

    def test_each_worker_builds_a_registry_backbone_once(self, fresh_workers, textures):
        X, y = textures
        X, y = X[::2], y[::2]  # 12 patches: the real backbone, kept cheap
        before = _shared_backbone_info()
        # No feature cache, so every fit runs the backbone.
        search = grid_search(PretrainedFeaturizer(cache=None, progress=False), n_jobs=-1)
        with joblib.parallel_backend("dask"):
            search.fit(X, y)
        infos = list(fresh_workers.run(_shared_backbone_info).values())
        assert sum(info.misses for info in infos) >= 1
        for info in infos:
            assert info.misses <= 1  # built once in this process...
            assert info.misses == 0 or info.hits >= 1  # ...and reused after that
        assert _shared_backbone_info() == before  # nothing ran in this process


def featurize(featurizer, images, chunk_size):
    """Features of ``images`` as a Dask array, one task per chunk (as in examples/plot_dask.py).

    ``images`` is an array of paths (1-D) or of pixels (N, H, W[, C]).
    """
    images = da.from_array(images, chunks=(chunk_size, *images.shape[1:]), inline_array=True)
    width = featurizer.n_features_out_
    # One feature row per image: paths gain the feature axis, pixels trade theirs for it.
    axes = {"new_axis": 1} if images.ndim == 1 else {"drop_axis": list(range(2, images.ndim))}
    return images.map_blocks(
        featurizer.transform,
        chunks=(images.chunks[0], (width,)),
        meta=np.empty((0, width), dtype=np.float32),
        **axes,
    )


class TestDaskArray:
    """transform mapped over the chunks of a Dask array, computed by the workers."""

    @pytest.fixture(scope="class")
    @staticmethod
    def images():
        return np.random.default_rng(0).integers(0, 256, (40, 24, 24, 3), dtype=np.uint8)

    def test_matches_a_local_run_row_for_row(self, fresh_workers, images):
        featurizer = counting_featurizer(cache=None).fit(images)
        features = featurize(featurizer, images, chunk_size=8)
        assert isinstance(features, da.Array)
        assert features.shape == (40, featurizer.n_features_out_) and features.numblocks == (5, 1)
        _reset_forwards()
        computed = features.compute()
        assert FORWARDS["images"] == 0  # the workers did the work...
        assert sum(forwards_per_worker(fresh_workers)) == len(images)  # ...once per image
        np.testing.assert_allclose(computed, featurizer.transform(images), atol=1e-6)

    def test_paths_and_a_disk_cache(self, fresh_workers, images, tmp_path):
        from PIL import Image

        paths = []
        for index, image in enumerate(images[:16]):
            paths.append(str(tmp_path / f"{index}.png"))
            Image.fromarray(image).save(paths[-1])
        paths = np.array(paths)
        cache = tmp_path / "features"
        featurizer = counting_featurizer(cache=cache).fit(paths)
        features = featurize(featurizer, paths, chunk_size=4).compute()
        assert cache_info(cache).entries == len(paths) * ENTRIES
        fresh_workers.run(_reset_forwards)
        again = featurize(featurizer, paths, chunk_size=4).compute()
        assert forwards_per_worker(fresh_workers) == [0, 0]
        np.testing.assert_array_equal(again, features)
        np.testing.assert_allclose(
            features, counting_featurizer(cache=None).fit_transform(images[:16]), atol=1e-6
        )
