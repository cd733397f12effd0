"""Feature cache: a process-wide memory LRU and an optional on-disk SQLite store.

A frozen backbone is a fixed function, so an image's features need computing
once. Each feature vector is stored under :func:`feature_key`, which joins the
identity of the backbone (weights, preprocessing, precision) with
:func:`content_hash` of the image's bytes or pixels. Both stores share one
interface: ``get_many(keys)``, ``put_many(keys, rows)``, ``clear()``,
``len(store)`` and ``nbytes``. Nothing is pickled: a stored feature is its
float32 bytes, little-endian.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import operator
import os
import sqlite3
import stat
import sys
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: Bound of the process-wide memory store unless :func:`set_memory_limit` changes it.
DEFAULT_MEMORY_BYTES = 1 << 30

#: File name of the on-disk store inside its directory.
DATABASE_NAME = "features.sqlite"
# Where engine="onnxruntime" keeps its exported models, beside the database.
ENGINES_FOLDER = "onnx"

# Bump when hashing or key layout changes, so older entries can never match.
_CONTENT_VERSION = b"sktransfer-content-1\0"
_KEY_VERSION = "sktransfer-feature-1"
_SCHEMA_VERSION = 1
_FILE_CHUNK_BYTES = 1 << 20
_EXIF_ORIENTATION = 0x0112
_KEYS_PER_QUERY = 500  # well under SQLite's limit on bound parameters
_BUSY_TIMEOUT_S = 30.0
_BUSY_RETRY_DELAYS_S = (0.05, 0.2, 1.0, None)  # None: give up
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN = 3, 8, 14
_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
_OPEN_DISK_STORES = 8  # resolve_store keeps this many open, most recently used
_FEATURE_DTYPE = np.dtype("<f4")
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS features (
    key TEXT PRIMARY KEY,
    dim INTEGER NOT NULL,
    data BLOB NOT NULL,
    checksum BLOB NOT NULL
)
"""

# Connections opened before a fork(); SQLite forbids the child to use or even close them.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class CacheWarning(UserWarning):
    """The feature cache could not be used as expected; features are computed anyway."""


class CacheInfo(NamedTuple):
    """How much a feature cache holds.

    Attributes
    ----------
    entries : int
        Number of stored feature vectors.
    nbytes : int
        Memory store: bytes of the stored vectors. Disk store: bytes of its
        database files on disk.
    """

    entries: int
    nbytes: int


class _NoContent(Exception):
    """A sample whose content cannot be read, so it has no cache key."""


class _UnusableDatabase(sqlite3.DatabaseError):
    """The database file is corrupt or foreign and must be rebuilt."""


# ---------------------------------------------------------------- keys


def content_hash(item) -> str | None:
    """Hex sha256 of one image sample's content, or None when it cannot be read.

    Parameters
    ----------
    item : str, os.PathLike, bytes, PIL.Image.Image, ndarray or torch.Tensor
        One sample, as :class:`~sktransfer._images.ImageCollection` holds it.

    Returns
    -------
    digest : str or None
        64 hex digits. A file hashes its bytes, so a renamed or copied file
        hits and a changed byte misses; encoded ``bytes`` hash as the file
        holding them would; an array or tensor hashes its dtype,
        shape and pixels in C order, however it is laid out in memory; a PIL
        image hashes its mode, size, palette, transparency, EXIF orientation
        and pixels. The kind of sample is hashed too, because a tensor
        (C, H, W) decodes differently from an array with the same bytes.
        None when the sample has no readable content: a missing file, a
        directory or other non-regular file, an object array, a tensor that
        numpy cannot hold, an unsupported type. The caller computes such
        samples without the cache, and decoding then reports what is wrong
        through the usual bad-input path.
    """
    digest = hashlib.sha256(_CONTENT_VERSION)
    try:
        _hash_sample(digest, item)
    except _NoContent:
        return None
    return digest.hexdigest()


