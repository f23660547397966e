"""CI only: make the PyTorch of one venv visible, read-only, to another (the Jetson install test).

On a Jetson, NVIDIA's torch and torchvision are installed before streamer; the README's Jetson
install must keep them.  CI has no such torch outside its main venv and no time to download
another 2 GB, so this links torch, torchvision and what they need (never numpy, Pillow or
OpenCV, which the system provides) from the running interpreter's site-packages into
``TARGET/shared-torch`` and adds that folder to TARGET's path with a ``.pth`` file.  Both
interpreters must be the same CPython minor version.

Usage: MAIN_VENV/bin/python .ci/share_torch.py GST_VENV_SITE_PACKAGES
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("torch", "torchvision")
NEVER = {"numpy", "pillow", "opencv-python", "opencv-python-headless", "setuptools", "pip"}


def closure() -> list[str]:
    seen: set[tuple[str, str]] = set()
    names: dict[str, None] = {}
    todo: list[tuple[str, str]] = [(name, "") for name in ROOTS]
    while todo:
        raw, extra = todo.pop()
        name = canonicalize_name(raw)
        if (name, extra) in seen or name in NEVER:
            continue
        seen.add((name, extra))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        names[name] = None
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo.append((req.name, ""))
                todo.extend((req.name, e) for e in req.extras)
    return list(names)


def main() -> int:
    target_site = Path(sys.argv[1])
    shared = target_site / "shared-torch"
    shared.mkdir(exist_ok=True)
    for name in closure():
        dist = distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            src = Path(str(dist.locate_file(top)))
            link = shared / top
            if src.exists() and not link.exists() and top not in ("__pycache__", "bin"):
                link.symlink_to(src)
        print(f"shared {name} {dist.version}")
    (target_site / "shared-torch.pth").write_text(str(shared) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
