"""Whether anything in a stopped target can still reach a piece of memory.

A disabled patch is unreachable from armlp's own structures (no site, func
stack or ops leads into it), so it may be freed once nothing *of the
program* refers to it either: no thread executes it, none will return into
it, and no data of the program holds one of its addresses (a callback a
patched function registered, the frames of a coroutine or of a signal
handler's interrupted stack).  :func:`take` copies, with every thread
stopped, everything that could: every thread's registers, its stack from
just below sp to the end of the stack's mapping (below sp only dead frames,
which keep stale return addresses for ever), and every other writable
mapping of the program whole.  armlp's own memory is left out: its
structures are checked by the caller, which knows what each leads to.

The proof is conservative: a stale copy of an address (in an unused slot of
a live frame, in freed heap) keeps the memory.  Once copied the threads may
run: reachability only shrinks, so the scan of the copy may follow.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from armlp.errors import MachineError
from armlp.machine.base import Machine, Region

#: How far below a thread's sp its stack is copied: a return (``pop {...,
#: pc}``, ``ldmdb fp, {fp, sp, pc}``) interrupted by qemu between storing the
#: new sp and pc leaves its return address just below sp.  A thread stopped
#: inside a translated block may also have pushed words below the sp its
#: state shows; those came from registers whose stored copies still hold the
#: values (qemu stores them before every memory access and at every branch).
SP_SLACK = 16


@dataclass
class Snapshot:
    """Registers (and addresses the caller derived) and memory copies."""

    words: set[int] = field(default_factory=set)
    chunks: list[bytes] = field(default_factory=list)
    _by_top: dict[int, list[int]] = field(default_factory=dict)

    def refers(self, lo: int, hi: int) -> bool:
        """Whether a register or an aligned memory word holds an address in
        ``[lo, hi)``."""
        if any(lo <= w < hi for w in self.words):
            return True
        for top in range(lo >> 16, ((hi - 1) >> 16) + 1):
            found = self._with_top(top)
            i = bisect.bisect_left(found, lo)
            if i < len(found) and found[i] < hi:
                return True
        return False

    def _with_top(self, top: int) -> list[int]:
        """The aligned memory words whose upper half is *top*, sorted: one
        search (at C speed) through the copies per 64 KiB of addresses
        asked about, however many ranges lie there."""
        found = self._by_top.get(top)
        if found is None:
            needle = struct.pack("<H", top)
            words = []
            for buf in self.chunks:
                i = buf.find(needle, 2)
                while i != -1:
                    if i % 4 == 2:
                        words.append(struct.unpack_from("<I", buf, i - 2)[0])
                    i = buf.find(needle, i + 1)
            found = self._by_top[top] = sorted(words)
        return found


def take(machine: Machine, own: Sequence[tuple[int, int]]) -> Snapshot:
    """Copy what could refer to armlp memory (see the module docstring);
    *own* are armlp's ranges, left out.  Every thread must be stopped.
    MachineError when a thread's stack or a mapping cannot be read: no
    proof then."""
    regions = machine.regions()
    snap = Snapshot()
    stacks: set[tuple[int, int]] = set()
    for tid in machine.threads():
        regs = machine.get_regs(tid)
        snap.words.update(regs.as_list())
        lo, hi = _region_of(regions, regs.sp)
        stacks.add((lo, hi))
        low = max(lo, (regs.sp - SP_SLACK) & ~3)
        snap.chunks.append(machine.read(low, hi - low) if hi > low else b"")
    for r in regions:
        lo, hi = r.start, r.end
        if (lo, hi) in stacks or not r.writable:
            continue
        if any(a < hi and lo < b for a, b in own):
            continue
        snap.chunks.append(machine.read(lo, hi - lo))
    return snap


def _region_of(regions: list[Region], sp: int) -> tuple[int, int]:
    for r in regions:
        if r.start <= sp < r.end:
            return (r.start, r.end)
    raise MachineError(f"a thread's sp {sp:#010x} is in no mapped region")