def feature_key(model_key: str, content: str) -> str:
    """Key of one feature vector: which function computed it, on which content.

    Parameters
    ----------
    model_key : str
        Identity of the feature function, e.g. ``BackboneSpec.key`` plus the
        precision; two functions that may give different features must have
        different keys.
    content : str
        :func:`content_hash` of the image.

    Returns
    -------
    key : str
        64 hex digits (sha256), so keys have one length however long
        ``model_key`` is.
    """
    return hashlib.sha256(f"{_KEY_VERSION}\0{model_key}\0{content}".encode()).hexdigest()


def _hash_sample(digest, item) -> None:
    if isinstance(item, str | os.PathLike):
        digest.update(b"file\0")
        _hash_file(digest, item)
    elif isinstance(item, bytes):  # an encoded file's content, read or received
        digest.update(b"file\0")
        digest.update(item)
    elif isinstance(item, np.ndarray):
        _hash_array(digest, "array", item)
    elif _is_instance(item, "PIL.Image", "Image"):
        _hash_pil_image(digest, item)
    elif _is_instance(item, "torch", "Tensor"):
        try:
            array = item.detach().cpu().numpy()
        except (TypeError, RuntimeError):  # bfloat16, sparse, ...: numpy cannot hold it
            raise _NoContent from None
        _hash_array(digest, "tensor", array)
    else:
        raise _NoContent


def _is_instance(item, module_name: str, class_name: str) -> bool:
    # A module that was never imported cannot have made the item; do not import it.
    cls = getattr(sys.modules.get(module_name), class_name, None)
    return cls is not None and isinstance(item, cls)


def _hash_file(digest, path) -> None:
    try:
        # Reading a FIFO or device could block forever; only regular files have content.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _NoContent
        with open(path, "rb") as file:
            while chunk := file.read(_FILE_CHUNK_BYTES):
                digest.update(chunk)
    except OSError:
        raise _NoContent from None


def _hash_array(digest, kind: str, array: np.ndarray) -> None:
    if array.dtype.hasobject:  # its bytes are pointers, not pixels
        raise _NoContent
    digest.update(f"{kind}\0{array.dtype.str}\0{array.shape}\0".encode())
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _hash_pil_image(digest, image) -> None:
    try:
        pixels = image.tobytes()  # loads a lazily opened file first
    except (OSError, ValueError):
        raise _NoContent from None
    palette = image.getpalette(rawmode=None)
    header = (image.mode, image.size, image.info.get("transparency"), palette is not None)
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation != 1:  # decoding turns the image upright; unrotated images keep their keys
        header += (f"orientation={orientation}",)
    digest.update(f"pil\0{header!r}\0".encode())
    if palette is not None:
        digest.update(bytes(palette))
    digest.update(pixels)


def _as_rows(keys, rows) -> tuple[list[str], np.ndarray]:
    keys = list(keys)
    if not all(isinstance(key, str) for key in keys):
        raise TypeError("feature cache keys must be str")
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] != len(keys):
        raise ValueError(
            f"expected rows of shape ({len(keys)}, n_features) for {len(keys)} keys; "
            f"got {rows.shape}"
        )
    return keys, rows


# ---------------------------------------------------------------- memory


