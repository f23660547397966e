"""Installing beside a system OpenCV (README, "Jetson"): what the install must keep.

The tests marked ``gstreamer`` run in the venv ``.ci/run`` makes the README's Jetson way
(``--system-site-packages`` over Debian's ``python3-opencv``); elsewhere they skip.  The
others check, everywhere, that the Jetson requirements stay in step with ``pyproject.toml``
and that the README's Jetson command is the one ``.ci/run`` runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

import pytest

from streamer.sources import opencv_has_gstreamer

ROOT = Path(__file__).resolve().parents[1]
KEPT = {"numpy", "torch", "torchvision", "opencv-python"}
"""What a Jetson has already and the Jetson install must not touch."""
SYSTEM_PYTHON = Path("/usr/bin/python3")

in_system_opencv_venv = pytest.mark.skipif(
    not (opencv_has_gstreamer() and sys.prefix != sys.base_prefix),
    reason="not the --system-site-packages venv over a GStreamer OpenCV (.ci/run makes it)",
)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def _jetson_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Jetson\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)[0].strip()


def test_jetson_requirements_are_the_dependencies_less_what_a_jetson_keeps() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_name(r): r for r in project["dependencies"]}
    lines = [line.strip() for line in (ROOT / "requirements/jetson.txt").read_text().splitlines()]
    listed = {_name(line): line for line in lines if line and not line.startswith("#")}
    assert KEPT <= set(declared)
    assert listed == {name: req for name, req in declared.items() if name not in KEPT}


def test_readme_jetson_command_starts_with_pip_install_and_keeps_the_system_packages() -> None:
    command = _jetson_command()
    assert command.startswith("pip install ")
    assert "requirements/jetson.txt" in command and "keep_system.py" in command and "--no-deps -e ." in command
    assert "/usr/bin/python3 -m venv --system-site-packages .venv-gst" in (ROOT / ".ci/run").read_text()


def test_keep_system_pins_what_is_installed() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "requirements/keep_system.py")], capture_output=True, text=True, check=True)
    pins = dict(pin.split("==", 1) for pin in out.stdout.split())
    for name in ("numpy", "torch", "torchvision"):
        assert pins.get(name) == version(name)


# -- in the Jetson-style venv ------------------------------------------------------------------
@pytest.mark.gstreamer
@in_system_opencv_venv
def test_cv2_is_the_system_one_and_still_has_gstreamer() -> None:
    import cv2

    own_site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert not Path(cv2.__file__).resolve().is_relative_to(own_site), cv2.__file__
    assert re.search(r"GStreamer:\s*YES", cv2.getBuildInformation())
    for wheel in ("opencv-python", "opencv-python-headless", "opencv-contrib-python"):
        with pytest.raises(PackageNotFoundError):
            distribution(wheel)


@pytest.mark.gstreamer
@in_system_opencv_venv
def test_numpy_is_the_system_one() -> None:
    import numpy

    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 to compare with")
    system = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import numpy; print(numpy.__version__, numpy.__file__)"],
        capture_output=True, text=True, check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.split()
    assert [numpy.__version__, str(Path(numpy.__file__).resolve())] == [system[0], str(Path(system[1]).resolve())]


@pytest.mark.gstreamer
@in_system_opencv_venv
def test_numpy_torch_and_torchvision_are_the_ones_there_before_the_install() -> None:
    before = os.environ.get("STREAMER_KEPT_BEFORE_INSTALL")
    if not before:
        pytest.skip("STREAMER_KEPT_BEFORE_INSTALL not set (.ci/run records what was there before the install)")
    pins = dict(pin.split("==", 1) for pin in Path(before).read_text().split())
    assert set(pins) == {"numpy", "torch", "torchvision"}
    assert {name: version(name) for name in pins} == pins
