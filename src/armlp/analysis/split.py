"""``armlp scan --json`` on two processors.

Finding a function's site, classifying its prologue and writing its JSON
entry depend on no other function, and a vmlinux has 45,000 of them.  So a
helper process, forked once the image is read (its pages are then shared,
never copied: nobody writes them), takes the later part of the function
list while this process names the functions and scans the first part.

The helper decodes no name but its own functions': it orders the function
symbols from the table's numbers (:meth:`SymbolTable.function_layout`),
finds mcount in the raw tables (:meth:`SymbolTable.named`), and makes its
part's records with sympos 0.  A sympos needs every symbol's name (221,000
in a vmlinux: a third of a one-process scan), so this process works those
out and sends the helper the few that are not 0 (:attr:`SymbolTable.sympos`)
before it scans its own part.  The helper sends back what the header needs
(its counts, its sites for the ``__mcount_loc`` check), then its JSON text;
this process writes everything, and the output is
:func:`~armlp.analysis.scan.scan`'s, byte for byte.

If the helper fails before it has sent anything, this process scans the
helper's part itself; the output is the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import signal
import struct
import sys
from collections.abc import Iterator
from itertools import chain, compress
from typing import BinaryIO, NoReturn, TextIO

from armlp.analysis.mcount import LOOKAHEAD
from armlp.analysis.scan import FunctionReport, ScanResult, Tally, scan, scan_part
from armlp.elf.image import SHT_SYMTAB, ElfImage
from armlp.errors import AnalysisError

#: Below this many symbols one process is as fast: forking and handing the
#: text back cost about what the second processor saves.
SPLIT_FROM = 40_000
#: The share of the functions this process scans: it also names every
#: symbol, checks ``__mcount_loc`` and writes the helper's part.
OWN_SHARE = 0.3
#: Bytes of the helper's text copied at a time.
PIECE = 1 << 20
_LENGTH = struct.Struct("<Q")


def processors() -> int:
    """The processors this process may run on."""
    return len(os.sched_getaffinity(0))


def worth_splitting(image: ElfImage) -> bool:
    """Whether two processes scan *image* faster than one."""
    symtab = next((s for s in image.sections if s.type == SHT_SYMTAB), None)
    return symtab is not None and symtab.size // 16 >= SPLIT_FROM and processors() >= 2


def write_scan_json(image: ElfImage, out: TextIO, *, jobs: int | None = None) -> ScanResult:
    """Write ``scan(image).to_json_text()`` to *out*, on two processes with
    *jobs* 2 (None: when :func:`worth_splitting`).  Returns the result this
    process holds (the first part's, when split)."""
    if jobs == 1 or (jobs is None and not worth_splitting(image)):
        result = scan(image)
        result.write_json(out)
        return result
    # Nothing buffered may be written twice, once by each process.
    out.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    up_read, up_write = os.pipe()           # helper -> this process
    down_read, down_write = os.pipe()       # this process -> helper: the sympos
    with contextlib.suppress(OSError):      # fewer, larger hand-overs if allowed
        fcntl.fcntl(up_write, fcntl.F_SETPIPE_SZ, PIECE)
    pid = os.fork()
    if pid == 0:
        os.close(up_read)
        os.close(down_write)
        _helper(image, down_read, up_write)
    os.close(up_write)
    os.close(down_read)
    try:
        with open(up_read, "rb", buffering=0) as pipe:
            result, size, text = _first_part(image, out, pipe, down_write)
    except BaseException:       # an error or ^C here: the helper is not waited for
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if size is not None and (text.size != size or os.waitstatus_to_exitcode(status)):
        raise AnalysisError(f"{image.path}: the scan's helper process ended after "
                            f"{text.size} of its {size} bytes: the JSON is incomplete")
    return result


def _cut(functions: int) -> int:
    return int(functions * OWN_SHARE)


def _helper(image: ElfImage, sympos_fd: int, fd: int) -> NoReturn:
    """The forked helper: scan the later part, send it, exit (never return
    into the caller's frames, whatever happens)."""
    code = 1
    try:
        table = image.symbols
        index, shndx = table.function_layout(by_address=True)
        cut = _cut(len(index))
        funcs = table.function_records(index[cut:], shndx[cut:], None)
        result, sites = scan_part(image, funcs, 0, len(funcs))
        with open(sympos_fd, "rb") as down:
            sympos: dict[int, int] = pickle.load(down)
        reports = result.functions
        for k in compress(range(len(reports)), map(sympos.__contains__, index[cut:])):
            report = reports[k]
            reports[k] = FunctionReport(report.fn._replace(sympos=sympos[report.fn.index]),
                                        *report[1:])
        pieces = list(result.functions_json())
        size = sum(map(len, pieces)) + max(len(pieces) - 1, 0)
        # Everything is computed before the first byte goes: a helper that
        # sent its header has its text ready.
        head = pickle.dumps((result.tally(), sites, size), pickle.HIGHEST_PROTOCOL)
        with open(fd, "wb") as pipe:
            pipe.write(_LENGTH.pack(len(head)))
            pipe.write(head)
            for k, piece in enumerate(pieces):
                if k:
                    pipe.write(b",")
                pipe.write(piece.encode("ascii"))
        code = 0
    finally:
        os._exit(code)


def _first_part(image: ElfImage, out: TextIO, pipe: BinaryIO, sympos_fd: int
                ) -> tuple[ScanResult, int | None, _Text]:
    """Name the functions, send the helper their sympos, scan the first
    part, take the helper's, write the whole.  Returns the result, the size
    of text the helper announced (None: it failed, and its part was scanned
    here) and the text as received."""
    table = image.symbols
    # Ordering: the sympos goes first; the helper waits for it to write.
    with contextlib.suppress(BrokenPipeError), open(sympos_fd, "wb") as down:
        pickle.dump(table.sympos, down, pickle.HIGHEST_PROTOCOL)
    index, shndx = table.function_layout(by_address=True)
    cut = _cut(len(index))
    # The first part's records, and the few after it that a function of
    # size 0 at its end looks at (see SiteFinder.find_all).
    ahead = cut + LOOKAHEAD
    funcs = table.function_records(index[:ahead], shndx[:ahead], table.sympos)
    result, sites = scan_part(image, funcs, 0, cut)
    text = _Text(pipe)
    sent = _receive(pipe)
    if sent is None:
        funcs = table.function_records(index, shndx, table.sympos)
        rest, rest_sites = scan_part(image, funcs, cut, len(funcs))
        result.functions += rest.functions
        result.check_mcount_loc(chain(sites, rest_sites))
        result.write_json(out)
        return result, None, text
    tally, helper_sites, size = sent
    result.check_mcount_loc(chain(sites, helper_sites))
    result.write_json(out, tally=result.tally().plus(tally), rest=text)
    return result, size, text


def _receive(pipe: BinaryIO) -> tuple[Tally, list[int | None], int] | None:
    """The helper's header, or None if it ended without sending one."""
    head = _read_exactly(pipe, _LENGTH.size)
    if head is None:
        return None
    body = _read_exactly(pipe, _LENGTH.unpack(head)[0])
    if body is None:
        return None
    sent: tuple[Tally, list[int | None], int] = pickle.loads(body)
    return sent


def _read_exactly(pipe: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        more = pipe.read(size - len(data))
        if not more:
            return None
        data += more
    return data


class _Text:
    """The helper's text, in pieces as they come, counted."""

    def __init__(self, pipe: BinaryIO) -> None:
        self.pipe = pipe
        self.size = 0

    def __iter__(self) -> Iterator[str]:
        while piece := self.pipe.read(PIECE):
            self.size += len(piece)
            yield piece.decode("ascii")
