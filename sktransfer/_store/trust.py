"""Whether a feature cache can be trusted: who owns it and who may write it.

Features and exported models are used as they are found in a cache, so a
folder or file that someone else could have written is refused, as ssh
refuses a ``~/.ssh`` that others may write and pip a cache it does not own.
Who may write is read from the mode bits and, on Linux, from the POSIX
access ACL, which can grant write to other users and groups beyond them.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

#: Sources of users and groups that list all of theirs when asked (``getpwall``);
#: LDAP, SSSD, NIS or winbind often do not, so that a group's members cannot be known.
ENUMERABLE_SOURCES = frozenset({"files", "systemd", "extrausers"})
#: Where glibc reads which sources hold users and groups.
NSSWITCH = Path("/etc/nsswitch.conf")

# The extended attribute that holds a POSIX access ACL on Linux, and its binary layout
# (linux/posix_acl_xattr.h): a version, then (tag, permissions, id) per entry.
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_WRITE = 0x02
_NO_ACL = {errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP}


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
    the feature cache folder '...' is writable by other users, by its mode 777: features or
    models planted there would be used as if you had computed them. Make it private: chmod go-w
    '...'
    >>> shared.cleanup()
    """


def check_private(path: Path, what: str) -> None:
    """Raise :class:`UntrustedCacheError` unless ``path`` is writable by its owner alone.

    The owner must be the current user or root (who can change anything
    anyway; so a cache that root prepared can be shared read-only). Nobody
    else may write it, by its mode or by its POSIX ACL, except the owner's
    private group (the default on Debian and Ubuntu, whose users have umask
    002), and only where every member of that group can be known: where
    users come from a directory service that does not list them all (LDAP,
    SSSD), group write is refused. A missing ``path`` passes: the store
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
    acl = _access_acl(path, what)
    if acl:
        writers = _acl_writers(acl, info.st_uid, info.st_gid)
    else:
        writers = _mode_writers(info.st_mode, info.st_gid)
    refused = []
    for kind, ident in writers:
        if kind == "group":
            unknown = _unlisted_sources()
            if not unknown and _private_group(ident, info.st_uid):
                continue
            who = f"group {_group_name(ident)}"
            if unknown and ident == _primary_group(info.st_uid):
                who += (
                    f" (users also come from {', '.join(unknown)}, which need not list them "
                    "all, so whether it is your private group cannot be known)"
                )
            refused.append(who)
        else:
            refused.append("other users" if kind == "other" else f"user {_user_name(ident)}")
    if refused:
        place = os.fspath(path)
        if acl:
            how = f"its ACL (getfacl '{place}' lists it)"
            fix = f"setfacl -b '{place}' && chmod go-w '{place}'"
        else:
            how = f"its mode {stat.S_IMODE(info.st_mode):o}"
            fix = f"chmod go-w '{place}'"
        raise UntrustedCacheError(
            f"the feature cache {what} {place!r} is writable by {' and '.join(refused)}, by "
            f"{how}: features or models planted there would be used as if you had computed "
            f"them. Make it private: {fix}"
        )


def _mode_writers(mode: int, gid: int) -> list[tuple[str, int]]:
    """``("group", gid)`` and ``("other", -1)`` where the mode lets them write."""
    writers = [("group", gid)] if mode & stat.S_IWGRP else []
    return writers + ([("other", -1)] if mode & stat.S_IWOTH else [])


def _access_acl(path: Path, what: str) -> list[tuple[int, int, int]] | None:
    """The entries ``(tag, permissions, id)`` of ``path``'s POSIX access ACL; None without one.

    A file system without ACLs, or a platform without ``os.getxattr``, has
    none: the mode tells who may write.
    """
    if not hasattr(os, "getxattr"):
        return None
    try:
        data = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in _NO_ACL:
            return None
        raise UntrustedCacheError(
            f"cannot read the ACL of the feature cache {what} {os.fspath(path)!r} ({exc}), "
            "so who may write it is unknown"
        ) from exc
    count, extra = divmod(len(data) - _ACL_HEADER.size, _ACL_ENTRY.size)
    if count < 0 or extra or _ACL_HEADER.unpack_from(data)[0] != _ACL_VERSION:
        raise UntrustedCacheError(
            f"the ACL of the feature cache {what} {os.fspath(path)!r} is in a form sktransfer "
            "does not know, so who may write it is unknown"
        )
    return [
        _ACL_ENTRY.unpack_from(data, _ACL_HEADER.size + i * _ACL_ENTRY.size) for i in range(count)
    ]


def _acl_writers(acl: list[tuple[int, int, int]], owner: int, group: int) -> list[tuple[str, int]]:
    """Who besides the owner may write, by the ACL: ``(kind, id)``, kind user, group or other.

    Named users, named groups and the owning group get at most what the mask
    allows (the mask is what ``ls -l`` shows as the group bits).
    """
    mask_allows = all(perm & _ACL_WRITE for tag, perm, _ in acl if tag == _ACL_MASK)
    writers = []
    for tag, perm, ident in acl:
        if not perm & _ACL_WRITE:
            continue
        if tag == _ACL_OTHER:
            writers.append(("other", -1))
        elif not mask_allows:
            continue
        elif tag == _ACL_USER and ident != owner:  # the owner's rights are its own entry's
            writers.append(("user", ident))
        elif tag == _ACL_GROUP_OBJ:  # the file's group; the entry carries no id
            writers.append(("group", group))
        elif tag == _ACL_GROUP:
            writers.append(("group", ident))
    return writers


def _unlisted_sources() -> list[str]:
    """Sources of users or groups (``/etc/nsswitch.conf``) that need not list them all."""
    try:
        lines = NSSWITCH.read_text().splitlines()
    except FileNotFoundError:
        return []  # glibc reads the local files alone
    except OSError:
        return ["an unreadable " + os.fspath(NSSWITCH)]
    sources = []
    for line in lines:
        database, _, rest = line.partition("#")[0].partition(":")
        if database.strip() in ("passwd", "group"):
            # Actions such as [NOTFOUND=return] are not sources.
            sources += [s for s in rest.split() if not s.startswith("[")]
    return sorted(set(sources) - ENUMERABLE_SOURCES)


def _private_group(gid: int, uid: int) -> bool:
    """Whether group ``gid`` has one member, user ``uid``, as user private groups do.

    Only as sure as the list of users is complete: see :func:`_unlisted_sources`.
    """
    import grp
    import pwd

    try:
        owner, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    others = [user for user in pwd.getpwall() if user.pw_gid == gid and user.pw_uid != uid]
    return owner.pw_gid == gid and set(group.gr_mem) <= {owner.pw_name} and not others


def _primary_group(uid: int) -> int | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None


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
