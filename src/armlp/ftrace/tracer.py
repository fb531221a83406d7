"""The function tracer: an ftrace user whose callback (in the target) writes
``(ip, parent_ip, site sp)`` into a ring buffer that Python reads.

Nesting for ``--graph`` needs no return hook: a callee's entry sp is below
its caller's, a sibling's is not, so a stack of entry sps ordered by the
record sequence gives each call its depth.  The entry sp is the recorded
site sp plus the function's static frame size from the scan.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from armlp.analysis.scan import ScanResult
from armlp.ftrace.core import DynFtrace, Ftrace, FtraceOps
from armlp.machine.base import read_word
from armlp.runtime.layout import TRACE_RECORD, TRACE_RING


@dataclass(frozen=True)
class TraceEntry:
    """One traced call."""

    function: str
    caller: str
    ip: int
    parent_ip: int
    depth: int


class Symbolizer:
    """Addresses to ``function`` names (the innermost function symbol)."""

    def __init__(self, scan: ScanResult) -> None:
        funcs = sorted((r.fn.address, r.fn.size, r.fn.label) for r in scan.functions)
        self._addrs = [f[0] for f in funcs]
        self._funcs = funcs

    def __call__(self, address: int) -> str:
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return f"{address:#x}"
        start, size, label = self._funcs[i]
        if size and address >= start + size:
            return f"{address:#x}"
        return label


class FunctionTracer:
    """Trace calls of the functions matching *filters* (all when empty)."""

    def __init__(self, ftrace: Ftrace, filters: list[str] | None = None,
                 capacity: int = 1 << 16) -> None:
        if capacity & (capacity - 1):
            raise ValueError("capacity must be a power of two")
        self.ftrace = ftrace
        self.capacity = capacity
        self.filters = list(filters or [])
        self.lost = 0
        self._tail = 0
        self._ring = 0
        self._buf = 0
        self._stack: list[int] = []
        self._symbolize = Symbolizer(ftrace.scan)
        rt = ftrace.runtime
        self.ops = FtraceOps("function-tracer", rt.symbol("armlp_trace_func"),
                             regs_func=rt.symbol("armlp_trace_func_regs"), filters=self.filters)
        self.sites: list[DynFtrace] = []

    def start(self) -> None:
        m = self.ftrace.machine
        self._buf = m.alloc(self.capacity * TRACE_RECORD.size)
        self._ring = self.ftrace.runtime.symbol("armlp_trace_ring")
        m.write(self._ring, TRACE_RING.pack(0, self.capacity - 1, self._buf))
        self._tail = 0
        self.sites = self.ftrace.register_ftrace_function(self.ops)

    def stop(self) -> None:
        self.ftrace.unregister_ftrace_function(self.ops)

    def read(self) -> list[TraceEntry]:
        """Records written since the last read, oldest first."""
        m = self.ftrace.machine
        head = read_word(m, self._ring)
        n = head - self._tail
        if n <= 0:
            return []
        if n > self.capacity:
            self.lost += n - self.capacity
            self._tail = head - self.capacity
            n = self.capacity
        start = self._tail % self.capacity
        first = min(n, self.capacity - start)
        raw = m.read(self._buf + start * TRACE_RECORD.size, first * TRACE_RECORD.size)
        if n > first:
            raw += m.read(self._buf, (n - first) * TRACE_RECORD.size)
        self._tail = head
        out = []
        recs = self.ftrace.records
        for ip, parent, site_sp in struct.iter_unpack("<III", raw):
            rec = recs.get(ip)
            name = rec.name if rec else f"{ip:#x}"
            undo = rec.report.undo if rec else None
            entry_sp = site_sp + (undo.frame_size if undo else 0)
            stack = self._stack
            while stack and stack[-1] <= entry_sp:
                stack.pop()
            depth = len(stack)
            stack.append(entry_sp)
            out.append(TraceEntry(name, self._symbolize(parent), ip, parent, depth))
        return out
