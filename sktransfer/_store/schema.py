"""The feature store's SQLite schema, its one home, and how a store of ours is recognised.

A table added to ``TABLES`` needs no new ``SCHEMA_VERSION``: older readers
ignore tables they do not know.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from pathlib import Path

from .trust import UntrustedCacheError

SCHEMA_VERSION = 1
# Marks a SQLite file as this package's store ("sktf"), so that no other is ever changed.
APPLICATION_ID = 0x736B7466
TABLES = {
    "features": """
CREATE TABLE IF NOT EXISTS features (
    key TEXT PRIMARY KEY,
    dim INTEGER NOT NULL,
    data BLOB NOT NULL,
    checksum BLOB NOT NULL
)
""",
    # The sha256 of each model engine="onnxruntime" exported into this cache.
    "models": """
CREATE TABLE IF NOT EXISTS models (
    key TEXT PRIMARY KEY,
    sha256 BLOB NOT NULL
)
""",
    # Arrays other than feature vectors (the fine-tuner's decoded images): dtype, shape, bytes.
    "arrays": """
CREATE TABLE IF NOT EXISTS arrays (
    key TEXT PRIMARY KEY,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    checksum BLOB NOT NULL
)
""",
}


class UnusableDatabase(sqlite3.DatabaseError):
    """The database file is corrupt, or ours with another schema, and must be rebuilt."""


def identify(db: sqlite3.Connection, path: Path) -> str:
    """What the database is: ``"new"`` (empty), ``"ours"``, or ``"previous"``.

    ``"previous"``: our exact tables and version, written before stores
    carried the application id. Raises :class:`UnusableDatabase` for a
    store of ours with another schema, which may be rebuilt, and
    :class:`UntrustedCacheError` for any other database, which is never
    changed.
    """
    with read_snapshot(db):
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        names = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        tables = {name: _columns(db, name) for (name,) in names if not name.startswith("sqlite_")}
    ours = _our_columns()
    same_tables = all(ours.get(name) == columns for name, columns in tables.items())
    if application_id == APPLICATION_ID:
        if version != SCHEMA_VERSION:
            raise UnusableDatabase(
                f"schema version {version}; this sktransfer uses version {SCHEMA_VERSION}"
            )
        if not same_tables:
            raise UnusableDatabase(f"unknown tables or columns in {sorted(tables)}")
        return "ours"
    if application_id == 0 and version == 0 and not tables:
        return "new"
    if application_id == 0 and version == SCHEMA_VERSION and same_tables and "features" in tables:
        return "previous"
    raise UntrustedCacheError(
        f"{os.fspath(path)!r} is not a feature cache of sktransfer (application id "
        f"{application_id}, user_version {version}, tables {sorted(tables)}): sktransfer "
        "neither reads, changes nor deletes it. Give cache= another folder, or move "
        f"{path.name} out of this one if it is yours to move."
    )


def _columns(db: sqlite3.Connection, table: str) -> list[tuple]:
    return db.execute(f"PRAGMA table_info({table})").fetchall()


@functools.cache
def _our_columns() -> dict[str, list[tuple]]:
    """Each of our tables' columns, as SQLite describes them once created."""
    db = sqlite3.connect(":memory:")
    try:
        for create in TABLES.values():
            db.execute(create)
        return {name: _columns(db, name) for name in TABLES}
    finally:
        db.close()


def ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create or complete our tables; a previous version's store is adopted and stamped."""
    with read_snapshot(db):
        existing = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        if identify(db, path) == "ours" and existing >= TABLES.keys():
            return
    with write_transaction(db):
        # Again under the write lock: another process may have created the store meanwhile.
        identify(db, path)
        for create in TABLES.values():
            db.execute(create)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def read_snapshot(db: sqlite3.Connection):
    """Make the reads inside one transaction, so they see one state of the file.

    Outside a transaction each statement sees the file as it is then: a
    process creating the store between two of them showed another process
    its new tables beside the empty header read before, a foreign-looking
    database (application id 0, version 0, our tables).
    """
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN")
    try:
        yield
    finally:
        if db.in_transaction:
            db.execute("COMMIT")


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection):
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
