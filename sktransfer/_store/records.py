"""How the disk store writes what it keeps as SQLite records, and checks them on the way back.

Nothing is pickled. A feature vector is a record of table ``features``: its
length and float32 bytes (little-endian). Any other array (the fine-tuner's
decoded images) is a record of table ``arrays``: its dtype string, shape and
raw bytes. Every record ends with a sha256 of its key and contents, so a
damaged record (columns are loosely typed in SQLite) reads as absent.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .schema import write_transaction

_KEYS_PER_QUERY = 500  # well under SQLite's limit on bound parameters
_FEATURE_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class Table:
    """One table of records: its columns (key first, checksum last) and their codec."""

    name: str
    columns: tuple[str, ...]
    #: (key, value) -> the record to insert.
    encode: Callable[[str, np.ndarray], tuple]
    #: A record as selected -> its value, or None when it is damaged.
    decode: Callable[..., np.ndarray | None]

    def select(
        self, db: sqlite3.Connection, keys: list[str], delete_damaged: bool = True
    ) -> tuple[dict[str, np.ndarray], int]:
        """Intact values of ``keys`` by key, and the number of damaged records found."""
        if not has_table(db, self.name):  # a read-only store written before the table existed
            return {}, 0
        found, damaged = {}, []
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _KEYS_PER_QUERY):
            chunk = unique[start : start + _KEYS_PER_QUERY]
            query = (
                f"SELECT {', '.join(self.columns)} FROM {self.name} "
                f"WHERE key IN ({','.join('?' * len(chunk))})"
            )
            for record in db.execute(query, chunk):
                value = self.decode(*record)
                if value is None:
                    damaged.append((record[0], record[-1]))
                else:
                    found[record[0]] = value
        if damaged and delete_damaged:
            with write_transaction(db):
                # Match the checksum too, so a good record written meanwhile survives.
                db.executemany(f"DELETE FROM {self.name} WHERE key = ? AND checksum IS ?", damaged)
        return found, len(damaged)

    def insert(self, db: sqlite3.Connection, records: list[tuple]) -> None:
        """Insert ``records`` in one transaction, replacing those of the same keys."""
        with write_transaction(db):
            db.executemany(
                f"INSERT OR REPLACE INTO {self.name} ({', '.join(self.columns)}) "
                f"VALUES ({', '.join('?' * len(self.columns))})",
                records,
            )


def has_table(db: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (name,)).fetchone() is not None


def _vector_checksum(key: str, dim: int, data: bytes) -> bytes:
    digest = hashlib.sha256(key.encode())
    digest.update(dim.to_bytes(8, "little"))
    digest.update(data)
    return digest.digest()


def _encode_vector(key: str, row: np.ndarray) -> tuple:
    data = np.asarray(row, dtype=_FEATURE_DTYPE).tobytes()
    dim = len(row)
    return key, dim, data, _vector_checksum(key, dim, data)


def _decode_vector(key, dim, data, checksum) -> np.ndarray | None:
    intact = (
        isinstance(dim, int)
        and isinstance(data, bytes)
        and dim >= 0
        and len(data) == dim * _FEATURE_DTYPE.itemsize
        and checksum == _vector_checksum(key, dim, data)
    )
    return np.frombuffer(data, _FEATURE_DTYPE).astype(np.float32, copy=False) if intact else None


def _array_checksum(key: str, dtype: str, shape: str, data: bytes) -> bytes:
    digest = hashlib.sha256(f"{key}\0{dtype}\0{shape}\0".encode())
    digest.update(data)
    return digest.digest()


def _encode_array(key: str, array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    dtype, shape, data = array.dtype.str, ",".join(map(str, array.shape)), array.tobytes()
    return key, dtype, shape, data, _array_checksum(key, dtype, shape, data)


def _decode_array(key, dtype, shape, data, checksum) -> np.ndarray | None:
    if not (isinstance(key, str) and isinstance(dtype, str) and isinstance(shape, str)):
        return None
    if not isinstance(data, bytes) or checksum != _array_checksum(key, dtype, shape, data):
        return None
    try:
        kind = np.dtype(dtype)  # a dtype string names a layout; it never unpickles anything
        dims = [int(d) for d in shape.split(",")] if shape else []
    except (TypeError, ValueError):
        return None
    if kind.kind not in "biuf" or min(dims, default=0) < 0:
        return None
    if len(data) != kind.itemsize * int(np.prod(dims, dtype=np.int64)):
        return None
    return np.frombuffer(data, kind).reshape(dims)


#: Feature vectors: float32 rows.
FEATURES = Table("features", ("key", "dim", "data", "checksum"), _encode_vector, _decode_vector)
#: Any other numeric array, with its dtype and shape.
ARRAYS = Table(
    "arrays", ("key", "dtype", "shape", "data", "checksum"), _encode_array, _decode_array
)
