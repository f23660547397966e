"""Rules every output file follows: one output per path, a lock per final path, short hidden names.

* Two outputs of one run never share a path: compared after resolving links and by
  ``st_dev``/``st_ino`` when the file exists (a hard link is the same file).
* Each final path is locked for the run (:class:`OutputLock`: ``fcntl.flock`` on a hidden
  ``.NAME.lock`` beside it), so a second run writing the same file fails with one line
  instead of one run silently replacing the other's output.
* Hidden names (temporary files, locks) stay within the 255-byte limit of a file name: a long
  name is replaced by a hash of it (:func:`hidden_name`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Iterable

from engines.errors import ConfigError, SinkError

NAME_MAX = 255


def hidden_name(path: Path, tag: str, suffix: str = "") -> Path:
    """``DIR/.NAME.TAG SUFFIX`` beside ``path``, or ``DIR/.HASH.TAG SUFFIX`` when that name is too long."""
    name = f".{path.name}.{tag}{suffix}"
    if len(os.fsencode(name)) > NAME_MAX:
        digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
        name = f".{digest}.{tag}{suffix}"
    return path.with_name(name)


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    try:
        resolved = str(path.expanduser().resolve())
    except (OSError, RuntimeError):
        resolved = os.path.abspath(path)
    try:
        st = os.stat(path)
        return resolved, (st.st_dev, st.st_ino)
    except OSError:
        return resolved, None


def check_distinct_outputs(outputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse two outputs on one file: ``-o x.mkv --predictions x.mkv``, through a symlink or a hard link."""
    seen: list[tuple[str, str, tuple[int, int] | None]] = []
    for option, path in outputs:
        resolved, inode = _identity(path)
        for other_option, other_resolved, other_inode in seen:
            if resolved == other_resolved or (inode is not None and inode == other_inode):
                raise ConfigError(f"{path}: given as both {other_option} and {option}; each output needs its own file")
        seen.append((option, resolved, inode))


def is_stream(path: Path) -> bool:
    """An existing character device or FIFO (``/dev/null``, a named pipe): written in place, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


class OutputLock:
    """An exclusive lock on a final output path for the length of a run.

    The lock is ``fcntl.flock`` on ``.NAME.lock`` beside the output (released by the kernel when
    the process dies, even by SIGKILL); the lock file is removed on :meth:`release`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = hidden_name(path, "lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        import fcntl

        for _ in range(5):  # the file may be removed by its holder between our open and our lock
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                raise SinkError(f"{self.path}: cannot lock the output ({exc.strerror})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SinkError(f"{self.path}: another streamer run is writing this output") from None
            except OSError:
                os.close(fd)  # a file system without locks (some network mounts): go on unlocked
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)
        raise SinkError(f"{self.path}: cannot lock the output (its lock file keeps changing)")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
