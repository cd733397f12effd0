"""The feature store: which store an estimator's ``cache`` names, and what users see of it.

This room holds everything that keeps computed features between calls:
``keys`` (what identifies an image and a feature vector of it), ``memory``
(the process-wide LRU), ``disk`` (the SQLite store shared by processes),
``records`` and ``schema`` (its SQLite rows and tables) and ``trust`` (who
may own and write a cache). This module resolves ``cache=`` to a store and
gives users :func:`cache_info` and :func:`clear_cache`.

The memory LRU and the disk store share one interface: ``get_many(keys)``,
``put_many(keys, rows)``, ``get_arrays(keys)``, ``put_arrays(keys, arrays)``
(n-d arrays such as decoded images, apart from the rows), ``clear()``,
``len(store)`` and ``nbytes``; both keep them under the keys of
:func:`~sktransfer._store.keys.feature_key`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from .disk import ENGINES_FOLDER, DiskStore, check_directory
from .memory import MemoryStore, default_memory_store

_OPEN_DISK_STORES = 8  # resolve_store keeps this many open, most recently used


class CacheInfo(NamedTuple):
    """How much a feature cache holds.

    Attributes
    ----------
    entries : int
        Number of stored feature vectors, and of the images a fine-tuner
        keeps decoded there.
    nbytes : int
        Memory store: bytes of the stored vectors. Disk store: bytes of its
        database files on disk.
    """

    entries: int
    nbytes: int


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
        return default_memory_store()
    if isinstance(cache, str | os.PathLike):
        if not os.fspath(cache):
            raise ValueError(
                "cache='' names no directory; use 'memory', a directory path (such as '.') or None"
            )
        directory = Path(cache).expanduser()
        check_directory(directory)
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
    """How many feature vectors (and kept images) a cache holds, and how many bytes.

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

    Raises
    ------
    UntrustedCacheError
        The directory holds a ``features.sqlite`` that sktransfer did not
        create, or someone other than you (or root) owns it or may write it.

    Examples
    --------
    >>> from sktransfer import cache_info, clear_cache
    >>> clear_cache("memory")
    >>> cache_info("memory")
    CacheInfo(entries=0, nbytes=0)
    """
    store = _existing(resolve_store(cache))
    if store is None:
        return CacheInfo(0, 0)
    return CacheInfo(len(store), store.nbytes)


def clear_cache(cache="memory") -> None:
    """Remove every cached feature vector and kept image from a cache.

    Parameters
    ----------
    cache : "memory", str, os.PathLike or None, default="memory"
        As in :func:`cache_info`. A disk cache is emptied in one transaction
        (other processes may keep using it) and its file shrunk, and the
        models ``engine="onnxruntime"`` exported there are deleted (processes
        running one keep their loaded copy); None, or a directory without a
        cache, is left alone.

    Raises
    ------
    UntrustedCacheError
        As in :func:`cache_info`; nothing is deleted.

    Examples
    --------
    >>> import tempfile
    >>> from sktransfer import PretrainedFeaturizer, cache_info, clear_cache
    >>> from sktransfer.datasets import load_textures
    >>> images, labels = load_textures(patch_size=32)
    >>> folder = tempfile.TemporaryDirectory()
    >>> featurizer = PretrainedFeaturizer(cache=folder.name, progress=False)
    >>> features = featurizer.fit_transform(images[:4])
    >>> cache_info(folder.name).entries > 0
    True
    >>> clear_cache(folder.name)
    >>> cache_info(folder.name).entries
    0
    >>> clear_cache()  # the process-wide memory cache
    >>> cache_info()
    CacheInfo(entries=0, nbytes=0)
    >>> folder.cleanup()
    """
    store = _existing(resolve_store(cache))
    if store is None:
        return
    store.clear()
    if isinstance(store, DiskStore):
        for model in (Path(store.directory) / ENGINES_FOLDER).glob("*.onnx"):
            model.unlink(missing_ok=True)
