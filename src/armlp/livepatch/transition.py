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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from armlp.analysis.unwind import CodeMap, walk_stack
from armlp.errors import MachineError, PatchError
from armlp.livepatch.module import KlpFunc, KlpPatch
from armlp.machine.base import Regs, read_word, write_word
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
RUNNING = "running (its registers are exact only in a system call)"


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

    def unmark(self) -> None:
        for f in self.funcs:
            if f.node:
                write_word(self.lp.machine, f.node + KLP_NODE_TRANSITION, 0)

    # -- switching threads --------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(e.state == self.target for e in self.entries)

    def _blocking_ranges(self, code: CodeMap) -> list[tuple[int, int, str]]:
        """The code a thread must not be in to switch: what an unswitched
        thread still runs (the func below, or the original, when patching;
        the new function when unpatching)."""
        stacks = self.lp.funcs.by_site
        out = []
        for f in self.funcs:
            if self.target == KLP_PATCHED:
                funcs = stacks[f.site].funcs
                i = funcs.index(f)
                addr = funcs[i - 1].new_func if i > 0 else f.old_addr
            else:
                addr = f.new_func
            fn = code.find(addr)
            if fn is None:
                raise PatchError(f"{self.patch.name}: no code map entry for {f.label}")
            out.append((fn.start, fn.end, fn.name))
        return out

    def try_switch(self) -> bool:
        """One attempt (every thread stopped): switch each stack whose
        threads are all provably clear; True when the transition is done."""
        self.attempts += 1
        if self.done:
            return True
        m = self.lp.machine
        code = self.lp.code_map()
        ranges = self._blocking_ranges(code)
        # Listed before the others are held: a stub request while they are
        # frozen may wait for a lock one of them holds (each register read
        # below is such a request: only threads on pending stacks are read).
        tids = m.threads()
        with m.all_stopped() as stopped:
            if not stopped:
                raise PatchError("the target's threads cannot all be stopped: no stack can be "
                                 "checked (use force)")
            if not m.threads_settled():
                return False        # a thread was born while we looked: next time
            blocked: dict[int, dict[int, str]] = {}
            for tid in tids:
                idx = self._stack_of.get(tid, -1)
                if idx >= 0 and self.entries[idx].state == self.target:
                    continue
                if tid in self._stack_of and not m.exact_registers(tid):
                    # Its stack is known; its registers would not be exact:
                    # no stub request for it this time.
                    if idx >= 0:
                        blocked.setdefault(idx, {})[tid] = RUNNING
                    continue
                regs = m.get_regs(tid)
                idx = next((i for i, e in enumerate(self.entries) if e.lo <= regs.sp < e.hi), -1)
                self._stack_of[tid] = idx
                if idx < 0 or self.entries[idx].state == self.target:
                    continue
                why = self._check(tid, regs, code, ranges)
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

    def _check(self, tid: int, regs: Regs, code: CodeMap,
               ranges: list[tuple[int, int, str]]) -> str:
        """Why thread *tid* cannot switch now ('' if it can)."""
        m = self.lp.machine
        if not m.exact_registers(tid):
            return RUNNING
        try:
            trace = walk_stack(code, regs, lambda a: read_word(m, a))
        except MachineError as exc:
            return f"stack unreadable ({exc})"
        for frame in trace.frames:
            for lo, hi, name in ranges:
                if lo <= frame.pc < hi:
                    return f"in {name} (frame {frame})"
        if not trace.reliable:
            return f"stack unreliable: {trace.reason}"
        return ""

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
