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

It depends on nothing else in ``tests/`` so it can be read (and trusted) alone.
"""
