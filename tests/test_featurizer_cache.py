"""Precompute once: each distinct image goes through the backbone once per cache.

A counting module serves as the backbone, so the tests see exactly how many
images the network processed.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from torch import nn

from sktransfer import Preprocessing, PretrainedFeaturizer, UntrustedCacheError
from sktransfer._store import cache_info, clear_cache, resolve_store
from sktransfer._store.disk import CacheWarning

from .conftest import unable_to_write

ROOT = Path(__file__).resolve().parents[1]

#: Images that went through any CountingBackbone in this process.
FORWARDS = {"images": 0}
#: Seconds each CountingBackbone forward sleeps in this process. A global, not an
#: attribute: attributes are part of a module's identity, and a slow run must share
#: its cache entries with a fast one.
SLOWDOWN = {"seconds": 0.0}
#: Store entries per image: its one stage's average and maximum, and the model's own features.
ENTRIES = 3


class CountingBackbone(nn.Module):
    """A tiny conv net that counts the images it sees (and can be made slow)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x):
        FORWARDS["images"] += len(x)
        time.sleep(SLOWDOWN["seconds"])
        return torch.relu(self.conv(x))


def counting_featurizer(cache="memory", seed=0, delay=0.0, **params):
    SLOWDOWN["seconds"] = delay
    return PretrainedFeaturizer(
        CountingBackbone(seed),
        preprocessing=Preprocessing(input_size=16, resize_size=16),
        cache=cache,
        progress=False,
        **params,
    )


def make_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def fresh_counts():
    clear_cache("memory")
    FORWARDS["images"] = 0
    yield
    clear_cache("memory")


def count_forwards(fn):
    before = FORWARDS["images"]
    result = fn()
    return FORWARDS["images"] - before, result


class TestMemoryCache:
    def test_second_transform_does_no_backbone_work(self):
        X = make_images(10)
        featurizer = counting_featurizer().fit(X)
        first_count, first = count_forwards(lambda: featurizer.transform(X))
        second_count, second = count_forwards(lambda: featurizer.transform(X))
        assert (first_count, second_count) == (10, 0)
        np.testing.assert_array_equal(first, second)

    def test_grid_search_over_a_pipeline_computes_each_image_once(self):
        X = make_images(30)
        y = np.array(["tigger", "misty", "neither"] * 10)
        counting_featurizer().fit(X)  # fit probes the feature size once per module state
        pipe = make_pipeline(counting_featurizer(), LogisticRegression(max_iter=200))
        search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3)
        count, _ = count_forwards(lambda: search.fit(X, y))
        assert count == 30  # not folds x params x images
        assert cache_info("memory").entries == 30 * ENTRIES

    def test_cached_features_equal_computed_ones(self):
        X = make_images(6)
        cached = counting_featurizer().fit(X)
        cached.transform(X[:3])
        mixed = cached.transform(X)  # three hits, three computed
        np.testing.assert_allclose(
            mixed, counting_featurizer(cache=None).fit_transform(X), atol=1e-6
        )

    def test_a_changed_pixel_or_backbone_recomputes(self):
        X = make_images(5)
        counting_featurizer().fit_transform(X)
        changed = X.copy()
        changed[2, 0, 0, 0] ^= 1
        count, _ = count_forwards(lambda: counting_featurizer().fit(X).transform(changed))
        assert count == 1
        other_weights = counting_featurizer(seed=1).fit(X)
        count, _ = count_forwards(lambda: other_weights.transform(X))
        assert count == 5
        bf16 = counting_featurizer(precision="bf16").fit(X)
        count, _ = count_forwards(lambda: bf16.transform(X))
        assert count == 5

    def test_renamed_file_hits(self, tmp_path):
        from PIL import Image

        Image.fromarray(make_images(1)[0]).save(tmp_path / "a.png")
        counting_featurizer().fit_transform([str(tmp_path / "a.png")])
        (tmp_path / "a.png").rename(tmp_path / "b.png")
        renamed = counting_featurizer().fit([tmp_path / "b.png"])
        count, _ = count_forwards(lambda: renamed.transform([tmp_path / "b.png"]))
        assert count == 0

    def test_cache_none_always_computes(self):
        X = make_images(4)
        featurizer = counting_featurizer(cache=None).fit(X)
        featurizer.transform(X)
        count, _ = count_forwards(lambda: featurizer.transform(X))
        assert count == 4


