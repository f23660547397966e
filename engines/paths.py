"""Where the engine cache lives (a per-user folder with mode 0700, never /tmp), and durable file writes."""

from __future__ import annotations

import errno
import hashlib
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
    """Create ``path`` private (mode 0700), or check that an existing folder is safe to load from.

    Engines are executable content: a cache folder that other users can write
    to could hand us a planted engine, so one that another user owns, that is
    shared (sticky, like /tmp) or that group or others may write to is refused
    with a :class:`CacheError`.  Only a folder created here gets its mode set:
    an existing folder's mode is the user's choice and is never changed (a
    0755 folder is used as it is).
    """
    path = path.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheError(f"cache folder {path} cannot be created: {exc.strerror or exc}") from exc
    else:
        try:
            os.chmod(path, 0o700)  # ours: mkdir's mode went through the umask
        except OSError as exc:
            raise CacheError(f"cache folder {path} cannot be made private: {exc.strerror or exc}") from exc
        return path
    try:
        st = path.stat()
    except OSError as exc:
        raise CacheError(f"cache folder {path} cannot be read: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"cache folder {path} is not a folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CacheError(f"cache folder {path} belongs to another user; refusing to load engines from it")
    if st.st_mode & stat.S_ISVTX:
        raise CacheError(f"cache folder {path} is a shared (sticky) folder such as /tmp; use a folder of your own")
    if st.st_mode & 0o022:
        raise CacheError(
            f"cache folder {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); refusing to "
            f"load engines from it: use a folder of your own, or remove their write access (chmod go-w {path})"
        )
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


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (cached artifacts, pinned weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
