"""The on-disk store: feature vectors in SQLite, shared by processes and sessions.

Nothing is pickled: a stored feature is its float32 bytes, little-endian,
with a checksum. Other arrays (the fine-tuner's decoded uint8 images) sit in
a table of their own as dtype, shape and raw bytes, with a checksum.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from .keys import as_arrays, as_rows
from .records import ARRAYS, FEATURES, Table, has_table
from .schema import UnusableDatabase, ensure_schema, identify, write_transaction
from .trust import check_private

#: File name of the on-disk store inside its directory.
DATABASE_NAME = "features.sqlite"
# Where engine="onnxruntime" keeps its exported models, beside the database.
ENGINES_FOLDER = "onnx"

_BUSY_TIMEOUT_S = 30.0
_BUSY_RETRY_DELAYS_S = (0.05, 0.2, 1.0, None)  # None: give up
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN = 3, 8, 14
_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)

# Connections opened before a fork(); SQLite forbids the child to use or even close them.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class CacheWarning(UserWarning):
    """The feature cache could not be used as expected; features are computed anyway."""


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
    The database is marked as ours by its SQLite application id and
    recognised by it and its tables. Any other SQLite file of that name is
    never read, changed or deleted: every call raises
    :class:`UntrustedCacheError`. A store written before the mark existed
    (our exact tables and version, application id 0) is adopted and marked.

    The directory, the database and its ``-wal`` and ``-shm`` files must
    belong to the current user (or to root) and be writable by their owner
    alone, by mode and POSIX ACL (or by the owner's private group, see
    :func:`~sktransfer._store.trust.check_private`), or every call raises
    :class:`UntrustedCacheError`: a store that others can write could serve
    features they planted. A database that is a symbolic link is followed
    (its folder is checked too); one that leads to no file raises
    :class:`FileNotFoundError`.

    A database that SQLite finds corrupt (garbage, truncated), or one of ours
    with another schema version, is moved aside to ``features.sqlite.corrupt``
    with a :class:`CacheWarning`, and an empty one replaces it. A row whose
    length or checksum is wrong is a miss and is deleted. So the store never
    returns wrong features; at worst it computes them again.

    A directory or database this process cannot write (a read-only file
    system, a cache that root prepared for everyone) is opened read-only: the
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
        """Stored feature vectors and arrays."""

        def count(db):
            tables = [t.name for t in (FEATURES, ARRAYS) if has_table(db, t.name)]
            return sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)

        return self._run(count, 0)

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
        return self._lookup(keys, FEATURES)

    def get_arrays(self, keys) -> list[np.ndarray | None]:
        """Stored arrays of ``keys`` (see :meth:`put_arrays`); None where absent or damaged.

        Parameters
        ----------
        keys : iterable of str

        Returns
        -------
        arrays : list of ndarray or None
            One read-only array or None per key, in order, with the dtype
            and shape it was stored with.
        """
        return self._lookup(keys, ARRAYS)

    def _lookup(self, keys, table: Table) -> list:
        keys = list(keys)
        try:
            found, damaged = self._run(
                lambda db: table.select(db, keys, delete_damaged=not self._read_only), ({}, 0)
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
        keys, rows = as_rows(keys, rows)
        self._insert(FEATURES, [FEATURES.encode(key, row) for key, row in zip(keys, rows)])

    def put_arrays(self, keys, arrays) -> None:
        """Store ``arrays[i]`` under ``keys[i]`` in one transaction, replacing old ones.

        Parameters
        ----------
        keys : sequence of str
        arrays : sequence of ndarray
            Of any shape and numeric dtype (bool, int, float), stored as that
            dtype (little-endian), the shape and the raw bytes.
        """
        keys, arrays = as_arrays(keys, arrays)
        self._insert(ARRAYS, [ARRAYS.encode(key, array) for key, array in zip(keys, arrays)])

    def _insert(self, table: Table, records: list[tuple]) -> None:
        if not records:
            return
        try:
            self._run(lambda db: None if self._read_only else table.insert(db, records))
        except sqlite3.OperationalError as exc:
            self._warn_once(
                "write", f"could not write to the feature cache {self.path} ({exc}); not cached"
            )

    def model_digest(self, key: str) -> bytes | None:
        """The sha256 recorded for the exported model of ``key``; None if there is none."""

        def select(db):
            # A read-only store written before the table existed has none.
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'models'").fetchone():
                return db.execute("SELECT sha256 FROM models WHERE key = ?", (key,)).fetchone()
            return None

        try:
            row = self._run(select)
        except sqlite3.OperationalError as exc:
            self._warn_once("read", f"could not read the feature cache {self.path} ({exc})")
            return None
        return None if row is None else row[0]

    def record_model(self, key: str, digest: bytes) -> None:
        """Record ``digest``, the sha256 of the model of ``key`` kept beside the database."""

        def insert(db):
            if not self._read_only:
                with write_transaction(db):
                    db.execute("INSERT OR REPLACE INTO models VALUES (?, ?)", (key, digest))

        try:
            self._run(insert)
        except sqlite3.OperationalError as exc:
            self._warn_once("write", f"could not write to the feature cache {self.path} ({exc})")

    def clear(self) -> None:
        """Delete every vector, array and model record; give the space back to the file system."""

        def delete_all(db):
            with write_transaction(db):
                db.execute("DELETE FROM features")
                db.execute("DELETE FROM models")
                db.execute("DELETE FROM arrays")
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
            except UnusableDatabase as exc:
                self._rebuild(str(exc))
            return self._run_retrying_busy(operation, default)

    def _run_retrying_busy(self, operation, default):
        for delay in _BUSY_RETRY_DELAYS_S:
            try:
                connection = self._connect()
                return default if connection is None else operation(connection)
            except UnusableDatabase:
                raise
            except sqlite3.DatabaseError as exc:
                code = _error_code(exc)
                if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                    raise UnusableDatabase(f"corrupt: {exc}") from exc
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
        check_directory(self.directory)
        check_private(self.directory, "folder")
        database = _follow_link(self.path)
        if database != self.path:
            # SQLite keeps the -wal and -shm files beside the file a link leads to.
            check_private(database.parent, "folder")
        check_private(database, "database")
        # SQLite replays a -wal file into the database when it opens it.
        for suffix in ("-wal", "-shm"):
            check_private(Path(f"{database}{suffix}"), f"database's {suffix} file")
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
            # First, so that a database of someone else's is refused before anything changes.
            ensure_schema(connection, self.path)
            connection.execute("PRAGMA journal_mode=WAL")
            # In WAL mode, NORMAL survives a killed process; only power loss may drop commits.
            connection.execute("PRAGMA synchronous=NORMAL")
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
                kind = identify(connection, self.path)
            except UnusableDatabase as exc:
                connection.close()
                problem = exc
                break
            except sqlite3.DatabaseError as exc:
                connection.close()
                problem = exc
                continue
            except BaseException:
                connection.close()
                raise
            if kind != "new":
                self._warn_once(
                    "read-only",
                    f"the feature cache {self.path} is read-only here ({reason}); serving the "
                    "features it holds, computing the rest without storing them",
                )
                return connection
            connection.close()
            problem = "it is empty"
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


def check_directory(directory: Path) -> None:
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


def _follow_link(path: Path) -> Path:
    """The file ``path`` leads to, itself unless it is a symbolic link.

    Raises
    ------
    FileNotFoundError
        ``path`` is a link that leads to no file (a file moved or deleted, a
        disk not mounted): no file is ever created where a link points.
    """
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links, before Python 3.13
        target = os.readlink(path)
        raise FileNotFoundError(
            f"the feature cache {os.fspath(path.parent)!r} holds {path.name} as a symbolic "
            f"link to {target!r}, which leads to no file; features can be neither read nor "
            "stored. Remove the link to start a new cache there, or create the file it leads "
            f"to (an empty one will do: touch '{target}')"
        ) from exc


def _error_code(exc: sqlite3.DatabaseError) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF  # primary code; extended codes add detail in the high bits
    # Python 3.10 raises exactly DatabaseError for SQLITE_CORRUPT and SQLITE_NOTADB only.
    if type(exc) is sqlite3.DatabaseError:
        return _SQLITE_CORRUPT
    message = str(exc)
    return _SQLITE_BUSY if "locked" in message or "busy" in message else None