class MemoryStore:
    """Thread-safe LRU of float32 feature vectors, bounded in bytes.

    Parameters
    ----------
    max_bytes : int
        Bound on the bytes of the stored vectors (their ``nbytes``; keys and
        Python objects are not counted). When a ``put_many`` goes over it,
        the least recently used vectors are evicted; a vector larger than the
        bound is not stored.

    Notes
    -----
    Returned vectors are the stored ones, made read-only; copy before
    modifying.
    """

    def __init__(self, max_bytes: int):
        self._lock = threading.Lock()
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()  # least recently used first
        self._nbytes = 0
        self.max_bytes = max_bytes

    @property
    def max_bytes(self) -> int:
        """Bound on the stored bytes; lowering it evicts at once."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        value = operator.index(value)
        if value < 0:
            raise ValueError(f"max_bytes must be >= 0, got {value}")
        with self._lock:
            self._max_bytes = value
            self._evict()

    @property
    def nbytes(self) -> int:
        """Bytes of the stored vectors."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"MemoryStore(max_bytes={self._max_bytes})"

    def get_many(self, keys) -> list[np.ndarray | None]:
        """Stored vectors of ``keys`` (None where absent); hits become most recent.

        Parameters
        ----------
        keys : iterable of str

        Returns
        -------
        rows : list of ndarray or None
            One read-only 1-D float32 array or None per key, in order.
        """
        found = []
        with self._lock:
            for key in keys:
                row = self._rows.get(key)
                if row is not None:
                    self._rows.move_to_end(key)
                found.append(row)
        return found

    def put_many(self, keys, rows) -> None:
        """Store ``rows[i]`` under ``keys[i]``, then evict down to the bound.

        Parameters
        ----------
        keys : sequence of str
        rows : array-like of shape (len(keys), n_features)
            Converted to float32 and copied.
        """
        keys, rows = _as_rows(keys, rows)
        with self._lock:
            for key, row in zip(keys, rows):
                if row.nbytes > self._max_bytes:
                    continue
                # Copy, so that a stored row does not keep the caller's whole batch alive.
                row = row.copy()
                row.flags.writeable = False
                old = self._rows.pop(key, None)
                self._nbytes += row.nbytes - (0 if old is None else old.nbytes)
                self._rows[key] = row
            self._evict()

    def clear(self) -> None:
        """Remove every vector."""
        with self._lock:
            self._rows.clear()
            self._nbytes = 0

    def _evict(self) -> None:
        while self._nbytes > self._max_bytes:
            _, row = self._rows.popitem(last=False)
            self._nbytes -= row.nbytes

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()


_DEFAULT_MEMORY_STORE = MemoryStore(DEFAULT_MEMORY_BYTES)
# A thread holding the lock at fork() would leave it locked forever in the child.
os.register_at_fork(after_in_child=_DEFAULT_MEMORY_STORE._reset_lock)


def default_memory_store() -> MemoryStore:
    """The process-wide memory store, shared by every estimator in the process.

    Returns
    -------
    store : MemoryStore
        Bounded by :data:`DEFAULT_MEMORY_BYTES` (1 GiB) unless
        :func:`set_memory_limit` changed it.
    """
    return _DEFAULT_MEMORY_STORE


def set_memory_limit(max_bytes: int) -> None:
    """Bound the process-wide memory store; lowering the bound evicts at once.

    Parameters
    ----------
    max_bytes : int
        Bytes of feature vectors to keep; 0 keeps none.
    """
    _DEFAULT_MEMORY_STORE.max_bytes = max_bytes


# ---------------------------------------------------------------- disk


