"""A folder of annotated images, encoded and written by a pool of threads."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import SinkError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor


from streamer.sinks.base import IMAGE_OUTPUT_EXTENSIONS, Sink

log = logging.getLogger(__name__)

class ImageFolderSink(Sink):
    """Writes each annotated frame as an image named like its input (``frame_000123.jpg`` for videos).

    Images are encoded and written by a small pool of threads (``workers``; OpenCV
    releases the GIL while it encodes), since one thread encoding one JPEG after
    another is what bounds a folder run on a machine with cores to spare.  Names
    are given in frame order; a failed write is raised by the next call, and
    :meth:`finalize` returns only when every image is on disk.
    """

    def __init__(self, folder: Path, overwrite: bool = False, workers: int | None = None) -> None:
        import threading
        from collections import deque
        from concurrent.futures import Future

        from streamer.imageio import default_workers

        self.folder = folder
        self.overwrite = overwrite
        self.frames_written = 0
        self.written: list[Path] = []
        self._created_folder = False
        self._names_used: set[str] = set()
        self._names_given = 0
        self._workers = max(1, workers if workers is not None else default_workers())
        self._pool: "ThreadPoolExecutor | None" = None
        self._inflight: "deque[Future[None]]" = deque()
        self._lock = threading.Lock()
        self._error: SinkError | None = None
        if folder.is_symlink():
            raise SinkError(f"{folder}: destination is a symbolic link; refusing to write through it")
        if folder.exists() and not folder.is_dir():
            raise SinkError(f"{folder}: exists and is not a folder")

    @property
    def description(self) -> str:
        return f"{self.folder}/"

    def open(self, frame_size: tuple[int, int], fps: float) -> "ImageFolderSink":
        try:
            self._created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"{self.folder}: cannot create output folder ({exc.strerror})") from exc
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise SinkError(f"{self.folder}: output folder is not writable")
        return self

    def _target(self, name: str) -> Path:
        base = Path(name).name
        path = Path(base)
        if path.suffix.lower() not in IMAGE_OUTPUT_EXTENSIONS:
            base = f"frame_{self._names_given:06d}.jpg"
            path = Path(base)
        self._names_given += 1
        # Two inputs with one name (a glob across folders) must not overwrite each other.
        n = 1
        while base in self._names_used:
            base = f"{path.stem}_{n}{path.suffix}"
            n += 1
        self._names_used.add(base)
        return self.folder / base

    def _wait(self, cancel: bool) -> None:
        """Wait for the writes in flight (``cancel``: drop those not started)."""
        while self._inflight:
            future = self._inflight.popleft()
            if cancel:
                future.cancel()
            if not future.cancelled():
                future.result()  # _store keeps its errors; nothing is raised here
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Remove what this run wrote (and the folder, if this run created it)."""
        self._wait(cancel=True)
        for target in self.written:
            try:
                target.unlink()
            except OSError:
                pass
        self.written.clear()
        if self._created_folder:
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def finalize(self) -> None:
        self._wait(cancel=False)
        if self._error is not None:
            self.abort()  # as a failed run: no half-written set of images is left
            raise self._error

    def write(self, image: np.ndarray, name: str) -> None:
        self._raise_if_failed()
        target = self._target(name)
        if target.is_symlink() or (target.exists() and not self.overwrite):
            raise SinkError(f"{target} exists; pass --overwrite to replace it")
        if self._workers == 1:
            self._store(image, target)
            self._raise_if_failed()
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="streamer-encode")
        while len(self._inflight) >= 2 * self._workers:  # bounded memory: wait for the oldest
            self._inflight.popleft().result()
            self._raise_if_failed()
        self._inflight.append(self._pool.submit(self._store, image, target))

    def _store(self, image: np.ndarray, target: Path) -> None:
        """Encode and write one image under a hidden name, then rename it; errors are kept for the caller."""
        import cv2

        if self._error is not None:
            return
        temp = target.with_name(f".{target.stem}.partial{target.suffix}")
        try:
            ok, data = cv2.imencode(target.suffix, image)
            if not ok:
                raise SinkError(f"{target}: cannot encode image")
            try:
                with open(temp, "wb") as fh:
                    fh.write(data.tobytes())
                os.replace(temp, target)
            except OSError as exc:
                try:
                    temp.unlink()
                except OSError:
                    pass
                raise SinkError(f"{target}: write failed ({exc.strerror})") from exc
        except Exception as exc:  # noqa: BLE001 - cv2.error, MemoryError...: kept for the caller as ours
            error = exc if isinstance(exc, SinkError) else SinkError(f"{target}: cannot encode image ({exc})")
            with self._lock:
                if self._error is None:
                    self._error = error
            return
        with self._lock:
            self.frames_written += 1
            self.written.append(target)
