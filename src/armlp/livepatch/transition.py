"""The consistency model: threads switch one by one (kernel/livepatch/transition.c).

Enabling or disabling a patch is a *transition*.  Each thread of the
program is unpatched or patched; while the transition lasts, the handler in
the target (``klp_ftrace_handler``) sends a call of a function in
transition to the new function or the old one by the state of the calling
thread, which it finds by the stack it runs on (``klp_patch_state``: a
table of stack ranges, one state word each; a system call would be visible
to the program).  A thread switches to the target state once none of the
functions being switched is on its stack, proven by a reliable walk
(:mod:`armlp.analysis.unwind`) from exact registers; threads that share one
stack mapping switch together.  When every stack has switched the
transition completes: the flags are cleared and the fast path comes back.

So a thread never mixes old and new functions of one patch: the guarantee
a fix that changes what functions agree on between calls needs.

The table lists every writable mapping at the start, each in the initial
state, before any node is marked; a stack mapped later belongs to a thread
born during the transition, which has no old frame and gets the target
state.  Limits, said here and in the README: a context the program
switches to itself (``swapcontext``, coroutines) is not seen, and a signal
handler on an alternate stack gets the target state.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from armlp.analysis.unwind import CodeMap, apcs_saved_pc, walk_stack
from armlp.arm.a32 import CPSR_IT, CPSR_MODE_USR, CPSR_T
from armlp.errors import MachineError, PatchError
from armlp.livepatch.module import KlpFunc, KlpPatch
from armlp.machine.base import Machine, Regs, read_word, write_word
from armlp.runtime.layout import (
    KLP_NODE_TRANSITION,
    KLP_PATCHED,
    KLP_THREAD,
    KLP_TRANSITION,
    KLP_UNPATCHED,
)

if TYPE_CHECKING:
    from armlp.livepatch.core import Livepatch

STATE_NAMES = {KLP_PATCHED: "patched", KLP_UNPATCHED: "unpatched"}
RUNNING = "running"
#: How much of one thread's stack the conservative scan reads at most.
MAX_SCAN = 16 << 20
#: How long a running thread must have run since the code writes to be
#: out of any translation made before them: one runs in well under a
#: microsecond; the rest is room for the kernel's work on the thread's
#: behalf that is no progress of its own (a freeze and thaw of armlp's
#: costs a thread 6 us, measured: 80 of them fit).
RAN_NS = 500_000
#: The bits a user-mode cpsr has clear: E, A, I, F; J and the reserved 23:20.
CPSR_ZERO = 0x01F003C0


@dataclass(frozen=True)
class Blocking:
    """A function a thread must not be in to switch, and how to see it: its
    code range, and the word its live APCS frame holds (None: any word in
    the range, a return address into it)."""

    lo: int
    hi: int
    name: str
    saved_pc: int | None
    #: Its live mcount site (the original function's; a patch's are NOPs).
    site: int | None = None
    #: Thumb code: a return address into it has bit 0 set.
    thumb: bool = False

    def holds(self, address: int) -> bool:
        """Whether *address* is in the function, or just past its end (the
        return address of a final call)."""
        return self.lo <= address <= self.hi

    def returns_into(self, word: int) -> bool:
        """Whether a stack word may be a return address into the function.

        Not: its entry (a pointer to the function: a return address follows
        a call inside it); an even word into Thumb code; the mcount site or
        the return of its call, which only armlp's trampoline has reason to
        hold (its argument and saved pc) and which are live only while the
        thread is inside it, which :meth:`Transition._check` rules out first:
        elsewhere they are stale copies, in slots a later frame reserved but
        never wrote, that would block a function without an APCS frame (Thumb
        code) forever."""
        address = word & ~1
        if not self.lo < address <= self.hi or (self.thumb and not word & 1):
            return False
        return not self.trampoline_word(word)

    def interrupted(self, word: int, after: int) -> bool:
        """Whether *word* and the one *after* it may be a signal frame's saved
        pc and cpsr (``struct sigcontext``: arm_pc, arm_cpsr) for a thread
        interrupted in the function: user mode, in its instruction set, with
        the bits a user cpsr has clear (E, A, I, F, J, the reserved ones,
        and in ARM state the IT bits).  A resume point, unlike a return
        address: any word of the function."""
        zero = CPSR_ZERO if self.thumb else CPSR_ZERO | CPSR_IT
        return self.holds(word) and after & 0x1F == CPSR_MODE_USR and not after & zero and \
            bool(after & CPSR_T) == self.thumb

    def trampoline_word(self, word: int) -> bool:
        """The mcount site or its return (see :meth:`returns_into`)."""
        return self.site is not None and word & ~1 in (self.site, self.site + 4)


def _evidence(m: Machine, regs: Regs, stack: StackEntry, blocking: list[Blocking]) -> str:
    """The first register or live stack word that places the thread in a
    blocking function ('' if none): the conservative test of
    :meth:`Transition._check`.  Only the stack above sp is live; below it
    lie dead frames (the trampoline's of the last call, say); a word there
    counts when it may return into the function (Blocking.returns_into), or
    when it is a signal frame's saved pc there (Blocking.interrupted).
    r0-r12 count anywhere in a function but at its mcount site and the
    site's return, which ip keeps after the trampoline's return (``bx ip``),
    a stale copy as the stack's (lr and pc always count)."""
    for i, w in enumerate([*regs.r, regs.lr, regs.pc]):
        name = next((b.name for b in blocking
                     if b.holds(w) and (i >= 13 or not b.trampoline_word(w))), "")
        if name:
            reg = ("lr", "pc")[i - 13] if i >= 13 else f"r{i}"
            return f"{reg} in {name}"
    lo = max(stack.lo, regs.sp & ~3)
    if stack.hi - lo > MAX_SCAN:
        return f"stack of {stack.hi - lo} bytes, too deep to scan"
    if not blocking:
        return ""
    exact = {b.saved_pc: b.name for b in blocking if b.saved_pc is not None}
    spans = [b for b in blocking if b.saved_pc is None]
    data = m.read(lo, stack.hi - lo)
    words = (*struct.unpack(f"<{len(data) // 4}I", data), 0)
    # Only a word inside some blocking function (a Thumb return address one
    # past it) or an exact saved pc can be evidence: the rest, most of a
    # stack, is passed over in one comparison each (this runs with every
    # thread held, once per running thread and attempt).
    low, high = min(b.lo for b in blocking), max(b.hi for b in blocking) + 1
    for off in [i for i, w in enumerate(words[:-1]) if low <= w <= high or w in exact]:
        w = words[off]
        name = exact.get(w) or next((b.name for b in spans if b.returns_into(w)), "") or \
            next((b.name for b in blocking if b.interrupted(w, words[off + 1])), "")
        if name:
            return f"{name}'s frame at sp{4 * off + lo - regs.sp:+#x}"
    return ""


@dataclass
class StackEntry:
    """One row of the target's table: a stack mapping and its state."""

    lo: int
    hi: int
    state: int
    #: Why it has not switched yet, per thread on it (tid -> reason).
    blocked: dict[int, str] = field(default_factory=dict)


class Transition:
    """One patch's transition to *target* (KLP_PATCHED or KLP_UNPATCHED)."""

    def __init__(self, lp: Livepatch, patch: KlpPatch, target: int) -> None:
        self.lp = lp
        self.patch = patch
        self.target = target
        self.started = time.monotonic()
        self.entries: list[StackEntry] = []
        self.attempts = 0
        self.forced = False
        self.stall_reported = False
        #: The stack (table row) each thread was last seen on.
        self._stack_of: dict[int, int] = {}
        #: How long each thread had run once the code writes took effect
        #: (:meth:`written`, else the first attempt), and at this attempt
        #: (ns; None where every register is exact): see :meth:`_check`.
        self._ran_from: dict[int, int] | None = None
        self._ran_now: dict[int, int] | None = None
        #: The functions whose dispatch changes: the patch's funcs on top of
        #: their stacks when the transition started.
        self.funcs: list[KlpFunc] = []

    @property
    def table(self) -> int:
        return self.lp.transition_table(len(self.entries))

    # -- start ------------------------------------------------------------------

    def fill_table(self, undo: list[Callable[[], None]] | None = None) -> None:
        """Every writable mapping in the initial state, then the target
        state; the table pointer is set once, by the first transition.
        Ordering: all of it before any node is marked transition.  With
        *undo*, what it overwrote is put back on rollback."""
        m = self.lp.machine
        initial = KLP_UNPATCHED if self.target == KLP_PATCHED else KLP_PATCHED
        # armlp's own memory is not left out: the kernel merges neighbouring
        # anonymous mappings, so a thread's stack can share one line of the
        # map with armlp's pages (seen: a worker's stack next to the agent's;
        # dropped, its thread found no row and took the target state at once).
        self.entries = [StackEntry(r.start, r.end, initial) for r in m.regions() if r.writable]
        table = self.table
        rows = b"".join(KLP_THREAD.pack(e.lo, e.hi, e.state) for e in self.entries)
        pointer = self.lp.target.runtime.symbol("klp_transition")
        if undo is not None:
            old = m.read(table, KLP_TRANSITION.size + len(rows))
            old_pointer = read_word(m, pointer)

            def restore() -> None:
                m.write(table, old)
                write_word(m, pointer, old_pointer)
            undo.append(restore)
        m.write(table + KLP_TRANSITION.size, rows)
        m.write(table, KLP_TRANSITION.pack(self.target, len(self.entries)))
        if read_word(m, pointer) != table:
            write_word(m, pointer, table)

    def mark(self, funcs: list[KlpFunc]) -> None:
        """Mark the nodes whose dispatch changes (after :meth:`fill_table`)."""
        self.funcs = funcs
        for f in funcs:
            write_word(self.lp.machine, f.node + KLP_NODE_TRANSITION, 1)

    def written(self) -> None:
        """The transition's code writes have taken effect (their translations
        dropped): how long each thread has run so far, the mark its progress
        is measured from (:meth:`_ran`), taken with every thread held (a
        running thread's count lags until its next tick)."""
        m = self.lp.machine
        with m.all_stopped() as stopped:
            if stopped:
                self._ran_from = m.cpu_times()

    def unmark(self) -> None:
        for f in self.funcs:
            if f.node:
                write_word(self.lp.machine, f.node + KLP_NODE_TRANSITION, 0)

    # -- switching threads --------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(e.state == self.target for e in self.entries)

    def _blocking(self, code: CodeMap) -> list[Blocking]:
        """The code a thread must not be in to switch: what an unswitched
        thread still runs (the func below, or the original, when patching;
        the new function when unpatching)."""
        stacks = self.lp.funcs.by_site
        m = self.lp.machine
        out = []
        for f in self.funcs:
            if self.target == KLP_PATCHED:
                funcs = stacks[f.site].funcs
                i = funcs.index(f)
                addr = funcs[i - 1].new_func if i > 0 else f.old_addr
            else:
                addr = f.new_func or f.old_addr       # a nop func runs the original
            fn = code.find(addr & ~1)
            if fn is None:
                raise PatchError(f"{self.patch.name}: no code map entry for {f.label}")
            out.append(Blocking(fn.start, fn.end, fn.name,
                                apcs_saved_pc(lambda a: read_word(m, a), fn),
                                f.site if addr == f.old_addr else None, fn.thumb))
        return out

    def try_switch(self) -> bool:
        """One attempt (every thread stopped): switch each stack whose
        threads are all provably clear; True when the transition is done."""
        self.attempts += 1
        if self.done:
            return True
        m = self.lp.machine
        code = self.lp.code_map()
        blocking = self._blocking(code)
        # Listed before the others are held: a stub request while they are
        # frozen may wait for a lock one of them holds (each register read
        # below is such a request, bounded by all_stopped: only threads on
        # pending stacks are read).
        tids = m.threads()
        with m.all_stopped(registers=True) as stopped:
            if not stopped:
                raise PatchError("the target's threads cannot all be stopped: no stack can be "
                                 "checked (use force)")
            if not m.threads_settled():
                return False        # a thread was born while we looked: next time
            self._ran_now = m.cpu_times()
            if self._ran_from is None:
                self._ran_from = self._ran_now
            blocked: dict[int, dict[int, str]] = {}
            for tid in tids:
                idx = self._stack_of.get(tid, -1)
                if idx >= 0 and self.entries[idx].state == self.target:
                    continue
                regs = m.get_regs(tid)
                idx = next((i for i, e in enumerate(self.entries) if e.lo <= regs.sp < e.hi), -1)
                self._stack_of[tid] = idx
                if idx < 0 or self.entries[idx].state == self.target:
                    continue
                why = self._check(tid, regs, code, blocking, self.entries[idx])
                if why:
                    blocked.setdefault(idx, {})[tid] = why
            for idx, e in enumerate(self.entries):
                e.blocked = blocked.get(idx, {})
            # Ordering: one aligned word per stack; the others are untouched.
            for idx, e in enumerate(self.entries):
                if e.state != self.target and not e.blocked:
                    self._set_state(idx, self.target)
        return self.done

    def _set_state(self, idx: int, state: int) -> None:
        self.entries[idx].state = state
        write_word(self.lp.machine,
                   self.table + KLP_TRANSITION.size + idx * KLP_THREAD.size + 8, state)

    def _check(self, tid: int, regs: Regs, code: CodeMap, blocking: list[Blocking],
               stack: StackEntry) -> str:
        """Why thread *tid* cannot switch now ('' if it can).

        Exact registers (a thread in a system call, any thread of the
        emulator or gdbserver): a reliable walk decides, frame by frame; when
        the walk is not reliable, the conservative scan below decides.

        A thread running guest code under qemu-user has registers that are
        exact except the pc, which can lag behind along chained translated
        blocks (direct branches), never across an indirect one.  It is
        judged by evidence: a switched function is on its stack or in its
        registers (its live APCS frame's saved pc, else a return address
        into it; its pc).  A function in transition is entered through the
        regs trampoline, whose return into it is indirect.  The one window
        without evidence is a translation made before the transition's code
        writes (a function entered by a chained direct branch, the first
        instructions of its prologue, the site still a NOP): the writes drop
        those translations, and a thread inside one leaves it within
        microseconds of running.  So a running thread switches on a clean
        scan once it has run since the writes took effect: :meth:`_ran`, by
        the kernel's count of its run time.
        """
        m = self.lp.machine
        exact = m.exact_registers(tid)
        reason = ""
        if exact:
            try:
                trace = walk_stack(code, regs, lambda a: read_word(m, a))
            except MachineError as exc:
                return f"stack unreadable ({exc})"
            for frame in trace.frames:
                for b in blocking:
                    if b.holds(frame.pc):
                        return f"in {b.name} (frame {frame})"
            if trace.reliable:
                return ""
            reason = f"stack unreliable: {trace.reason}"
        where = code.find(regs.pc & ~1)
        if where is not None and where.armlp:
            # On its way through the trampoline: see _evidence.
            return f"{reason or RUNNING}; in {where.name}, checked again next attempt"
        try:
            hit = _evidence(m, regs, stack, blocking)
        except MachineError as exc:
            return f"stack unreadable ({exc})"
        if hit:
            return f"{reason or RUNNING}; {hit}"
        if exact or self._ran(tid):
            return ""
        return f"{RUNNING}; not run since the code writes, checked again next attempt"

    def _ran(self, tid: int) -> bool:
        """Whether thread *tid* has run :data:`RAN_NS` since the code writes
        took effect (a thread born since has; one whose run time cannot be
        read now has not: it waits, and is reported, rather than switch
        unproven)."""
        if self._ran_now is None or self._ran_from is None:
            return True         # a machine whose registers are all exact
        now = self._ran_now.get(tid)
        if now is None:
            return False
        before = self._ran_from.get(tid)
        return before is None or now - before >= RAN_NS

    def force(self) -> None:
        """Switch every stack, checked or not (the kernel's ``force``)."""
        for idx, e in enumerate(self.entries):
            e.blocked.clear()
            if e.state != self.target:
                self._set_state(idx, self.target)
        self.forced = True

    def reverse(self) -> None:
        """Head back to the other state (disabling a patch in transition):
        stacks that never switched are done already."""
        self.target ^= 1
        self._stack_of.clear()
        for e in self.entries:
            e.blocked.clear()
        write_word(self.lp.machine, self.table, self.target)

    # -- status -------------------------------------------------------------------

    def blocked(self) -> list[dict[str, Any]]:
        """Every thread holding the transition back, and why."""
        return [{"thread": tid, "stack": [e.lo, e.hi], "reason": why}
                for e in self.entries for tid, why in sorted(e.blocked.items())]

    def describe(self) -> dict[str, Any]:
        """For ``status``: the target, how long, and every blocked thread."""
        blocked = self.blocked()
        return {
            "target": STATE_NAMES[self.target],
            "seconds": round(time.monotonic() - self.started, 3),
            "attempts": self.attempts,
            "stacks_pending": sum(e.state != self.target for e in self.entries),
            "blocked": blocked,
        }
