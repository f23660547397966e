"""``python -m faults.fakecli BACKEND ARGS...``: the real ``streamer`` command line, fake backend.

Everything ``streamer ARGS...`` does - argument parsing, logging, opening the
source and the outputs, the pipeline, signal handling, error reporting and the
exit code - is the product's code.  Only ``engines.backends.create_backend`` is
replaced, by :func:`faults.backends.from_spec` ``(BACKEND)``, so a test can
make the model instant, slow, or fail on a given frame.
"""

from __future__ import annotations

import runpy
import sys
from dataclasses import replace
from typing import Any


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m faults.fakecli BACKEND [streamer args...]", file=sys.stderr)
        return 2
    spec_text, rest = argv[0], argv[1:]

    import engines.backends  # the registry only: no torch, no OpenCV yet

    def create_backend(name: str, spec: Any, weights: Any, options: Any) -> Any:
        # Imported here, after streamer.cli.main has set up OpenCV's logging, as the product does.
        from faults.backends import from_spec

        return from_spec(spec_text, replace(options, device="cpu"))

    engines.backends.create_backend = create_backend
    # Exactly what `python -m streamer ARGS` does from here on, exit path included.
    sys.argv = ["streamer", *rest]
    runpy.run_module("streamer", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
