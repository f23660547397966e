"""File systems that refuse writes: a read-only or tiny tmpfs (needs root and mount rights, else the
test is skipped), and a per-process file size limit (works anywhere, root included)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest


@contextmanager
def tmpfs(path: Path, size_kib: int, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size_kib`` at ``path`` (created), unmounted on exit; skips the test when
    mounting is not allowed (not root, or a container without CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k,mode=0755" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps every file the child writes at ``limit_bytes`` (RLIMIT_FSIZE).

    Writes past the cap fail with EFBIG, as on a full disk; SIGXFSZ, which would otherwise kill
    the child at the first such write, is ignored so the program sees the error."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return preexec


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def entries(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden ones included, recursively, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
