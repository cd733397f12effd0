"""Whether a feature cache can be trusted: who owns it and who may write it.

Features and exported models are used as they are found in a cache, so a
folder or file that someone else could have written is refused, as ssh
refuses a ``~/.ssh`` that others may write and pip a cache it does not own.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UntrustedCacheError(PermissionError):
    """A feature cache that sktransfer will not use, nor change.

    Either someone other than the current user (or root) could have written
    it, so its features and models could be planted, or it holds a database
    that sktransfer did not create. The message says how to fix it.

    Examples
    --------
    >>> import os
    >>> import tempfile
    >>> import numpy as np
    >>> from sktransfer import PretrainedFeaturizer, UntrustedCacheError
    >>> shared = tempfile.TemporaryDirectory()
    >>> os.chmod(shared.name, 0o777)  # anyone may write there
    >>> featurizer = PretrainedFeaturizer(cache=shared.name, progress=False)
    >>> try:  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    ...     featurizer.fit_transform(np.zeros((1, 32, 32, 3), np.uint8))
    ... except UntrustedCacheError as error:
    ...     print(error)
    the feature cache folder '...' is writable by other users (mode 777): features or models
    planted there would be used as if you had computed them. Make it private: chmod go-w '...'
    >>> shared.cleanup()
    """


def check_private(path: Path, what: str) -> None:
    """Raise :class:`UntrustedCacheError` unless ``path`` is writable by its owner alone.

    The owner must be the current user or root (who can change anything
    anyway; so a cache that root prepared can be shared read-only). Group write is
    allowed only for the owner's private group (the default on Debian and
    Ubuntu, whose users have umask 002). A missing ``path`` passes: the store
    creates it private. Windows has no POSIX owners and passes.
    """
    if not hasattr(os, "geteuid"):
        return
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    user = os.geteuid()
    if info.st_uid not in (user, 0):
        raise UntrustedCacheError(
            f"the feature cache {what} {os.fspath(path)!r} belongs to {_user_name(info.st_uid)}, "
            f"not to you ({_user_name(user)}): features or models planted there would be used as "
            "if you had computed them. Give cache= a folder of your own, or take this one over: "
            f"chown -R {_user_name(user)} '{os.fspath(path)}'"
        )
    writers = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writers == stat.S_IWGRP and _private_group(info.st_gid, info.st_uid):
        return
    if writers:
        who = "other users" if writers & stat.S_IWOTH else f"group {_group_name(info.st_gid)}"
        raise UntrustedCacheError(
            f"the feature cache {what} {os.fspath(path)!r} is writable by {who} (mode "
            f"{stat.S_IMODE(info.st_mode):o}): features or models planted there would be used "
            f"as if you had computed them. Make it private: chmod go-w '{os.fspath(path)}'"
        )


def _private_group(gid: int, uid: int) -> bool:
    """Whether group ``gid`` has one member, user ``uid``, as user private groups do."""
    import grp
    import pwd

    try:
        owner, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    others = [user for user in pwd.getpwall() if user.pw_gid == gid and user.pw_uid != uid]
    return owner.pw_gid == gid and set(group.gr_mem) <= {owner.pw_name} and not others


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"
