"""Print ``name==version`` for the NumPy, PyTorch and torchvision this interpreter already has.

Passed to ``pip install`` with ``requirements/jetson.txt`` (README, "Jetson"): pip then keeps
exactly those versions - a package that would need another one makes pip stop with a
conflict instead of replacing JetPack's NumPy or NVIDIA's torch.  Runs on Python 3.8+,
imports none of them (it reads their installed metadata).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

KEPT = ("numpy", "torch", "torchvision")


def main() -> int:
    pins = []
    for name in KEPT:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            print(f"keep_system.py: {name} is not installed here; install NVIDIA's wheel first (README, Jetson)", file=sys.stderr)
    print(" ".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
