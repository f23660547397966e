"""The live view over HTTP (``-o http://HOST:PORT/``): a real headless Chromium watching a real run,
many viewers, a slow viewer, the access token, and several outputs at once."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import (
    MODEL,
    SAMPLE_IMAGES,
    assert_clean_failure,
    count_frames,
    read_jsonl,
    read_stamp,
    run_cli,
    stamp_index,
    start_run_with_live_view,
)

from engines.backends.base import Prediction
from engines.errors import ConfigError, SinkError
from streamer.sinks.http import HttpAddress, HttpView, parse_http_output
from streamer.sources import Frame

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODEL_ARGS = ["-m", MODEL, "--backend", "torch", "--no-summary", "--no-progress"]
URL_LINE = re.compile(r"live view at (http://\S+)")


# -- helpers -------------------------------------------------------------------------------------
class Chromium:
    """A real headless Chromium, driven over the DevTools protocol on a pipe (its fds 3 and 4)."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Above 4, so that putting them at 3 and 4 in the child cannot overwrite one another.
        child_r, child_w = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def at_3_and_4() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={self.profile}", "--remote-debugging-pipe"]  # fmt: skip
        self.process = subprocess.Popen(
            [CHROMIUM, *flags, "about:blank"], pass_fds=(3, 4, child_r, child_w),
            preexec_fn=at_3_and_4,  # noqa: PLW1509 - it only calls os.dup2
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(child_r)
        os.close(child_w)
        self._buffer = b""
        self._id = 0

    def send(self, method: str, params: dict[str, object] | None = None, session: str | None = None, timeout: float = 60.0) -> dict:
        self._id += 1
        message: dict[str, object] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]
        raise TimeoutError(method)

    def open(self, url: str) -> str:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        return str(self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])

    def evaluate(self, session: str, expression: str) -> object:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it is going away anyway
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        shutil.rmtree(self.profile, ignore_errors=True)


