"""An OpenCV window."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from engines.errors import SinkError
from streamer.sinks.base import Sink

log = logging.getLogger(__name__)


class WindowSink(Sink):
    """Shows frames in an OpenCV window; ``q`` or Esc asks the pipeline to stop."""

    def __init__(self, title: str = "streamer") -> None:
        self.title = title
        self._stop = False
        self._opened = False
        self._sized = False

    @property
    def description(self) -> str:
        return "window"

    def open(self, frame_size: tuple[int, int], fps: float) -> "WindowSink":
        import cv2

        # No Qt toolbar (GUI_NORMAL), the frame's aspect ratio kept when resized (KEEPRATIO);
        # sized to the frame, shrunk to fit the screen when it is larger.
        flags = cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | getattr(cv2, "WINDOW_GUI_NORMAL", 0)
        try:
            cv2.namedWindow(self.title, flags)
        except cv2.error as exc:
            raise SinkError(f"cannot open a window ({exc}); this OpenCV may be headless, use -o FILE instead") from exc
        self._opened = True
        if frame_size[0] > 0 and frame_size[1] > 0:
            self._resize(frame_size)
        return self

    def _resize(self, frame_size: tuple[int, int]) -> None:
        import cv2

        width, height = window_size(frame_size, screen_size())
        try:
            cv2.resizeWindow(self.title, width, height)
        except cv2.error as exc:  # a backend that cannot resize: the window still works
            log.debug("cannot size the window: %s", exc)
        self._sized = True

    def write(self, image: np.ndarray, name: str) -> None:
        import cv2

        if not self._sized:  # the source did not know its frame size before the first frame
            self._resize((image.shape[1], image.shape[0]))
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


def window_size(frame_size: tuple[int, int], screen: tuple[int, int] | None) -> tuple[int, int]:
    """The frame's size, scaled down (aspect kept) to fit 90% of the screen when it is larger."""
    width, height = frame_size
    if screen is None:
        return width, height
    limit_w, limit_h = int(screen[0] * 0.9), int(screen[1] * 0.9)
    scale = min(1.0, limit_w / width, limit_h / height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def screen_size() -> tuple[int, int] | None:
    """The primary screen's size in pixels, if it can be asked without extra packages (Tk); else None."""
    try:
        import tkinter
    except ImportError:
        return None
    try:
        root = tkinter.Tk()
    except Exception:  # noqa: BLE001 - no display, no Tk: fall back to the frame's own size
        return None
    try:
        root.withdraw()
        return int(root.winfo_screenwidth()), int(root.winfo_screenheight())
    finally:
        root.destroy()
