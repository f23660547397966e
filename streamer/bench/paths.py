"""How the bench shows a path in a report (reports get committed, so paths are relative where they can be)."""

from __future__ import annotations

from pathlib import Path


def display_path(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