def _run_featurizer_process(cache_dir, out_path, n, delay=0.0, wait=True):
    """Featurize ``make_images(n)`` through a disk cache in a fresh Python process."""
    script = (
        "import json, sys, numpy as np\n"
        "from tests.test_featurizer_cache import FORWARDS, counting_featurizer, make_images\n"
        f"X = make_images({n})\n"
        f"featurizer = counting_featurizer(cache={str(cache_dir)!r}, delay={delay}, batch_size=4)\n"
        "featurizer.fit(X)\n"
        "FORWARDS['images'] = 0  # count transform's work only, not fit's size probe\n"
        "out = featurizer.transform(X)\n"
        f"np.save({str(out_path)!r}, out)\n"
        "print(json.dumps(FORWARDS))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    if not wait:
        return process
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return json.loads(stdout)["images"]


@pytest.mark.slow  # starts other Python processes
class TestDiskCache:
    def test_a_new_process_with_the_same_cache_does_no_backbone_work(self, tmp_path):
        cache = tmp_path / "cache"
        assert _run_featurizer_process(cache, tmp_path / "a.npy", 12) == 12
        assert _run_featurizer_process(cache, tmp_path / "b.npy", 12) == 0
        np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
        assert cache_info(cache).entries == 12 * ENTRIES
        assert (os.stat(cache).st_mode & 0o777) == 0o700

    def test_a_killed_run_resumes_where_it_stopped(self, tmp_path):
        cache, n = tmp_path / "cache", 40
        process = _run_featurizer_process(cache, tmp_path / "x.npy", n, delay=0.2, wait=False)
        deadline = time.monotonic() + 60
        while cache_info(cache).entries < 8 * ENTRIES and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # Entries of equal width are stored in one transaction, so images are whole.
        stored, partial = divmod(cache_info(cache).entries, ENTRIES)
        assert partial == 0
        assert 8 <= stored < n
        assert _run_featurizer_process(cache, tmp_path / "resumed.npy", n) == n - stored
        expected = counting_featurizer(cache=None).fit_transform(make_images(n))
        np.testing.assert_allclose(np.load(tmp_path / "resumed.npy"), expected, atol=1e-6)

    def test_two_processes_share_one_cache(self, tmp_path):
        cache, n = tmp_path / "cache", 24
        processes = [
            _run_featurizer_process(cache, tmp_path / f"{i}.npy", n, delay=0.02, wait=False)
            for i in range(2)
        ]
        for process in processes:
            process.communicate(timeout=120)
            assert process.returncode == 0
        np.testing.assert_array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))
        assert cache_info(cache).entries == n * ENTRIES
        assert _run_featurizer_process(cache, tmp_path / "again.npy", n) == 0


class TestDiskCacheSurroundings:
    def test_read_only_cache_serves_what_it_holds_and_computes_the_rest(self, shared_tmp):
        cache, X = shared_tmp / "cache", make_images(6)
        expected = counting_featurizer(cache=None).fit_transform(X)
        featurizer = counting_featurizer(cache=cache).fit(X)
        featurizer.transform(X[:4])
        resolve_store(cache).close()  # as a finished session leaves it
        with unable_to_write(cache), pytest.warns(CacheWarning, match="read-only") as caught:
            forwards, features = count_forwards(lambda: featurizer.transform(X))
            again, _ = count_forwards(lambda: featurizer.transform(X))
        np.testing.assert_allclose(features, expected, atol=1e-6)
        assert (forwards, again) == (2, 2)  # the two new images, computed, not stored
        assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
        resolve_store(cache).close()

    def test_bad_cache_paths_are_clear_errors(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        X = make_images(1)
        with pytest.raises(ValueError, match="cache='' names no directory"):
            counting_featurizer(cache="").fit(X).transform(X)
        (tmp_path / "file").write_text("")
        with pytest.raises(NotADirectoryError, match="'file' is a file"):
            counting_featurizer(cache="file").fit(X).transform(X)
        assert [p.name for p in tmp_path.iterdir()] == ["file"]

    def test_a_users_own_database_of_that_name_is_refused_and_kept(self, tmp_path):
        """A folder that holds someone's features.sqlite: no features stored, none deleted."""
        db = sqlite3.connect(tmp_path / "features.sqlite")
        with db:
            db.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
            db.executemany(
                "INSERT INTO features VALUES (?, ?, ?)", [(i, "x", i) for i in range(1000)]
            )
        db.close()
        before = (tmp_path / "features.sqlite").read_bytes()
        featurizer = counting_featurizer(cache=tmp_path).fit(make_images(2))
        with pytest.raises(UntrustedCacheError, match="not a feature cache of sktransfer"):
            featurizer.transform(make_images(2))
        with pytest.raises(UntrustedCacheError):
            clear_cache(tmp_path)
        assert (tmp_path / "features.sqlite").read_bytes() == before

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
    def test_a_folder_of_another_user_is_refused_with_the_fix(self, tmp_path):
        cache = tmp_path / "cache"
        cache.mkdir()
        os.chown(cache, 12345, 12345)
        featurizer = counting_featurizer(cache=cache).fit(make_images(2))
        with pytest.raises(UntrustedCacheError, match="belongs to uid 12345.*chown -R root"):
            featurizer.transform(make_images(2))
        assert not list(cache.iterdir())

    def test_transforms_reuse_one_connection(self, tmp_path):
        X = make_images(2)
        featurizer = counting_featurizer(cache=tmp_path).fit(X)
        featurizer.transform(X)
        open_files = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            featurizer.transform(X)
        assert len(os.listdir("/proc/self/fd")) <= open_files + 2


def test_random_weights_are_never_cached():
    X = make_images(2)
    before = cache_info("memory").entries
    for _ in range(2):
        PretrainedFeaturizer("resnet18", weights=None, progress=False).fit_transform(X)
    assert cache_info("memory").entries == before


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "SIGINT"])
def test_an_interrupted_transform_stops_and_keeps_the_batches_it_finished(tmp_path, how):
    """Ctrl-C during transform propagates; the next run computes only what was left."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT does not raise KeyboardInterrupt in this process")
    X = make_images(12)
    featurizer = counting_featurizer(cache=tmp_path / "cache", batch_size=4).fit(X)
    forward = CountingBackbone.forward

    def interrupted_at_the_third_batch(self, x):
        if FORWARDS["images"] - before == 8:
            if how == "SIGINT":
                os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt here
            else:
                raise KeyboardInterrupt
        return forward(self, x)

    before = FORWARDS["images"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CountingBackbone, "forward", interrupted_at_the_third_batch)
        with pytest.raises(KeyboardInterrupt):
            featurizer.transform(X)
    assert cache_info(tmp_path / "cache").entries == 8 * ENTRIES
    count, features = count_forwards(lambda: featurizer.transform(X))
    assert count == 4
    expected = counting_featurizer(cache=None).fit_transform(X)
    np.testing.assert_allclose(features, expected, atol=1e-6)
