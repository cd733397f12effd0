"""Tests of the feature cache: content keys, the memory LRU and the SQLite store."""

import contextlib
import multiprocessing
import os
import pickle
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sktransfer._store import CacheInfo, cache_info, clear_cache, resolve_store, trust
from sktransfer._store.disk import _INHERITED_CONNECTIONS, DATABASE_NAME, CacheWarning, DiskStore
from sktransfer._store.keys import content_hash, feature_key
from sktransfer._store.memory import MemoryStore, default_memory_store, set_memory_limit
from sktransfer._store.schema import APPLICATION_ID, ensure_schema, identify
from sktransfer._store.trust import UntrustedCacheError, _private_group

from .conftest import unable_to_write

ROOT = Path(__file__).resolve().parents[1]


def batch_rows(writer, batch, n_rows=16, dim=64):
    """Keys and rows that writer ``writer`` puts in batch ``batch``; deterministic."""
    writer, batch = int(writer), int(batch)
    keys = [f"{writer}-{batch}-{i}" for i in range(n_rows)]
    rows = np.random.default_rng([writer, batch]).standard_normal((n_rows, dim), np.float32)
    return keys, rows


def write_batches_main(directory, writers, n_batches, n_rows, go_file):
    """Body of a writer subprocess: print "ready", wait for ``go_file``, then write.

    Prints each batch's number once ``put_many`` has returned.
    """
    store = DiskStore(directory)
    warnings.simplefilter("error", CacheWarning)  # any CacheWarning means the store misbehaved
    print("ready", flush=True)
    while not Path(go_file).exists():
        time.sleep(0.005)
    for batch in range(int(n_batches)):
        for writer in writers.split(","):
            store.put_many(*batch_rows(writer, batch, int(n_rows)))
        print(batch, flush=True)


def start_writer(directory, writers, n_batches, go_file, n_rows=16):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from tests.test_cache import write_batches_main; write_batches_main(*sys.argv[2:])"
    )
    args = [str(ROOT), str(directory), writers, str(n_batches), str(n_rows), str(go_file)]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stored_batches(directory, writer):
    """Row counts of ``writer``'s batches in the database, by batch number."""
    with raw_database(directory) as db:
        keys = [key for (key,) in db.execute("SELECT key FROM features")]
    counts = {}
    for key in keys:
        key_writer, batch, _ = key.split("-")
        if key_writer == str(writer):
            counts[int(batch)] = counts.get(int(batch), 0) + 1
    return counts


def run_threads(target, n_threads):
    """Run ``target(i)`` in ``n_threads`` threads that switch often, so races show."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target, args=(i,)) for i in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)


def assert_bitwise_equal(found, expected):
    assert found is not None
    assert found.dtype == np.float32
    assert found.tobytes() == np.asarray(expected, np.float32).tobytes()


@contextlib.contextmanager
def raw_database(directory):
    """A plain sqlite3 connection to a store's file, committed and closed on exit."""
    db = sqlite3.connect(Path(directory) / DATABASE_NAME)
    try:
        with db:
            yield db
    finally:
        db.close()


def raw_rows(directory):
    with raw_database(directory) as db:
        query = "SELECT key, dim, data FROM features"
        return {key: (dim, data) for key, dim, data in db.execute(query)}


def fill(directory, n_rows=200, dim=256):
    """A closed store holding ``n_rows`` random rows; returns keys and rows."""
    keys = [f"k{i}" for i in range(n_rows)]
    rows = np.random.default_rng(1).standard_normal((n_rows, dim), np.float32)
    store = DiskStore(directory)
    store.put_many(keys, rows)
    store.close()
    return keys, rows