class DiskStore:
    """Feature vectors in a SQLite database, shared by processes and sessions.

    The database is ``directory/features.sqlite``, in WAL mode, one row per
    vector: its key, length, raw float32 bytes and a sha256 checksum of all
    three. Each ``put_many`` is one transaction, so a killed writer loses at
    most the batch in flight. Processes may read and write at once: writers
    wait for each other (and retry when SQLite reports the file busy).

    Parameters
    ----------
    directory : str or os.PathLike
        ``~`` is expanded. Created on first use when missing, with mode
        0o700 (its owner only); the database file is created with mode 0o600,
        which SQLite gives its ``-wal`` and ``-shm`` files too.

    Notes
    -----
    A database that SQLite finds corrupt (garbage, truncated) or that has
    another schema version is moved aside to ``features.sqlite.corrupt``
    with a :class:`CacheWarning`, and an empty one replaces it. A row whose
    length or checksum is wrong is a miss and is deleted. So the store never
    returns wrong features; at worst it computes them again.

    A directory or database this process cannot write (a read-only file
    system, a shared cache owned by someone else) is opened read-only: the
    store serves the features it holds, the rest are computed and not
    stored, and one :class:`CacheWarning` says so. Without a database to
    read, every lookup is a miss.

    ``get_many`` and ``put_many`` turn SQLite's other operational errors
    (disk full, still busy after retries) into a :class:`CacheWarning` (once
    per kind and store) and a miss or a skipped write, since the features can
    always be computed; ``len`` and ``clear`` raise them. A ``directory``
    that is a file raises :class:`NotADirectoryError`, and a database still
    unusable after one rebuild raises :class:`sqlite3.DatabaseError`.

    The connection is opened lazily, once per process and store, shared by
    the process's threads and never used across ``fork()``;
    :func:`resolve_store` hands out one store per directory, so repeated
    ``transform`` calls reuse it. Pickling keeps only the directory, so a
    store travels to joblib workers in a few bytes.
    """

    def __init__(self, directory):
        self.directory = Path(directory).expanduser()
        self.path = self.directory / DATABASE_NAME
        self._start_process()

    def _start_process(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._read_only = False
        self._unavailable = False  # nothing to read: no database, or none this process can open
        self._warned: set[str] = set()

    def __getstate__(self) -> dict:
        return {"directory": os.fspath(self.directory)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def __repr__(self) -> str:
        return f"DiskStore({os.fspath(self.directory)!r})"

    @property
    def nbytes(self) -> int:
        """Bytes of the database files on disk (database and write-ahead log)."""
        total = 0
        for path in (self.path, Path(f"{self.path}-wal")):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def __len__(self) -> int:
        count = self._run(lambda db: db.execute("SELECT count(*) FROM features").fetchone())
        return 0 if count is None else count[0]

    def get_many(self, keys) -> list[np.ndarray | None]:
        """Stored vectors of ``keys``; None where absent, damaged or unreadable.

        Parameters
        ----------
        keys : iterable of str

        Returns
        -------
        rows : list of ndarray or None
            One 1-D float32 array (read-only) or None per key, in order.
        """
        keys = list(keys)
        try:
            found, damaged = self._run(
                lambda db: _select(db, keys, delete_damaged=not self._read_only), ({}, 0)
            )
        except sqlite3.OperationalError as exc:
            self._warn_once(
                "read", f"could not read the feature cache {self.path} ({exc}); computing features"
            )
            return [None] * len(keys)
        if damaged and self._read_only:
            self._warn_once(
                "damaged",
                f"the read-only feature cache {self.path} has damaged rows; their features "
                "are computed again",
            )
        elif damaged:
            warnings.warn(
                f"{damaged} damaged row(s) in the feature cache {self.path} were deleted; "
                "their features are computed again",
                CacheWarning,
                stacklevel=2,
            )
        return [found.get(key) for key in keys]

    def put_many(self, keys, rows) -> None:
        """Store ``rows[i]`` under ``keys[i]`` in one transaction, replacing old rows.

        Parameters
        ----------
        keys : sequence of str
        rows : array-like of shape (len(keys), n_features)
            Stored as float32.
        """
        keys, rows = _as_rows(keys, rows)
        rows = rows.astype(_FEATURE_DTYPE, copy=False)
        dim = rows.shape[1]
        records = []
        for key, row in zip(keys, rows):
            data = row.tobytes()
            records.append((key, dim, data, _checksum(key, dim, data)))
        if not records:
            return
        try:
            self._run(lambda db: None if self._read_only else _insert(db, records))
        except sqlite3.OperationalError as exc:
            self._warn_once(
                "write", f"could not write to the feature cache {self.path} ({exc}); not cached"
            )

    def clear(self) -> None:
        """Delete every vector and give the space back to the file system."""

        def delete_all(db):
            with _write_transaction(db):
                db.execute("DELETE FROM features")
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        self._run(delete_all)

    def close(self) -> None:
        """Close this process's connection; the next call opens a new one."""
        self._forget_inherited_connection()
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _forget_inherited_connection(self) -> None:
        if self._pid != os.getpid():
            if self._connection is not None:
                _INHERITED_CONNECTIONS.append(self._connection)
            self._start_process()

    def _warn_once(self, kind: str, message: str) -> None:
        # Every transform meets the same read-only or full disk; one warning says it.
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, CacheWarning, stacklevel=4)

    def _run(self, operation, default=None):
        """``operation(connection)`` under the lock; a corrupt file is rebuilt once.

        ``default`` when there is no database this process can read.
        """
        self._forget_inherited_connection()
        with self._lock:
            try:
                return self._run_retrying_busy(operation, default)
            except _UnusableDatabase as exc:
                self._rebuild(str(exc))
            return self._run_retrying_busy(operation, default)

    def _run_retrying_busy(self, operation, default):
        for delay in _BUSY_RETRY_DELAYS_S:
            try:
                connection = self._connect()
                return default if connection is None else operation(connection)
            except _UnusableDatabase:
                raise
            except sqlite3.DatabaseError as exc:
                code = _error_code(exc)
                if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                    raise _UnusableDatabase(f"corrupt: {exc}") from exc
                if code not in (_SQLITE_BUSY, _SQLITE_LOCKED) or delay is None:
                    raise
            time.sleep(delay)

    def _connect(self) -> sqlite3.Connection | None:
        """This process's connection; None when there is no database it can read."""
        if self._unavailable:
            return None
        if self._connection is not None:
            if self._read_only or not self._replaced():
                return self._connection
            self._connection.close()
            self._connection = None
        _check_directory(self.directory)
        try:
            self._connection = self._open_for_writing()
        except (OSError, sqlite3.OperationalError) as exc:
            if not _denies_writing(exc):
                raise
            self._connection = self._open_read_only(exc)
        return self._connection

    def _replaced(self) -> bool:
        """Whether the database file was moved aside or deleted since it was opened."""
        # The connection lives as long as the process; another process may have rebuilt
        # the file, or a user deleted the folder, and new rows must go where others look.
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def _open_for_writing(self) -> sqlite3.Connection:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        connection = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            self._inode = os.stat(self.path).st_ino
            connection.execute("PRAGMA journal_mode=WAL")
            # In WAL mode, NORMAL survives a killed process; only power loss may drop commits.
            connection.execute("PRAGMA synchronous=NORMAL")
            _ensure_schema(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _open_read_only(self, reason: Exception) -> sqlite3.Connection | None:
        """Serve what a store this process cannot write holds; None if there is nothing."""
        self._read_only = True
        if not self.path.is_file():
            self._unavailable = True
            self._warn_once(
                "read-only",
                f"cannot create the feature cache {self.path} ({reason}); features are "
                "computed and not stored",
            )
            return None
        uri = self.path.absolute().as_uri()
        # A WAL database opens read-only only if its -shm file can be made; where the
        # directory forbids that, immutable reads the database file alone.
        for query in ("mode=ro", "mode=ro&immutable=1"):
            connection = sqlite3.connect(
                f"{uri}?{query}",
                uri=True,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                version = connection.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                connection.close()
                problem = exc
                continue
            if version == _SCHEMA_VERSION:
                self._warn_once(
                    "read-only",
                    f"the feature cache {self.path} is read-only here ({reason}); serving the "
                    "features it holds, computing the rest without storing them",
                )
                return connection
            connection.close()
            problem = f"schema version {version}, not {_SCHEMA_VERSION}"
            break
        self._unavailable = True
        self._warn_once(
            "read-only",
            f"cannot use the read-only feature cache {self.path} ({problem}); features are "
            "computed and not stored",
        )
        return None

    def _rebuild(self, reason: str) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        aside = self.path.with_name(DATABASE_NAME + ".corrupt")
        with contextlib.suppress(FileNotFoundError):
            # Another process that found the same damage may have replaced the file already.
            if os.stat(self.path).st_ino == self._inode:
                os.replace(self.path, aside)
                # A write-ahead log of the old file would be replayed into the new one.
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        warnings.warn(
            f"the feature cache {self.path} was unusable ({reason}); started an empty one "
            f"and kept the old file as {aside}",
            CacheWarning,
            stacklevel=4,
        )


def _denies_writing(exc: Exception) -> bool:
    """Whether ``exc`` says this process may not write the store (but may read it)."""
    if isinstance(exc, OSError):
        return exc.errno in _READ_ONLY_ERRNOS
    return _error_code(exc) in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN)


def _check_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        hint = (
            f"; did you mean its folder, {os.fspath(directory.parent)!r}?"
            if directory.name == DATABASE_NAME
            else ""
        )
        raise NotADirectoryError(
            f"the feature cache must be a directory (it will hold {DATABASE_NAME}); "
            f"{os.fspath(directory)!r} is a file{hint}"
        )


def _error_code(exc: sqlite3.DatabaseError) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF  # primary code; extended codes add detail in the high bits
    # Python 3.10 raises exactly DatabaseError for SQLITE_CORRUPT and SQLITE_NOTADB only.
    if type(exc) is sqlite3.DatabaseError:
        return _SQLITE_CORRUPT
    message = str(exc)
    return _SQLITE_BUSY if "locked" in message or "busy" in message else None


def _ensure_schema(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == _SCHEMA_VERSION:
        return
    if version != 0:
        raise _UnusableDatabase(
            f"schema version {version}; this sktransfer uses version {_SCHEMA_VERSION}"
        )
    with _write_transaction(db):
        db.execute(_CREATE_TABLE)
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


@contextlib.contextmanager
def _write_transaction(db: sqlite3.Connection):
    # IMMEDIATE takes the write lock up front, so the busy timeout applies to it.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            # The original error says what went wrong; a failing rollback adds nothing.
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _checksum(key: str, dim: int, data: bytes) -> bytes:
    digest = hashlib.sha256(key.encode())
    digest.update(dim.to_bytes(8, "little"))
    digest.update(data)
    return digest.digest()


def _is_intact(key, dim, data, checksum) -> bool:
    # SQLite columns are loosely typed; a damaged row may hold anything.
    return (
        isinstance(dim, int)
        and isinstance(data, bytes)
        and dim >= 0
        and len(data) == dim * _FEATURE_DTYPE.itemsize
        and checksum == _checksum(key, dim, data)
    )


def _select(
    db: sqlite3.Connection, keys: list[str], delete_damaged: bool = True
) -> tuple[dict[str, np.ndarray], int]:
    """Intact rows of ``keys`` by key, and how many damaged rows were found (and deleted)."""
    found, damaged = {}, []
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), _KEYS_PER_QUERY):
        chunk = unique[start : start + _KEYS_PER_QUERY]
        query = (
            "SELECT key, dim, data, checksum FROM features "
            f"WHERE key IN ({','.join('?' * len(chunk))})"
        )
        for key, dim, data, checksum in db.execute(query, chunk):
            if _is_intact(key, dim, data, checksum):
                found[key] = np.frombuffer(data, _FEATURE_DTYPE).astype(np.float32, copy=False)
            else:
                damaged.append((key, checksum))
    if damaged and delete_damaged:
        with _write_transaction(db):
            # Match the checksum too, so a good row written meanwhile survives.
            db.executemany("DELETE FROM features WHERE key = ? AND checksum IS ?", damaged)
    return found, len(damaged)


def _insert(db: sqlite3.Connection, records: list[tuple]) -> None:
    with _write_transaction(db):
        db.executemany(
            "INSERT OR REPLACE INTO features (key, dim, data, checksum) VALUES (?, ?, ?, ?)",
            records,
        )


# ---------------------------------------------------------------- public API


def resolve_store(cache) -> MemoryStore | DiskStore | None:
    """The store that an estimator's ``cache`` parameter names.

    Parameters
    ----------
    cache : "memory", str, os.PathLike, MemoryStore, DiskStore or None
        ``"memory"``: the process-wide :func:`default_memory_store`; any
        other str or path: the process's :class:`DiskStore` for that
        directory, the same one every time, so its connection is reused
        (write ``"./memory"`` for a directory of that name); a store:
        itself; None: no cache.

    Returns
    -------
    store : MemoryStore, DiskStore or None

    Raises
    ------
    TypeError
        ``cache`` is none of the above.
    ValueError
        ``cache`` is the empty string.
    NotADirectoryError
        ``cache`` names a file.
    """
    if cache is None or isinstance(cache, MemoryStore | DiskStore):
        return cache
    if isinstance(cache, str) and cache == "memory":
        return _DEFAULT_MEMORY_STORE
    if isinstance(cache, str | os.PathLike):
        if not os.fspath(cache):
            raise ValueError(
                "cache='' names no directory; use 'memory', a directory path (such as '.') or None"
            )
        directory = Path(cache).expanduser()
        _check_directory(directory)
        return _shared_disk_store(directory)
    raise TypeError(f"cache must be 'memory', a directory path or None; got {type(cache).__name__}")


_DISK_STORES: OrderedDict[str, DiskStore] = OrderedDict()  # least recently used first
_DISK_STORES_LOCK = threading.Lock()


def _reset_disk_stores_lock() -> None:
    global _DISK_STORES_LOCK
    _DISK_STORES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_disk_stores_lock)


