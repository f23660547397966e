"""An OpenCV window."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import SinkError

if TYPE_CHECKING:

    pass

from streamer.sinks.base import Sink

log = logging.getLogger(__name__)

class WindowSink(Sink):
    """Shows frames in an OpenCV window; ``q`` or Esc asks the pipeline to stop."""

    def __init__(self, title: str = "streamer") -> None:
        self.title = title
        self._stop = False
        self._opened = False

    @property
    def description(self) -> str:
        return "window"

    def open(self, frame_size: tuple[int, int], fps: float) -> "WindowSink":
        import cv2

        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"cannot open a window ({exc}); this OpenCV may be headless, use -o FILE instead") from exc
        self._opened = True
        return self

    def write(self, image: np.ndarray, name: str) -> None:
        import cv2

        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self._stop = True
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self._stop = True
        except cv2.error:
            self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def finalize(self) -> None:
        import cv2

        if self._opened:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)

    abort = finalize


def display_available() -> bool:
    """A window can be shown: a display server is set and OpenCV has a GUI backend."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import cv2

    info = cv2.getBuildInformation()
    gui = ""
    for line in info.splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip().upper()
    return bool(gui) and gui != "NONE"
