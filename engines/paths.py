"""Where the engine cache lives (a per-user folder with mode 0700, never /tmp), and durable file writes."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from engines.errors import CacheError

CACHE_ENV = "STREAMER_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$STREAMER_CACHE_DIR`` if set, else the platform's per-user cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("streamer", appauthor=False))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check that an existing one is ours and private.

    Engines are executable content: a cache folder that other users can write
    to could hand us a planted engine, so we refuse one rather than use it.
    """
    path = path.expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise CacheError(f"cache folder {path} cannot be created: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"cache folder {path} is not a folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CacheError(f"cache folder {path} belongs to another user; refusing to load engines from it")
    if st.st_mode & stat.S_ISVTX:
        raise CacheError(f"cache folder {path} is a shared (sticky) folder such as /tmp; use a folder of your own")
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise CacheError(f"cache folder {path} is accessible by other users and cannot be made private") from exc
    return path


def cache_dir(override: Path | None = None) -> Path:
    """The cache folder to use, created private if needed."""
    return ensure_private_dir(override if override is not None else default_cache_dir())


_CANNOT_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
"""``fsync`` errors that mean "this file system cannot sync this", not "the data was lost"."""


def fsync_file(path: Path) -> None:
    """Flush the data of the file written at ``path`` to the disk, before it is renamed into place.

    Raises :class:`OSError` when the data could not be written (EIO, ENOSPC, EDQUOT: some
    file systems only report those now).  A file system that cannot sync a file at all
    (EINVAL, ENOTSUP) is not an error: there is nothing more to do.
    """
    _fsync_fd(os.open(path, os.O_RDONLY))


def _fsync_fd(fd: int) -> None:
    """``fsync`` an open descriptor and close it; "cannot sync here" errors are not errors."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries to the disk, after a file was created or renamed into it.

    Raises :class:`OSError` when the folder cannot be opened (ENOENT, EIO) or its entries
    could not be written (EIO, ENOSPC, EDQUOT), as :func:`fsync_file` does.  Not an error,
    since there is nothing more to do: a platform without folder descriptors (Windows), a
    folder we may write to but not read (EACCES, EPERM), and a file system that cannot
    sync a folder (EINVAL, ENOTSUP).
    """
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in _CANNOT_SYNC or exc.errno in (errno.EACCES, errno.EPERM):
            return
        raise
    _fsync_fd(fd)
