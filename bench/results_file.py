"""bench/RESULTS.md, one section at a time: a run rewrites only the sections it measured, each as it is measured.

Every section sits between two markers, ``<!-- bench:KEY -->`` and ``<!-- /bench:KEY -->``. Writing a section
replaces its own block and nothing else, so ``--only search`` keeps the scan and packing tables, and a run killed
halfway keeps every section it had finished. A section not in the file yet goes before ``before`` (the analysis
against the targets, for the CPU sections), or at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

TARGETS = "### Against the targets"


def markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"


def write_section(path: Path, key: str, text: str, before: str | None = None) -> None:
    """Put ``text`` as section ``key`` into ``path`` (atomically), leaving every other section as it was."""
    begin, end = markers(key)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    if begin in old and end in old[old.index(begin) :]:
        start = old.index(begin)
        stop = old.index(end, start) + len(end)
        new = old[:start] + block.rstrip("\n") + old[stop:]
    elif before is not None and before in old:
        at = old.index(before)
        new = old[:at] + block + "\n" + old[at:]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(new)
    temporary.replace(path)


def read_section(path: Path, key: str) -> str | None:
    """The text of section ``key`` (without its markers), or None."""
    begin, end = markers(key)
    text = path.read_text() if path.exists() else ""
    if begin not in text:
        return None
    start = text.index(begin) + len(begin)
    return text[start : text.index(end, start)].strip()