def _shared_disk_store(directory: Path) -> DiskStore:
    """One store per directory and process, so each keeps one open connection."""
    name = os.path.abspath(directory)
    with _DISK_STORES_LOCK:
        store = _DISK_STORES.get(name)
        if store is None:
            store = _DISK_STORES[name] = DiskStore(name)
        _DISK_STORES.move_to_end(name)
        evicted = []
        while len(_DISK_STORES) > _OPEN_DISK_STORES:
            evicted.append(_DISK_STORES.popitem(last=False)[1])
    for old in evicted:
        old.close()  # a caller still holding it reopens on its next call
    return store


def _existing(store):
    """``store``, or None for a disk store whose database does not exist yet."""
    if isinstance(store, DiskStore) and not store.path.exists():
        return None
    return store


def cache_info(cache="memory") -> CacheInfo:
    """How many feature vectors a cache holds, and how many bytes.

    Parameters
    ----------
    cache : "memory", str, os.PathLike or None, default="memory"
        As the ``cache`` parameter of
        :class:`~sktransfer.PretrainedFeaturizer`: ``"memory"`` for the
        process-wide memory cache, a directory for an on-disk cache, None
        for no cache. Looking creates nothing.

    Returns
    -------
    info : CacheInfo
        ``entries`` and ``nbytes``: bytes of the vectors in memory, or of the
        database files on disk. Zero for None or a directory without a cache.

    Examples
    --------
    >>> from sktransfer._cache import cache_info, clear_cache
    >>> clear_cache("memory")
    >>> cache_info("memory")
    CacheInfo(entries=0, nbytes=0)
    """
    store = _existing(resolve_store(cache))
    if store is None:
        return CacheInfo(0, 0)
    return CacheInfo(len(store), store.nbytes)


def clear_cache(cache="memory") -> None:
    """Remove every cached feature vector from a cache.

    Parameters
    ----------
    cache : "memory", str, os.PathLike or None, default="memory"
        As in :func:`cache_info`. A disk cache is emptied in one transaction
        (other processes may keep using it) and its file shrunk, and the
        models ``engine="onnxruntime"`` exported there are deleted (processes
        running one keep their loaded copy); None, or a directory without a
        cache, is left alone.
    """
    store = _existing(resolve_store(cache))
    if store is None:
        return
    store.clear()
    if isinstance(store, DiskStore):
        for model in (Path(store.directory) / ENGINES_FOLDER).glob("*.onnx"):
            model.unlink(missing_ok=True)