class TestContentHash:
    def test_renamed_file_hits_and_changed_byte_misses(self, photo_paths, tmp_path):
        original = Path(photo_paths[0])
        renamed = tmp_path / "renamed.bin"
        shutil.copyfile(original, renamed)
        assert content_hash(renamed) == content_hash(str(original))
        data = bytearray(renamed.read_bytes())
        data[len(data) // 2] ^= 1
        renamed.write_bytes(bytes(data))
        assert content_hash(renamed) != content_hash(original)

    def test_different_photos_differ(self, photo_paths):
        assert len({content_hash(path) for path in photo_paths}) == len(photo_paths)

    def test_unreadable_files_have_no_hash(self, tmp_path):
        assert content_hash(tmp_path / "missing.png") is None
        assert content_hash(tmp_path) is None
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        assert content_hash(fifo) is None  # must not block reading it

    def test_array_layout_does_not_matter(self, photos):
        photo = photos[0]
        strided = photo[:, ::2]
        assert not strided.flags.c_contiguous
        assert content_hash(strided) == content_hash(strided.copy())
        assert content_hash(np.asfortranarray(photo)) == content_hash(photo)
        read_only = photo.copy()
        read_only.flags.writeable = False
        assert content_hash(read_only) == content_hash(photo)

    def test_pixels_dtype_and_shape_matter(self, photos):
        photo = photos[0]
        changed = photo.copy()
        changed[10, 10, 0] ^= 1
        assert content_hash(changed) != content_hash(photo)
        assert content_hash(photo.astype(np.uint16)) != content_hash(photo)
        flat = photo.reshape(photo.shape[0], -1, 1)
        assert flat.tobytes() == photo.tobytes()
        assert content_hash(flat) != content_hash(photo)

    def test_object_arrays_and_unknown_types_have_no_hash(self):
        assert content_hash(np.array([np.zeros(3), np.ones(4)], dtype=object)) is None
        assert content_hash(42) is None

    def test_pil_images(self, photos, photo_paths):
        from_array = Image.fromarray(photos[0])
        assert content_hash(Image.open(photo_paths[0])) == content_hash(from_array)
        assert content_hash(from_array) != content_hash(Image.fromarray(photos[1]))
        assert content_hash(from_array) != content_hash(photos[0])
        indices = np.arange(16, dtype=np.uint8).reshape(4, 4)
        gray = Image.fromarray(indices)
        palette_a = gray.copy()
        palette_a.putpalette(list(range(48)))  # becomes mode "P" with the same bytes
        palette_b = palette_a.copy()
        palette_b.putpalette(list(range(48))[::-1])
        assert palette_a.tobytes() == palette_b.tobytes() == gray.tobytes()
        assert len({content_hash(gray), content_hash(palette_a), content_hash(palette_b)}) == 3

    def test_exif_orientation_of_pil_images(self, photos, tmp_path):
        # Decoding turns a rotated image upright, so the orientation is part of its content.
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(photos[0]).save(tmp_path / "r.png", exif=exif)
        Image.fromarray(photos[0]).save(tmp_path / "u.png")
        rotated, upright = Image.open(tmp_path / "r.png"), Image.open(tmp_path / "u.png")
        assert rotated.tobytes() == upright.tobytes()
        assert content_hash(rotated) != content_hash(upright)
        assert content_hash(upright) == content_hash(Image.fromarray(photos[0]))

    def test_encoded_bytes_hash_as_their_file(self, photo_paths):
        data = open(photo_paths[0], "rb").read()
        assert content_hash(data) == content_hash(photo_paths[0])
        assert content_hash(data[:-1]) != content_hash(data)

    def test_tensors(self, photos):
        torch = pytest.importorskip("torch")
        tensor = torch.from_numpy(photos[0]).permute(2, 0, 1)
        assert not tensor.is_contiguous()
        assert content_hash(tensor) == content_hash(tensor.contiguous())
        # A tensor is (C, H, W) and decodes differently from an array with the same bytes.
        assert content_hash(tensor.contiguous()) != content_hash(tensor.contiguous().numpy())
        assert content_hash(tensor.float()) != content_hash(tensor)
        assert content_hash(tensor.to(torch.bfloat16)) is None


class TestFeatureKey:
    def test_depends_on_model_and_content(self):
        content = content_hash(np.zeros((4, 4), np.uint8))
        other_content = content_hash(np.ones((4, 4), np.uint8))
        key = feature_key("lite0|fp32", content)
        assert key == feature_key("lite0|fp32", content)
        assert len(key) == 64 and int(key, 16) >= 0
        assert key != feature_key("lite0|bf16", content)
        assert key != feature_key("lite0|fp32", other_content)


class TestMemoryStore:
    def test_evicts_least_recently_used_within_the_byte_bound(self):
        store = MemoryStore(max_bytes=3 * 16)  # three vectors of 4 float32
        store.put_many(["a", "b", "c"], np.arange(12, dtype=np.float32).reshape(3, 4))
        assert store.get_many(["a"])[0] is not None  # "a" is now the most recent
        store.put_many(["d"], np.ones((1, 4)))
        assert [row is not None for row in store.get_many(["a", "b", "c", "d"])] == [
            True,
            False,
            True,
            True,
        ]
        assert store.nbytes == 48 and len(store) == 3
        np.testing.assert_array_equal(store.get_many(["a"])[0], [0, 1, 2, 3])

    def test_vector_larger_than_the_bound_is_not_stored(self):
        store = MemoryStore(max_bytes=16)
        store.put_many(["small"], np.zeros((1, 4)))
        store.put_many(["big"], np.zeros((1, 5)))
        assert store.get_many(["big", "small"])[0] is None
        assert store.get_many(["small"])[0] is not None
        assert store.nbytes == 16

    def test_replacing_a_key_counts_it_once(self):
        store = MemoryStore(max_bytes=1000)
        store.put_many(["a", "a"], np.zeros((2, 4)))
        store.put_many(["a"], np.ones((1, 4)))
        assert len(store) == 1 and store.nbytes == 16
        np.testing.assert_array_equal(store.get_many(["a"])[0], np.ones(4))

    def test_lowering_the_bound_evicts_and_clear_empties(self):
        store = MemoryStore(max_bytes=1000)
        store.put_many(["a", "b", "c"], np.zeros((3, 4)))
        store.max_bytes = 32
        assert store.get_many(["a", "b", "c"])[0] is None and len(store) == 2
        store.clear()
        assert len(store) == 0 and store.nbytes == 0
        with pytest.raises(ValueError):
            store.max_bytes = -1

    def test_stored_rows_are_private_read_only_float32_copies(self):
        store = MemoryStore(max_bytes=1000)
        rows = np.zeros((2, 4), np.float64)
        store.put_many(["a", "b"], rows)
        rows[:] = 7
        row = store.get_many(["a"])[0]
        assert row.dtype == np.float32
        assert row.base is None  # not a view that keeps the caller's batch alive
        np.testing.assert_array_equal(row, np.zeros(4))
        with pytest.raises(ValueError):
            row[0] = 1

    def test_rejects_mismatched_rows_and_non_string_keys(self):
        store = MemoryStore(max_bytes=1000)
        with pytest.raises(ValueError, match="shape"):
            store.put_many(["a", "b"], np.zeros((3, 4)))
        with pytest.raises(ValueError, match="shape"):
            store.put_many(["a"], np.zeros(4))
        with pytest.raises(TypeError):
            store.put_many([None], np.zeros((1, 4)))

    def test_concurrent_threads_keep_the_byte_count_exact(self):
        store = MemoryStore(max_bytes=8 * 16)
        errors = []

        def work(thread):
            try:
                for i in range(1000):
                    # Threads race on the shared keys and on evicting each other's rows.
                    keys = [f"shared-{i % 5}", f"{thread}-{i}", f"shared-{(i + 2) % 5}"]
                    store.put_many(keys, np.full((3, 4), i, np.float32))
                    store.get_many(keys)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        for _ in range(20):  # a race shows in about half of the rounds without the lock
            run_threads(work, 4)
            assert errors == []
            assert store.nbytes == 16 * len(store) <= store.max_bytes


class TestDefaultMemoryStore:
    @pytest.fixture
    def default_store(self):
        store = default_memory_store()
        bound = store.max_bytes
        yield store
        set_memory_limit(bound)

    def test_is_one_process_wide_bounded_store(self, default_store):
        assert default_memory_store() is default_store
        assert resolve_store("memory") is default_store
        assert default_store.max_bytes == 1 << 30

    def test_set_memory_limit_bounds_and_evicts(self, default_store):
        default_store.put_many(["limit-a", "limit-b"], np.zeros((2, 4)))
        set_memory_limit(16)
        assert default_store.max_bytes == 16
        assert default_store.get_many(["limit-a", "limit-b"])[0] is None
        assert default_store.nbytes <= 16


class TestDiskRoundTrip:
    def test_exact_across_sessions(self, tmp_path):
        rows = np.random.default_rng(0).standard_normal((5, 7), np.float32)
        rows[0, :4] = [np.nan, np.inf, -0.0, np.float32(1e-45)]  # NaN, inf, sign, subnormal
        DiskStore(tmp_path).put_many(list("abcde"), rows)
        found = DiskStore(tmp_path).get_many(["e", "x", "a", "a"])
        assert found[1] is None
        assert_bitwise_equal(found[0], rows[4])
        assert_bitwise_equal(found[2], rows[0])
        assert_bitwise_equal(found[3], rows[0])

    def test_stored_blob_is_raw_float32_bytes_not_pickle(self, tmp_path):
        rows = np.random.default_rng(0).standard_normal((3, 5))  # float64 in, float32 stored
        DiskStore(tmp_path).put_many(["a", "b", "c"], rows)
        stored = raw_rows(tmp_path)
        for key, row in zip("abc", rows.astype(np.float32)):
            assert stored[key] == (5, row.tobytes())

    def test_put_replaces_and_clear_empties(self, tmp_path):
        store = DiskStore(tmp_path)
        store.put_many(["a", "b"], np.zeros((2, 3)))
        store.put_many(["a"], np.ones((1, 3)))
        assert len(store) == 2
        assert_bitwise_equal(store.get_many(["a"])[0], np.ones(3))
        store.put_many([f"k{i}" for i in range(100)], np.zeros((100, 1000)))
        full = store.nbytes
        store.clear()
        assert len(store) == 0 and store.get_many(["a"]) == [None]
        assert store.nbytes < full / 10

    def test_many_keys_in_one_call(self, tmp_path):
        keys = [f"k{i}" for i in range(1234)]  # more than one query's worth of parameters
        rows = np.arange(1234 * 2, dtype=np.float32).reshape(-1, 2)
        store = DiskStore(tmp_path)
        store.put_many(keys, rows)
        found = store.get_many(reversed(keys))
        assert_bitwise_equal(np.stack(found), rows[::-1])

    def test_pickles_as_its_directory_only(self, tmp_path):
        store = DiskStore(tmp_path)
        store.put_many(["a"], np.ones((1, 3)))  # opens a connection, which must not travel
        payload = pickle.dumps(store)
        assert len(payload) < 300
        copy = pickle.loads(payload)
        assert copy.directory == store.directory
        assert_bitwise_equal(copy.get_many(["a"])[0], np.ones(3))

    def test_threads_share_one_store(self, tmp_path):
        store = DiskStore(tmp_path)
        errors = []

        def work(thread):
            try:
                for batch in range(20):
                    keys, rows = batch_rows(thread, batch, n_rows=4, dim=8)
                    store.put_many(keys, rows)
                    assert_bitwise_equal(np.stack(store.get_many(keys)), rows)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        run_threads(work, 4)
        assert errors == []
        assert len(store) == 4 * 20 * 4

    @pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()"
    )
    def test_forked_child_opens_its_own_connection(self, tmp_path):
        store = DiskStore(tmp_path)
        store.put_many(*batch_rows(0, 0))  # the parent's connection is open at fork time
        child = multiprocessing.get_context("fork").Process(target=_put_in_child, args=(store,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        keys, rows = batch_rows(1, 0)
        assert_bitwise_equal(np.stack(store.get_many(keys)), rows)
        store.put_many(*batch_rows(0, 1))  # the parent's connection still works
        assert len(store) == 3 * 16


def _put_in_child(store):
    inherited = store._connection
    keys, rows = batch_rows(1, 0)
    store.put_many(keys, rows)
    # SQLite forbids using, or closing, a connection opened before fork().
    assert store._connection is not inherited
    assert inherited in _INHERITED_CONNECTIONS
    assert_bitwise_equal(np.stack(store.get_many(keys)), rows)


@pytest.mark.slow  # starts other Python processes
class TestDiskProcesses:
    def test_two_processes_write_at_once(self, tmp_path):
        go = tmp_path / "go"
        n_batches = 150
        # Both write their own keys and the same shared keys (writer 9).
        writers = [start_writer(tmp_path / "cache", f"{w},9", n_batches, go) for w in (1, 2)]
        try:
            for writer in writers:
                assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
            go.touch()
            results = [writer.communicate(timeout=60) for writer in writers]
        finally:
            for writer in writers:
                writer.kill()
        for writer, (out, err) in zip(writers, results):
            assert writer.returncode == 0, err
            assert out.split()[-1] == str(n_batches - 1)
        store = DiskStore(tmp_path / "cache")
        assert len(store) == 3 * n_batches * 16
        for writer in (1, 2, 9):
            for batch in (0, n_batches // 2, n_batches - 1):
                keys, rows = batch_rows(writer, batch)
                assert_bitwise_equal(np.stack(store.get_many(keys)), rows)

    def test_sigkill_loses_at_most_the_batch_in_flight(self, tmp_path):
        go = tmp_path / "go"
        go.touch()
        n_rows = 128  # big batches, so that the kill most likely lands inside a transaction
        writer = start_writer(tmp_path, "3", 10**6, go, n_rows)
        try:
            for line in writer.stdout:
                if line.strip() == "30":
                    break
            else:
                pytest.fail(f"writer died: {writer.stderr.read()}")
            time.sleep(0.002)
            writer.send_signal(signal.SIGKILL)
            writer.wait(30)
        finally:
            writer.kill()
            writer.stdout.close()
            writer.stderr.close()
        assert writer.returncode == -signal.SIGKILL
        counts = stored_batches(tmp_path, 3)
        # Every batch it reported is there, whole; nothing half-written.
        assert set(counts) == set(range(len(counts))) and len(counts) > 30
        assert set(counts.values()) == {n_rows}
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            store = DiskStore(tmp_path)
            for batch in counts:
                keys, rows = batch_rows(3, batch, n_rows)
                assert_bitwise_equal(np.stack(store.get_many(keys)), rows)
            store.put_many(*batch_rows(4, 0))  # the dead writer's lock is gone
        with raw_database(tmp_path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


class TestDiskLocking:
    @staticmethod
    def hold_write_lock(directory, seconds):
        """Hold the database's write lock from another connection for ``seconds``."""
        locked = threading.Event()

        def hold():
            db = sqlite3.connect(Path(directory) / DATABASE_NAME, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(seconds)
            db.execute("ROLLBACK")
            db.close()

        thread = threading.Thread(target=hold)
        thread.start()
        locked.wait()
        return thread

    def test_writer_waits_for_the_lock(self, tmp_path):
        store = DiskStore(tmp_path)
        store.put_many(["a"], np.zeros((1, 2)))
        holder = self.hold_write_lock(tmp_path, 0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            store.put_many(["b"], np.ones((1, 2)))
        holder.join()
        assert_bitwise_equal(store.get_many(["b"])[0], np.ones(2))

    def test_writer_still_locked_out_warns_and_skips(self, tmp_path, monkeypatch):
        monkeypatch.setattr("sktransfer._store.disk._BUSY_TIMEOUT_S", 0.01)
        monkeypatch.setattr("sktransfer._store.disk._BUSY_RETRY_DELAYS_S", (0.01, None))
        store = DiskStore(tmp_path)
        store.put_many(["a"], np.zeros((1, 2)))
        holder = self.hold_write_lock(tmp_path, 1.0)
        with pytest.warns(CacheWarning, match="could not write"):
            store.put_many(["b"], np.ones((1, 2)))
        assert store.get_many(["a", "b"])[1] is None  # readers are not blocked in WAL mode
        holder.join()


class TestDiskDamage:
    def assert_rebuilt(self, directory, keys):
        store = DiskStore(directory)
        with pytest.warns(CacheWarning, match="unusable"):
            assert store.get_many(keys) == [None] * len(keys)
        assert (Path(directory) / f"{DATABASE_NAME}.corrupt").exists()
        store.put_many(["new"], np.ones((1, 3)))
        assert_bitwise_equal(DiskStore(directory).get_many(["new"])[0], np.ones(3))
        assert len(store) == 1

    def test_garbage_file_is_moved_aside_and_rebuilt(self, tmp_path):
        keys, _ = fill(tmp_path)
        (tmp_path / DATABASE_NAME).write_bytes(np.random.default_rng(0).bytes(50_000))
        self.assert_rebuilt(tmp_path, keys)

    def test_truncated_file_is_moved_aside_and_rebuilt(self, tmp_path):
        keys, _ = fill(tmp_path)
        path = tmp_path / DATABASE_NAME
        with open(path, "r+b") as file:
            file.truncate(path.stat().st_size // 2)
        self.assert_rebuilt(tmp_path, keys)

    def test_other_schema_version_is_moved_aside(self, tmp_path):
        keys, _ = fill(tmp_path)
        with raw_database(tmp_path) as db:
            db.execute("PRAGMA user_version = 99")
        self.assert_rebuilt(tmp_path, keys)

    def test_scribbled_pages_never_give_wrong_features(self, tmp_path):
        keys, rows = fill(tmp_path)
        path = tmp_path / DATABASE_NAME
        data = bytearray(path.read_bytes())
        rng = np.random.default_rng(0)
        for offset in rng.integers(8192, len(data) - 100, 20):
            data[offset : offset + 100] = rng.bytes(100)
        path.write_bytes(bytes(data))
        with pytest.warns(CacheWarning):
            found = DiskStore(tmp_path).get_many(keys)
        assert any(row is None for row in found)
        for row, expected in zip(found, rows):
            if row is not None:
                assert_bitwise_equal(row, expected)

    @pytest.mark.parametrize(
        "tampering",
        [
            "UPDATE features SET data = :changed WHERE key = 'k7'",
            "UPDATE features SET dim = dim + 1 WHERE key = 'k7'",
            "UPDATE features SET data = substr(data, 1, 100) WHERE key = 'k7'",
        ],
        ids=["changed-byte", "wrong-dim", "short-blob"],
    )
    def test_damaged_row_is_a_miss_and_deleted(self, tmp_path, tampering):
        keys, rows = fill(tmp_path)
        changed = bytearray(rows[7].tobytes())
        changed[5] ^= 0x10
        with raw_database(tmp_path) as db:
            db.execute(tampering, {"changed": bytes(changed)})
        store = DiskStore(tmp_path)
        with pytest.warns(CacheWarning, match="damaged"):
            found = store.get_many(keys[5:10])
        assert found[2] is None
        for row, expected in zip(found[:2] + found[3:], np.delete(rows[5:10], 2, axis=0)):
            assert_bitwise_equal(row, expected)
        assert len(store) == len(keys) - 1


def foreign_database(directory, application_id=0, n_rows=1000):
    """A user's own SQLite file named like the store, with a table ``features``; its bytes."""
    db = sqlite3.connect(Path(directory) / DATABASE_NAME)
    with db:
        if application_id:
            # Our exact columns, but another program's mark.
            db.execute(
                "CREATE TABLE features (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, "
                "data BLOB NOT NULL, checksum BLOB NOT NULL)"
            )
            rows = [(f"k{i}", 1, b"1234", b"") for i in range(n_rows)]
        else:
            db.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
            rows = [(i, f"item {i}", i / 4) for i in range(n_rows)]
        db.executemany(f"INSERT INTO features VALUES ({','.join('?' * len(rows[0]))})", rows)
        db.execute(f"PRAGMA application_id = {application_id}")
    db.close()
    return (Path(directory) / DATABASE_NAME).read_bytes()


class TestForeignDatabase:
    """A SQLite file of that name that sktransfer did not write is refused and never changed."""

    @pytest.mark.parametrize("application_id", [0, 12345], ids=["other-columns", "other-program"])
    def test_is_refused_and_left_as_it_was(self, tmp_path, application_id):
        before = foreign_database(tmp_path, application_id)
        refused = pytest.raises(UntrustedCacheError, match="not a feature cache of sktransfer")
        with refused:
            cache_info(tmp_path)
        with refused:
            clear_cache(tmp_path)
        with refused:
            DiskStore(tmp_path).put_many(["a"], np.ones((1, 2)))
        with refused:
            DiskStore(tmp_path).get_many(["k1"])
        assert (tmp_path / DATABASE_NAME).read_bytes() == before
        assert [path.name for path in tmp_path.iterdir()] == [DATABASE_NAME]

    def test_is_refused_read_only_too(self, shared_tmp):
        before = foreign_database(shared_tmp)
        with unable_to_write(shared_tmp), pytest.raises(UntrustedCacheError):
            DiskStore(shared_tmp).get_many(["a"])
        assert (shared_tmp / DATABASE_NAME).read_bytes() == before

    def test_a_store_created_between_two_reads_is_not_taken_for_foreign(self, tmp_path):
        # Another process creates the store just after this one has read the empty header:
        # the CI failure of test_two_processes_write_at_once, made to happen every time.
        path = tmp_path / DATABASE_NAME
        other = {}

        class Interleaved(sqlite3.Connection):
            def execute(self, sql, *args):
                # After the header's two reads, before the tables are listed.
                if "type = 'table'" in sql and not other:
                    other["writer"] = sqlite3.connect(path, timeout=0.1, isolation_level=None)
                    try:
                        ensure_schema(other["writer"], path)
                        other["outcome"] = "committed"
                    except sqlite3.OperationalError as exc:  # held off by this reader
                        other["outcome"] = str(exc)
                return super().execute(sql, *args)

        db = sqlite3.connect(path, isolation_level=None, factory=Interleaved)
        try:
            ensure_schema(db, path)
            assert identify(db, path) == "ours"
        finally:
            db.close()
            other["writer"].close()
        assert other["outcome"] == "database is locked"

    def test_a_store_of_the_previous_version_is_adopted_and_marked(self, tmp_path):
        keys, rows = fill(tmp_path)
        with raw_database(tmp_path) as db:  # as the version before application ids wrote it
            db.execute("DROP TABLE models")
            db.execute("PRAGMA application_id = 0")
        found = DiskStore(tmp_path).get_many(keys[:3])
        for row, expected in zip(found, rows):
            assert_bitwise_equal(row, expected)
        with raw_database(tmp_path) as db:
            assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
            assert db.execute("SELECT count(*) FROM models").fetchone()[0] == 0


class TestDiskPermissions:
    def test_new_directory_and_database_are_private(self, tmp_path):
        old_umask = os.umask(0o002)  # a permissive umask must not widen them
        try:
            directory = tmp_path / "nested" / "cache"
            DiskStore(directory).put_many(["a"], np.zeros((1, 2)))
        finally:
            os.umask(old_umask)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in (DATABASE_NAME, f"{DATABASE_NAME}-wal"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600

    def test_constructing_touches_nothing(self, tmp_path):
        DiskStore(tmp_path / "later")
        assert not (tmp_path / "later").exists()

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
    @pytest.mark.parametrize("given_away", ["folder", "database"])
    def test_a_cache_of_another_user_is_refused(self, tmp_path, given_away):
        directory = tmp_path / "cache"
        fill(directory, n_rows=2)
        before = (directory / DATABASE_NAME).read_bytes()
        os.chown(directory if given_away == "folder" else directory / DATABASE_NAME, 12345, -1)
        with pytest.raises(
            UntrustedCacheError, match=f"{given_away} .* belongs to uid 12345.*chown"
        ):
            DiskStore(directory).get_many(["k0"])
        with pytest.raises(UntrustedCacheError):
            clear_cache(directory)
        assert (directory / DATABASE_NAME).read_bytes() == before

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
    @pytest.mark.parametrize(
        ("mode", "group", "who"),
        [(0o777, 0, "other users"), (0o775, 65534, "group nogroup")],
        ids=["world-writable", "shared-group"],
    )
    def test_a_folder_others_may_write_is_refused(self, tmp_path, mode, group, who):
        directory = tmp_path / "cache"
        directory.mkdir()
        os.chown(directory, -1, group)
        directory.chmod(mode)
        with pytest.raises(UntrustedCacheError, match=f"writable by {who}.*chmod go-w"):
            DiskStore(directory).put_many(["a"], np.ones((1, 2)))
        assert not list(directory.iterdir())

    def test_the_owners_private_group_may_write(self, tmp_path):
        if not _private_group(os.getegid(), os.geteuid()):
            pytest.skip("this user has no private group")
        tmp_path.chmod(0o770)  # umask 002, as Debian and Ubuntu give their users
        DiskStore(tmp_path).put_many(["a"], np.ones((1, 2)))
        assert_bitwise_equal(DiskStore(tmp_path).get_many(["a"])[0], np.ones(2))


#: POSIX access ACLs as ``setfacl -m ENTRY`` writes them on a folder of mode 0755
#: (bytes read back with os.getxattr), for where setfacl is not installed.
ACL_BYTES = {
    "u:12345:rwx": "0200000001000700ffffffff020007003930000004000500ffffffff"
    "10000700ffffffff20000500ffffffff",
    "g:65534:rwx": "0200000001000700ffffffff04000500ffffffff08000700feff0000"
    "10000700ffffffff20000500ffffffff",
}


def grant(path, entry):
    """Add the ACL entry ``entry`` to ``path``: with setfacl, else as the bytes it writes."""
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-m", entry, os.fspath(path)], check=True)
        return
    try:
        os.setxattr(path, "system.posix_acl_access", bytes.fromhex(ACL_BYTES[entry]))
    except OSError as exc:
        pytest.skip(f"this file system takes no POSIX ACLs ({exc})")


@pytest.mark.skipif(not hasattr(os, "setxattr"), reason="POSIX ACLs are Linux's here")
class TestDiskAcl:
    """A POSIX ACL can let others write where the mode bits look private."""

    @pytest.mark.parametrize(
        ("entry", "who"),
        [("u:12345:rwx", "user uid 12345"), ("g:65534:rwx", "group nogroup")],
        ids=["named-user", "named-group"],
    )
    def test_a_folder_an_acl_lets_others_write_is_refused(self, shared_tmp, entry, who):
        directory = shared_tmp / "cache"
        directory.mkdir()
        grant(directory, entry)
        directory.chmod(0o770)  # drwxrwx---+: the group bits are the ACL's mask
        if os.geteuid() == 0 and entry.startswith("u:"):
            os.seteuid(12345)
            try:  # the grant is real: that user can plant a file there
                (directory / f"{DATABASE_NAME}-wal").write_bytes(b"planted")
            finally:
                os.seteuid(0)
            (directory / f"{DATABASE_NAME}-wal").unlink()
        match = f"writable by {who}, by its ACL .*setfacl -b '{directory}'"
        with pytest.raises(UntrustedCacheError, match=match):
            DiskStore(directory).put_many(["a"], np.ones((1, 2)))
        assert not list(directory.iterdir())

    def test_a_database_an_acl_lets_others_write_is_refused(self, tmp_path):
        fill(tmp_path, n_rows=2)
        grant(tmp_path / DATABASE_NAME, "u:12345:rwx")
        with pytest.raises(UntrustedCacheError, match="database .* writable by user uid 12345"):
            DiskStore(tmp_path).get_many(["k0"])

    def test_an_acl_whose_mask_forbids_writing_is_private(self, tmp_path):
        grant(tmp_path, "u:12345:rwx")
        tmp_path.chmod(0o750)  # the mask becomes r-x: the named user may read, not write
        DiskStore(tmp_path).put_many(["a"], np.ones((1, 2)))
        assert_bitwise_equal(DiskStore(tmp_path).get_many(["a"])[0], np.ones(2))


class TestDiskWriteAheadLog:
    """SQLite replays a -wal file into the database: it must be the owner's alone."""

    def planted_wal(self, directory, tmp_path):
        """A -wal file that makes key k0 read as [7, 7], written through a copy of the store."""
        copy = tmp_path / "copy"
        shutil.copytree(directory, copy)
        store = DiskStore(copy)
        store._run(lambda db: db.execute("PRAGMA wal_autocheckpoint=0"))
        store.put_many(["k0"], np.full((1, 2), 7.0))
        wal = (copy / f"{DATABASE_NAME}-wal").read_bytes()
        store.close()
        return wal

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
    def test_a_wal_file_of_another_user_is_refused(self, tmp_path):
        directory = tmp_path / "cache"
        fill(directory, n_rows=2, dim=2)
        wal = directory / f"{DATABASE_NAME}-wal"
        wal.write_bytes(self.planted_wal(directory, tmp_path))
        os.chown(wal, 12345, 12345)
        with pytest.raises(UntrustedCacheError, match="-wal file .* belongs to uid 12345"):
            DiskStore(directory).get_many(["k0"])
        wal.unlink()
        assert DiskStore(directory).get_many(["k0"])[0].tolist() != [7.0, 7.0]

    @pytest.mark.parametrize("suffix", ["-wal", "-shm"])
    def test_a_wal_or_shm_file_others_may_write_is_refused(self, tmp_path, suffix):
        directory = tmp_path / "cache"
        fill(directory, n_rows=2, dim=2)
        path = directory / f"{DATABASE_NAME}{suffix}"
        path.write_bytes(self.planted_wal(directory, tmp_path) if suffix == "-wal" else b"")
        path.chmod(0o666)
        with pytest.raises(UntrustedCacheError, match=f"{suffix} file .* by other users"):
            DiskStore(directory).get_many(["k0"])

    def test_the_owners_own_wal_file_is_replayed(self, tmp_path):
        """What the checks guard against is real: SQLite applies a -wal file it finds."""
        directory = tmp_path / "cache"
        fill(directory, n_rows=2, dim=2)
        wal = directory / f"{DATABASE_NAME}-wal"
        wal.write_bytes(self.planted_wal(directory, tmp_path))
        wal.chmod(0o600)
        assert DiskStore(directory).get_many(["k0"])[0].tolist() == [7.0, 7.0]


class TestPrivateGroupWhereUsersAreNotAllListed:
    """With LDAP or SSSD, who else has a group cannot be known: group write is refused."""

    @pytest.fixture
    def private_group(self):
        if not _private_group(os.getegid(), os.geteuid()):
            pytest.skip("this user has no private group")

    def nsswitch(self, tmp_path, monkeypatch, sources):
        conf = tmp_path / "nsswitch.conf"
        conf.write_text(
            f"# a comment: passwd: ldap\npasswd:  {sources}\ngroup:   {sources}\nhosts: dns\n"
        )
        monkeypatch.setattr(trust, "NSSWITCH", conf)

    def test_group_write_is_refused_when_users_come_from_sssd(
        self, tmp_path, monkeypatch, private_group
    ):
        self.nsswitch(tmp_path, monkeypatch, "files [NOTFOUND=return] sss")
        directory = tmp_path / "cache"
        directory.mkdir(mode=0o770)
        directory.chmod(0o770)
        with pytest.raises(UntrustedCacheError, match=r"users also come from sss.*chmod go-w"):
            DiskStore(directory).put_many(["a"], np.ones((1, 2)))

    def test_local_and_systemd_users_are_all_listed(self, tmp_path, monkeypatch, private_group):
        self.nsswitch(tmp_path, monkeypatch, "files systemd")
        directory = tmp_path / "cache"
        directory.mkdir()
        directory.chmod(0o770)
        DiskStore(directory).put_many(["a"], np.ones((1, 2)))


class TestDiskLinks:
    def test_a_dangling_link_names_the_cache_and_where_it_leads(self, tmp_path):
        target = tmp_path / "unmounted" / "features.sqlite"
        (tmp_path / DATABASE_NAME).symlink_to(target)
        match = f"cache '{tmp_path}' holds {DATABASE_NAME} as a symbolic link to '{target}'"
        with pytest.raises(FileNotFoundError, match=match):
            DiskStore(tmp_path).get_many(["a"])
        assert not target.parent.exists()  # nothing created where the link points

    def test_a_link_to_a_database_elsewhere_is_used(self, tmp_path):
        fill(tmp_path / "elsewhere", n_rows=2, dim=2)
        (tmp_path / "cache").mkdir(mode=0o700)
        (tmp_path / "cache" / DATABASE_NAME).symlink_to(tmp_path / "elsewhere" / DATABASE_NAME)
        assert DiskStore(tmp_path / "cache").get_many(["k0"])[0] is not None

    def test_a_link_into_a_folder_others_may_write_is_refused(self, tmp_path):
        fill(tmp_path / "shared", n_rows=2, dim=2)
        (tmp_path / "shared").chmod(0o777)  # others could plant a -wal beside the database
        (tmp_path / "cache").mkdir(mode=0o700)
        (tmp_path / "cache" / DATABASE_NAME).symlink_to(tmp_path / "shared" / DATABASE_NAME)
        with pytest.raises(UntrustedCacheError, match="shared' is writable by other users"):
            DiskStore(tmp_path / "cache").get_many(["k0"])


class TestDiskReadOnly:
    """A store this process cannot write serves what it holds and warns once."""

    @pytest.mark.parametrize("owner", ["root", "reader"])
    def test_serves_what_it_holds_computes_the_rest_and_warns_once(self, shared_tmp, owner):
        """Whether root prepared it for everyone, or it is the reader's own, made read-only."""
        directory = shared_tmp / "cache"
        directory.mkdir(mode=0o755)
        writer = DiskStore(directory)
        writer.put_many(["a", "b"], np.arange(8, dtype=np.float32).reshape(2, 4))
        writer.close()  # SQLite removes -wal and -shm: only the database file is left
        if owner == "reader" and os.geteuid() == 0:
            for path in (directory, directory / DATABASE_NAME):
                os.chown(path, 65534, 65534)  # unable_to_write reads as nobody
        with unable_to_write(directory), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(PermissionError):  # the directory really refuses writes
                (directory / "probe").touch()
            store = DiskStore(directory)
            for _ in range(3):
                found = store.get_many(["a", "missing", "b"])
                store.put_many(["c"], np.ones((1, 4)))
            assert len(store) == 2
            store.close()
        assert_bitwise_equal(found[0], np.arange(4))
        assert found[1] is None
        assert_bitwise_equal(found[2], np.arange(4, 8))
        messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
        assert len(messages) == 1 and "read-only" in messages[0], messages
        assert set(raw_rows(directory)) == {"a", "b"}

    def test_without_a_database_every_lookup_misses(self, shared_tmp):
        directory = shared_tmp / "empty"
        directory.mkdir(mode=0o755)
        with unable_to_write(directory), pytest.warns(CacheWarning, match="cannot create"):
            store = DiskStore(directory)
            assert store.get_many(["a"]) == [None]
            store.put_many(["a"], np.ones((1, 4)))
            assert len(store) == 0


class TestDiskPaths:
    def test_a_file_is_not_a_cache_directory(self, tmp_path):
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(NotADirectoryError, match="must be a directory.*notes.txt' is a file"):
            resolve_store(tmp_path / "notes.txt")
        DiskStore(tmp_path).put_many(["a"], np.ones((1, 2)))
        with pytest.raises(NotADirectoryError, match="did you mean its folder"):
            resolve_store(tmp_path / DATABASE_NAME)
        with pytest.raises(NotADirectoryError):
            DiskStore(tmp_path / "notes.txt").get_many(["a"])
        assert (tmp_path / "notes.txt").read_text() == "mine"

    def test_empty_string_is_refused(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ValueError, match="cache='' names no directory"):
            resolve_store("")
        assert not list(tmp_path.iterdir())

    def test_one_store_and_connection_per_directory(self, tmp_path):
        store = resolve_store(tmp_path)
        assert resolve_store(str(tmp_path)) is store
        assert resolve_store(tmp_path / "other") is not store
        store.put_many(["a"], np.ones((1, 2)))
        open_files = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            assert resolve_store(tmp_path).get_many(["a"])[0] is not None
        assert len(os.listdir("/proc/self/fd")) <= open_files + 2

    def test_shared_store_follows_a_deleted_or_rebuilt_database(self, tmp_path):
        directory = tmp_path / "cache"
        resolve_store(directory).put_many(["a"], np.ones((1, 2)))
        shutil.rmtree(directory)
        resolve_store(directory).put_many(["b"], np.ones((1, 2)))
        assert DiskStore(directory).get_many(["a", "b"])[1] is not None


class TestCacheInfoAndClear:
    def test_memory(self):
        clear_cache("memory")
        assert cache_info() == CacheInfo(0, 0)
        default_memory_store().put_many(["info-a", "info-b"], np.zeros((2, 8)))
        assert cache_info("memory") == CacheInfo(entries=2, nbytes=64)
        clear_cache()
        assert cache_info("memory") == (0, 0)

    def test_disk(self, tmp_path):
        DiskStore(tmp_path).put_many(["a", "b", "c"], np.zeros((3, 8)))
        info = cache_info(tmp_path)
        assert info.entries == 3
        assert info.nbytes == sum(
            (tmp_path / name).stat().st_size
            for name in (DATABASE_NAME, f"{DATABASE_NAME}-wal")
            if (tmp_path / name).exists()
        )
        clear_cache(str(tmp_path))
        assert cache_info(str(tmp_path)).entries == 0

    def test_looking_at_a_missing_disk_cache_creates_nothing(self, tmp_path):
        missing = tmp_path / "missing"
        assert cache_info(missing) == (0, 0)
        clear_cache(missing)
        assert not missing.exists()

    def test_none_is_no_cache(self):
        assert resolve_store(None) is None
        assert cache_info(None) == (0, 0)
        clear_cache(None)

    def test_resolve_store(self, tmp_path):
        store = resolve_store(tmp_path)
        assert isinstance(store, DiskStore) and store.directory == tmp_path
        assert resolve_store(store) is store
        assert resolve_store("~/x").directory == Path.home() / "x"
        with pytest.raises(TypeError, match="cache"):
            resolve_store(3)
