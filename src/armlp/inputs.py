"""Reading the files a user names: regular files only, of bounded size.

A device (``/dev/zero`` never ends), a FIFO (never opens, or never ends) or
a directory given as a program, patch or image is refused with one line
before anything is read; a file larger than :data:`MAX_INPUT` too.  The
file is opened without blocking and checked on the open descriptor, so it
cannot be swapped for a FIFO between the check and the read.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from armlp.errors import ArmlpError

#: The largest input armlp reads (a kernel image with debug information is
#: a few hundred MB).
MAX_INPUT = 2 << 30


class InputError(ArmlpError):
    """An input file is missing, unreadable, not a regular file, or too large."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input(path: str | Path, what: str = "file") -> Path:
    """*path* if it names a regular file of at most :data:`MAX_INPUT` bytes."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise InputError(f"{p}: no such file" if isinstance(exc, FileNotFoundError)
                         else f"{p}: cannot read: {exc.strerror or exc}") from None
    _check(p, st, what)
    return p


def _a(what: str) -> str:
    """*what* with its indefinite article: "a file", "an ELF file"."""
    return f"{'an' if what and what[0].lower() in 'aeiou' else 'a'} {what}"


def _check(p: Path, st: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: {_kind(st.st_mode)}, not {_a(what)}")
    if st.st_size > MAX_INPUT:
        raise InputError(f"{p}: {st.st_size} bytes, larger than the {MAX_INPUT >> 20} MiB "
                         f"armlp reads")


#: A function given the open descriptor and the size of a file, returning
#: the byte ranges ``(start, end)`` the caller will never look at.
Skip = Callable[[int, int], Sequence[tuple[int, int]]]


def read_input(path: str | Path, what: str = "file", *,
               skip: Skip | None = None) -> bytes | mmap.mmap:
    """The bytes of the regular file *path* (see the module docstring).

    With *skip*, the ranges it names are not read and hold zeros: the file
    is read into an anonymous mapping, whose untouched pages cost nothing
    (a vmlinux is 243 MB, 220 of them DWARF that armlp never reads).  An
    anonymous mapping, not a mapping of the file: a file truncated under a
    file mapping kills the reader with SIGBUS.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, IsADirectoryError):
            raise InputError(f"{p}: a directory, not {_a(what)}") from None
        raise InputError(f"{p}: no such file" if isinstance(exc, FileNotFoundError)
                         else f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check(p, st, what)
        holes = sorted(skip(fd, st.st_size)) if skip is not None and st.st_size else []
        if holes:
            return _read_around(p, fd, st.st_size, holes)
        chunks: list[bytes] = []
        left = st.st_size + 1           # one more: a file that grew is still bounded
        while left > 0:
            chunk = os.read(fd, left)   # as a rule all of it at once: no join
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise InputError(f"{p}: changed while being read")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _read_around(p: Path, fd: int, size: int, holes: list[tuple[int, int]]) -> mmap.mmap:
    """The *size* bytes of *fd* except *holes* (sorted), in an anonymous mapping."""
    buf = mmap.mmap(-1, size)
    view = memoryview(buf)
    pos = 0
    for start, end in [*holes, (size, size)]:
        start, end = max(pos, min(start, size)), max(pos, min(end, size))
        while pos < start:
            n = os.preadv(fd, [view[pos:start]], pos)
            if n <= 0:
                raise InputError(f"{p}: changed while being read")
            pos += n
        pos = end
    view.release()
    return buf
