"""Fault-injection helpers for the reliability suite (``tests/test_fault_*.py``).

Everything here is test scaffolding, named for what it does:

* :mod:`faults.media` - real frames from the bundled samples, a serial number
  stamped into each frame (so the output video tells which frame it is),
  frame counting;
* :mod:`faults.mjpeg` - a local MJPEG-over-HTTP camera that can be stalled,
  killed and restarted on the same port; a socket that never answers;
* :mod:`faults.backends` - :class:`~engines.backends.base.Backend` subclasses
  that are instant, slow, hang, compute in libtorch for long, or fail on a
  given call;
* :mod:`faults.fakecli` - ``python -m faults.fakecli BACKEND run ...``: the real
  ``streamer`` command line with only the backend replaced;
* :mod:`faults.proc` - subprocess helpers: the environment, a live stderr
  reader, a resource sampler, the one-clear-line check;
* :mod:`faults.fs` - a tiny or read-only tmpfs (root only), a file size limit
  for a child process (anywhere);
* :mod:`faults.fixtures` - pytest fixtures the fault modules import by name,
  among them ``cli``: ``streamer ARGS`` run in-process with a fake backend.

The helpers that are not the fault suite's own - the sample paths, frame reading and counting,
the clip encoder, the fake backend and its slow and raising kinds, the silent socket and closed
port, the child's environment - live once in ``tests/helpers.py``; these modules import them from
there (and re-export them under the names the fault tests use).  Nothing else in ``tests/`` is
used, and never ``conftest.py``: ``python -m faults.fakecli`` runs in a child process with only
the repository and ``tests/`` on its path (:func:`faults.proc.cli_env`), where ``helpers`` imports
as it does here.
"""
