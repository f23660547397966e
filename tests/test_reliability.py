"""docs/RELIABILITY.md and the fault suite (tests/test_fault_*.py) stay in step.

Every promise in the document names the test that proves it; these checks keep the names honest:
each test the document names exists, each fault test is named in the document, and each known bug
(a strict ``xfail`` whose reason starts with ``BUG:``) is listed under "Known gaps".  Nothing is
imported or run: the test files are read with :mod:`ast`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "RELIABILITY.md"
FAULT_FILES = sorted((REPO / "tests").glob("test_fault_*.py"))
REFERENCE = re.compile(r"(test_fault_[a-z_]+\.py)::(test_[A-Za-z0-9_]+)")


def _tests(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def _bug_reason(func: ast.FunctionDef) -> str | None:
    """The reason of a strict ``pytest.mark.xfail(..., reason="BUG: ...")`` decorator, if any."""
    for deco in func.decorator_list:
        if not (isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.xfail"):
            continue
        keywords = {k.arg: k.value for k in deco.keywords}
        strict = keywords.get("strict")
        reason = keywords.get("reason")
        if reason is not None:
            text = ast.literal_eval(reason)
            if text.startswith("BUG:"):
                assert isinstance(strict, ast.Constant) and strict.value is True, f"{func.name}: a known bug is xfail(strict=True)"
                return str(text)
    return None


def test_the_fault_suite_exists() -> None:
    assert DOC.is_file()
    assert len(FAULT_FILES) >= 8, FAULT_FILES


def test_every_test_the_document_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    named = REFERENCE.findall(text)
    assert named, "the document names no test"
    missing = []
    for filename, test in named:
        path = REPO / "tests" / filename
        if not path.is_file() or test not in _tests(path):
            missing.append(f"{filename}::{test}")
    assert not missing, f"docs/RELIABILITY.md names tests that do not exist: {missing}"


def test_every_fault_test_is_in_the_document() -> None:
    named = set(REFERENCE.findall(DOC.read_text(encoding="utf-8")))
    absent = [f"{p.name}::{t}" for p in FAULT_FILES for t in _tests(p) if (p.name, t) not in named]
    assert not absent, f"fault tests that docs/RELIABILITY.md does not mention: {absent}"


def test_every_known_bug_is_listed_under_known_gaps() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "## Known gaps" in text
    gaps = text.split("## Known gaps", 1)[1].split("\n## ", 1)[0]
    listed = set(REFERENCE.findall(gaps))
    bugs = [(p.name, name) for p in FAULT_FILES for name, func in _tests(p).items() if _bug_reason(func)]
    # No known bug at all is fine (none is open today): the section stays, for the next one found.
    unlisted = [f"{f}::{t}" for f, t in bugs if (f, t) not in listed]
    assert not unlisted, f"known bugs (xfail BUG:) missing from 'Known gaps': {unlisted}"
    stale = [f"{f}::{t}" for f, t in listed if (f, t) not in bugs]
    assert not stale, f"'Known gaps' lists tests that are no longer xfail BUG: {stale} (fixed? move them up)"
