"""Work done in a forked child on the other core (``armlp scan --json`` of a
large image): the child shares the parent's parsed state for free (fork),
computes, and hands back one picklable value through a temporary file (a
pipe would block it once full, while the parent is still at its own share).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import IO, Generic, TypeVar

from armlp.errors import ArmlpError

T = TypeVar("T")


def _anonymous_file() -> IO[bytes]:
    """A file in memory, gone when closed (tempfile where there is no memfd)."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("armlp-forked"), "w+b")
    import tempfile
    return tempfile.TemporaryFile()      # closed by Forked.result


def can_fork() -> bool:
    """Whether a second core and fork() are there to use."""
    return hasattr(os, "fork") and (os.cpu_count() or 1) > 1


class Forked(Generic[T]):
    """*work* running in a forked child; :meth:`result` waits for its value.

    An :class:`~armlp.errors.ArmlpError` in the child is raised again in the
    parent (the same one line a serial run gives); anything else is an
    ArmlpError naming it.  The child never returns into the caller's code:
    it leaves with ``os._exit``, its buffers and exit handlers untouched."""

    def __init__(self, work: Callable[[], T]) -> None:
        self._file = _anonymous_file()
        self._pid = os.fork()
        if self._pid == 0:          # the child
            code = 1
            try:
                try:
                    value: object = ("ok", work())
                except ArmlpError as exc:
                    value = ("error", exc)
                except BaseException as exc:      # reported to the parent
                    value = ("error", ArmlpError(f"internal error in a forked worker "
                                                 f"({type(exc).__name__}: {exc})"))
                pickle.dump(value, self._file, protocol=pickle.HIGHEST_PROTOCOL)
                self._file.flush()
                code = 0
            finally:
                os._exit(code)

    def result(self) -> T:
        _, status = os.waitpid(self._pid, 0)
        try:
            if status != 0:
                raise ArmlpError(f"a forked worker failed (wait status {status:#x})")
            self._file.seek(0)
            kind, value = pickle.load(self._file)
        finally:
            self._file.close()
        if kind == "error":
            raise value
        return value  # type: ignore[no-any-return]