def _page_state(chromium: Chromium, session: str) -> dict:
    value = chromium.evaluate(
        session,
        "JSON.stringify({frames: (window.streamerCounts || {}).frames || 0, events: (window.streamerCounts || {}).events || 0,"
        " width: (document.getElementById('view') || {}).naturalWidth || 0,"
        " labels: (document.getElementById('labels') || {}).textContent || ''})",
    )
    return json.loads(str(value))


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(2048)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class MjpegClient(threading.Thread):
    """Reads /stream.mjpg, decoding every part; ``delay_per_kb`` makes it a slow reader."""

    def __init__(self, url: str, delay_per_kb: float = 0.0, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.delay_per_kb, self.headers = url, delay_per_kb, headers or {}
        self.images: list[np.ndarray] = []
        self.status: int | None = None
        self.content_type = ""
        self.ended = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        host, port = re.match(r"http://\[?([^\]/]+)\]?:(\d+)", self.url).groups()  # type: ignore[union-attr]
        path = self.url.split(f":{port}", 1)[1] or "/"
        try:
            sock = socket.create_connection((host, int(port)), timeout=60)
            if self.delay_per_kb:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            self.connected.set()
            buffer = b""
            while True:
                chunk = sock.recv(1024 if self.delay_per_kb else 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                if self.delay_per_kb:
                    time.sleep(self.delay_per_kb)
                if self.status is None and b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.status = int(head.split()[1])
                    match = re.search(rb"(?i)content-type: ([^\r\n]+)", head)
                    self.content_type = match.group(1).decode() if match else ""
                while self.status == 200:  # parts: --boundary, headers, Content-Length bytes
                    match = re.search(rb"--streamerframe\r\n(.*?)\r\n\r\n", buffer, re.DOTALL)
                    if not match:
                        break
                    length = int(re.search(rb"(?i)content-length: (\d+)", match.group(1)).group(1))  # type: ignore[union-attr]
                    start = match.end()
                    if len(buffer) < start + length:
                        break
                    jpeg = np.frombuffer(buffer[start : start + length], np.uint8)
                    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
                    assert image is not None, "a part that is not a JPEG"
                    self.images.append(image)
                    buffer = buffer[start + length :]
        except OSError:
            pass
        finally:
            self.ended.set()


def _start_run(tmp_path: Path, *args: str | Path) -> tuple[subprocess.Popen[str], str]:
    """``streamer run ...`` in the background; returns it and the live view's URL (read from stderr)."""
    process, url, _lines = start_run_with_live_view(tmp_path, args, URL_LINE)
    return process, url


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def long_clip(clip_factory: Callable[..., Path]) -> Path:
    """Two minutes at 25 FPS (the sample, looped): a --realtime run lasts until the test stops it."""
    return clip_factory("long.mp4", 3000, loop=True)


@pytest.fixture()
def view() -> Iterator[HttpView]:
    made = HttpView(HttpAddress("127.0.0.1", 0), announce=io.StringIO())
    yield made
    made.stop()


def _frame(index: int) -> np.ndarray:
    photo = cv2.imread(str(SAMPLE_IMAGES / "cat.jpg"))
    assert photo is not None
    image = cv2.resize(photo, (320, 240))
    stamp_index(image, index % 256)
    return image


# -- the browser, on a real run ------------------------------------------------------------------
@pytest.mark.slow
def test_chromium_shows_the_live_stream_and_labels_and_ctrl_c_stops_the_server(tmp_path: Path, long_clip: Path) -> None:
    out = tmp_path / "out.mp4"
    process, url = _start_run(tmp_path, long_clip, "--realtime", "-o", "http://127.0.0.1:0/", "-o", out, *MODEL_ARGS)
    chromium = Chromium()
    try:
        session = chromium.open(url)
        state: dict = {}

        def page_shows_frames() -> bool:
            state.update(_page_state(chromium, session))
            return state["frames"] >= 3 and state["events"] >= 3

        _wait_for(page_shows_frames, 180, "the page to show 3 different frames and 3 events")
        assert state["width"] == 320  # the annotated stream, at the clip's size
        assert state["labels"].strip()  # the latest labels, from /events
        status, page = _get(url)
        assert status == 200 and b'src' in page
    finally:
        chromium.close()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 130
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(OSError):  # the server stopped with the run
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert count_frames(out) > 0  # the file output was finalised alongside


@pytest.mark.slow
def test_many_viewers_and_a_slow_one_with_a_file_and_predictions(tmp_path: Path, clip_factory: Callable[..., Path]) -> None:
    """A file input is lossless: the slow viewer must not cost a frame of the file or of the JSON lines.

    150 frames, so the run lasts long enough for the viewers to connect (a 20-frame clip with a
    cached model can end before the last of eleven clients is in)."""
    clip = clip_factory("viewers.mp4", 150, loop=True)
    out, labels = tmp_path / "out.mp4", tmp_path / "labels.jsonl"
    process, url = _start_run(tmp_path, clip, "-o", "http://127.0.0.1:0/", "-o", out, "--predictions", labels, *MODEL_ARGS)
    slow = MjpegClient(url + "stream.mjpg", delay_per_kb=1.0)
    viewers = [MjpegClient(url + "stream.mjpg") for _ in range(10)]
    for client in (slow, *viewers):
        client.start()
    process.wait(300)
    assert process.returncode == 0  # the slow viewer (still reading what was sent) did not hold the run
    for client in viewers:
        assert client.ended.wait(30), "a viewer's connection outlived the run"
    assert all(v.status == 200 and v.content_type.startswith("multipart/x-mixed-replace") for v in viewers), [(v.status, v.content_type, getattr(v, "error", None)) for v in viewers]
    assert all(v.images for v in viewers), [len(v.images) for v in viewers]
    assert count_frames(out) == 150
    assert [r["frame"] for r in read_jsonl(labels)] == list(range(150))


# -- the server itself ---------------------------------------------------------------------------
def test_a_slow_viewer_never_blocks_writes_and_the_fast_one_gets_fresh_frames(view: HttpView) -> None:
    view.open((320, 240), 25.0)
    base = f"http://127.0.0.1:{view.port}/stream.mjpg"
    slow, fast = MjpegClient(base, delay_per_kb=1.0), MjpegClient(base)
    slow.start()
    fast.start()
    assert slow.connected.wait(10) and fast.connected.wait(10)
    for index in range(200):  # every write returns at once, whoever is reading
        view.write(_frame(index), "cat.jpg")
        time.sleep(0.01)
    _wait_for(lambda: bool(fast.images) and read_stamp(fast.images[-1]) == 199, 30, "the fast viewer to get the newest frame")
    stamps = [read_stamp(image) for image in fast.images]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # newest first, never an old frame again
    assert len(slow.images) < len(fast.images)
    assert view.viewers == 2
    view.stop()
    assert fast.ended.wait(10)
    _wait_for(lambda: view.viewers == 0, 10, "the stop to cut the slow viewer off too")


def test_events_are_one_json_object_per_frame(view: HttpView) -> None:
    view.open((320, 240), 25.0)
    sock = socket.create_connection(("127.0.0.1", view.port), timeout=10)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received = b""
    while b"retry:" not in received:
        received += sock.recv(4096)
    assert b"text/event-stream" in received
    prediction = Prediction((281, 282), (0.41, 0.21), ("tabby", "tiger cat"))
    for index in range(5):
        view.events.write(Frame(index, _frame(index), 0.0, "clip.mp4", pts_s=index / 25), prediction, 12.5)
    while received.count(b"data: ") < 5:
        received += sock.recv(4096)
    records = [json.loads(line[6:]) for line in received.decode().splitlines() if line.startswith("data: ")]
    assert [r["frame"] for r in records] == list(range(5))
    assert records[1] == {"frame": 1, "source": "clip.mp4", "pts_s": 0.04, "topk": [
        {"index": 281, "label": "tabby", "score": 0.41}, {"index": 282, "label": "tiger cat", "score": 0.21}], "latency_ms": 12.5}  # fmt: skip
    view.events.finalize()
    sock.settimeout(10)
    while sock.recv(4096):
        pass  # the end of the run closes the stream
    sock.close()


def test_a_token_is_required_off_loopback_on_every_endpoint() -> None:
    view = HttpView(HttpAddress("0.0.0.0", 0), token="s3cret-token", announce=io.StringIO())
    view.open((320, 240), 25.0)
    try:
        view.write(_frame(1), "cat.jpg")
        base = f"http://127.0.0.1:{view.port}"
        for path in ("/", "/stream.mjpg", "/events", "/nothing"):
            assert _get(base + path)[0] == 403
            assert _get(base + path + "?token=wrong")[0] == 403
            assert _get(base + path, {"Authorization": "Bearer nope"})[0] == 403
        assert _get(base + "/?token=s3cret-token")[0] == 200
        assert _get(base + "/", {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert _get(base + "/", {"X-Streamer-Token": "s3cret-token"})[0] == 200
        assert _get(base + "/nothing?token=s3cret-token")[0] == 404
        client = MjpegClient(base + "/stream.mjpg?token=s3cret-token")
        client.start()
        _wait_for(lambda: bool(client.images), 10, "a frame with the token")
        assert view.url.endswith("?token=s3cret-token")
    finally:
        view.stop()


def test_loopback_without_a_token_answers_only_requests_addressed_to_loopback(view: HttpView) -> None:
    view.open((320, 240), 25.0)
    base = f"http://127.0.0.1:{view.port}/"
    assert _get(base)[0] == 200
    assert _get(base, {"Host": f"localhost:{view.port}"})[0] == 200
    assert _get(base, {"Host": f"[::1]:{view.port}"})[0] == 200
    assert _get(base, {"Host": f"evil.example:{view.port}"})[0] == 403  # a rebound DNS name


def test_off_loopback_a_token_is_generated_and_printed_once(tmp_path: Path) -> None:
    announce = tmp_path / "announce.txt"
    with open(announce, "w") as stream:
        view = HttpView(HttpAddress("0.0.0.0", 0), announce=stream)
        view.open((320, 240), 25.0)
        view.stop()
    assert view.token and len(view.token) >= 24
    text = announce.read_text()
    assert text.count(view.token) == 1 and text.count("\n") == 1
    assert HttpView(HttpAddress("::1", 0)).token is None and HttpView(HttpAddress("localhost", 0)).token is None


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        view = HttpView(HttpAddress("127.0.0.1", port))
        with pytest.raises(SinkError, match=rf"http://127.0.0.1:{port}/: cannot listen \(address already in use\)"):
            view.open((320, 240), 25.0)


@pytest.mark.parametrize(
    "text", ["https://127.0.0.1:8080/", "http://127.0.0.1/", "http://:8080/", "http://127.0.0.1:8080/view", "http://127.0.0.1:99999/"]
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_http_output(text)


def test_ipv6_loopback_is_served(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    view = HttpView(parse_http_output("http://[::1]:0/"), announce=io.StringIO())
    try:
        view.open((320, 240), 25.0)
    except SinkError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert view.url.startswith("http://[::1]:")
        assert _get(view.url)[0] == 200
    finally:
        view.stop()


# -- the command line ----------------------------------------------------------------------------
def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    cases = (
        (["-o", "a.mp4", "-o", "./a.mp4"], "given as both -o and -o"),
        (["-o", "http://127.0.0.1:8765/", "-o", "http://0.0.0.0:8765/"], "given twice as an output"),
        (["-o", "x.mp4", "--predictions", "x.mp4"], "given as both -o and --predictions"),
    )
    for args, expected in cases:
        result = run_cli(["run", SAMPLE_IMAGES / "cat.jpg", *args, *MODEL_ARGS], cwd=tmp_path)
        assert expected in assert_clean_failure(result)
        assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_token_without_a_live_view_and_a_port_in_use(tmp_path: Path) -> None:
    result = run_cli(["run", SAMPLE_IMAGES / "cat.jpg", "--token", "abc", *MODEL_ARGS], cwd=tmp_path)
    assert "--token applies to a live view" in assert_clean_failure(result)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["run", SAMPLE_IMAGES / "cat.jpg", "-o", f"http://127.0.0.1:{port}/", "-o", "out.mp4", *MODEL_ARGS], cwd=tmp_path)
    assert "address already in use" in assert_clean_failure(result)
    assert list(tmp_path.iterdir()) == []  # the other output was not left behind
