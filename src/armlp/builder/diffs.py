"""A unified diff as ``armlp build`` needs it: which files it changes, which
lines of each (to name the functions whose source changed), and how it moves
the lines it leaves alone (so a ``__LINE__`` that only moved is not a change).
Applying it is GNU patch's job.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from armlp.errors import BuildError

_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(slots=True)
class FileDiff:
    """One file of the diff: its path in the tree and its hunks as
    ``(old start, old count, new start, new count)`` with the new-side lines
    each touches."""

    path: str
    hunks: list[tuple[int, int, int, int]] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    #: A hunk's context lines: old number -> new number (they stay as they are).
    kept: dict[int, int] = field(default_factory=dict)

    def moved(self, old: int) -> int | None:
        """The new number of old line *old* if the diff leaves that line as it
        is (None if a hunk removes or changes it)."""
        if old in self.kept:
            return self.kept[old]
        shift = 0
        for o_start, o_len, n_start, n_len in self.hunks:
            if old < o_start:
                break
            if old < o_start + o_len:
                return None
            shift = (n_start + n_len) - (o_start + o_len)
        return old + shift


def _strip(name: bytes, level: int) -> str:
    text = name.split(b"\t")[0].decode("utf-8", "replace").strip()
    parts = text.split("/")
    return "/".join(parts[level:]) if len(parts) > level else text


def parse_diff(raw: bytes, level: int) -> list[FileDiff]:
    """The files of unified diff *raw*, paths stripped of *level* components."""
    files: list[FileDiff] = []
    cur: FileDiff | None = None
    old_line = new_line = 0
    lines = raw.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith(b"--- ") and i + 1 < len(lines) and lines[i + 1].startswith(b"+++ "):
            new = lines[i + 1][4:]
            path = _strip(new if not new.startswith(b"/dev/null") else ln[4:], level)
            cur = FileDiff(path)
            files.append(cur)
            i += 2
            continue
        m = _HUNK.match(ln)
        if m and cur is not None:
            o_start, o_len = int(m[1]), int(m[2] or b"1")
            n_start, n_len = int(m[3]), int(m[4] or b"1")
            # a count of 0 names the line before the hunk
            cur.hunks.append((o_start + (o_len == 0), o_len, n_start + (n_len == 0), n_len))
            old_line, new_line = o_start, n_start
        elif cur is not None and cur.hunks:
            if ln.startswith(b"+"):
                cur.touched.add(new_line)
                new_line += 1
            elif ln.startswith(b"-"):
                cur.touched.add(new_line)        # a deletion touches the line after it
                old_line += 1
            elif ln.startswith(b" ") or not ln:
                cur.kept[old_line] = new_line
                old_line += 1
                new_line += 1
        i += 1
    if not files or not any(f.hunks for f in files):
        raise BuildError("the diff has no hunks (expected a unified diff, as diff -u or "
                         "git diff write)")
    return files


def apply_diff(diff: Path, tree: Path) -> list[FileDiff]:
    """Apply *diff* to *tree* with GNU patch (-p1, else -p0) and return its files."""
    raw = diff.read_bytes()
    first = ""
    for level in (1, 0):
        probe = subprocess.run(["patch", f"-p{level}", "--dry-run", "--batch", "--forward",
                                "--silent", "-d", str(tree), "-i", str(diff.resolve())],
                               capture_output=True, text=True, check=False)
        lines = (probe.stdout + probe.stderr).strip().splitlines()
        first = first or next((ln for ln in lines if "FAILED" in ln or "can't find" in ln
                               or "No file" in ln or "malformed" in ln.lower()),
                              lines[0] if lines else "")
        if probe.returncode == 0:
            subprocess.run(["patch", f"-p{level}", "--batch", "--forward", "--silent",
                            "-d", str(tree), "-i", str(diff.resolve())],
                           capture_output=True, check=True)
            return parse_diff(raw, level)
    raise BuildError(f"{diff} does not apply to the source tree"
                     f"{': ' + first.strip() if first else ''}")
