"""``python -m streamer``."""

from streamer.cli import entry

entry()
