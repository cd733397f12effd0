"""The process-wide memory store: a thread-safe LRU of feature vectors, bounded in bytes.

Beside the float32 feature vectors it keeps n-d arrays of any numeric dtype
(the fine-tuner's decoded uint8 images) under their own keys, in the same LRU
and byte bound.
"""

from __future__ import annotations

import operator
import os
import threading
from collections import OrderedDict

import numpy as np

from .keys import as_arrays, as_rows

#: Bound of the process-wide memory store unless :func:`set_memory_limit` changes it.
DEFAULT_MEMORY_BYTES = 1 << 30


class MemoryStore:
    """Thread-safe LRU of float32 feature vectors (and other arrays), bounded in bytes.

    Parameters
    ----------
    max_bytes : int
        Bound on the bytes of the stored vectors and arrays (their
        ``nbytes``; keys and Python objects are not counted). When a ``put_many`` goes over it,
        the least recently used vectors are evicted; a vector larger than the
        bound is not stored.

    Notes
    -----
    Returned vectors are the stored ones, made read-only; copy before
    modifying.
    """

    def __init__(self, max_bytes: int):
        self._lock = threading.Lock()
        # Least recently used first; arrays under ("array", key), so they never answer get_many.
        self._rows: OrderedDict[str | tuple[str, str], np.ndarray] = OrderedDict()
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
        return self._get(keys)

    def get_arrays(self, keys) -> list[np.ndarray | None]:
        """Stored arrays of ``keys`` (None where absent); hits become most recent.

        Parameters
        ----------
        keys : iterable of str

        Returns
        -------
        arrays : list of ndarray or None
            One read-only array or None per key, in order, as it was stored.
        """
        return self._get([("array", key) for key in keys])

    def _get(self, keys) -> list[np.ndarray | None]:
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
        keys, rows = as_rows(keys, rows)
        # Copy, so that a stored row does not keep the caller's whole batch alive.
        self._put(keys, [row.copy() for row in rows])

    def put_arrays(self, keys, arrays) -> None:
        """Store ``arrays[i]`` under ``keys[i]``, then evict down to the bound.

        Parameters
        ----------
        keys : sequence of str
        arrays : sequence of ndarray
            Of any shape and numeric dtype. A read-only array that owns its
            memory is stored as it is (so a caller keeping it holds no second
            copy); any other is copied.
        """
        keys, arrays = as_arrays(keys, arrays)
        self._put(
            [("array", key) for key in keys],
            [a if a.base is None and not a.flags.writeable else a.copy() for a in arrays],
        )

    def _put(self, keys, rows) -> None:
        with self._lock:
            for key, row in zip(keys, rows):
                if row.nbytes > self._max_bytes:
                    continue
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
