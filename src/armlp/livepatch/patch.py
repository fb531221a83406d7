"""Func stacks: the kernel's klp_ops and their stacks (kernel/livepatch/patch.c).

Each patched function has one ``struct klp_ops`` in the target holding the
top of its func stack, and one FTRACE_OPS_FL_SAVE_REGS ftrace user whose
handler (``klp_ftrace_handler``) sends calls to the top's new function; with
the fast path, also a per-function trampoline whose literal word is the
top's new function.  Pushing a func is one aligned word write; unlinking
one from anywhere in a stack is one too.  :class:`FuncStacks` keeps them for
one target; :mod:`armlp.livepatch.core` decides when to push and unlink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from armlp.arm.t32 import t32_branch_in_range
from armlp.ftrace.core import FtraceOps
from armlp.livepatch.module import KlpFunc
from armlp.livepatch.trampoline import build_trampoline
from armlp.machine.base import CodeWrite, read_word, write_word
from armlp.runtime.layout import FTRACE_OPS_FL_SAVE_REGS, KLP_FUNC_NODE, KLP_OPS
from armlp.target import Target


@dataclass(eq=False)
class FuncStack:
    """A patched function: its ftrace user and its func stack (oldest first)."""

    site: int
    name: str
    ops: FtraceOps
    klp_ops: int
    funcs: list[KlpFunc] = field(default_factory=list)
    tramp: int = 0              # fast-path trampoline (0: generic path only)
    literal: int = 0            # its target word
    thumb: bool = False         # the function (and its trampoline) is Thumb code

    def direct(self, new_func: int) -> tuple[FtraceOps, int, int | None]:
        """The fast path to *new_func*: the site's trampoline (bit 0 set
        for Thumb) and, for an ARM function whose new function is ARM too,
        the branch at its entry (a ``b`` cannot change instruction set; a
        Thumb entry is never rewritten, see DynFtrace.tracks_entry)."""
        entry = new_func if not self.thumb and not new_func & 1 else None
        return self.ops, self.tramp | int(self.thumb), entry


class FuncStacks:
    """Every func stack of one target, by site."""

    def __init__(self, target: Target, *, fast: bool = True) -> None:
        self.target = target
        self.machine = target.machine
        self.ftrace = target.ftrace
        self.heap = target.heap
        self.fast = fast
        self.by_site: dict[int, FuncStack] = {}
        #: Fast-path trampolines no site uses any more: (address, size).
        self.dead_tramps: list[tuple[int, int]] = []

    def push(self, patch_id: int, f: KlpFunc, undo: list[Callable[[], None]],
              tramps: list[CodeWrite], *, transition: bool = True) -> FtraceOps | None:
        """Put *f* on its function's stack, its node marked *transition*, the
        site on the generic path (with the mark, the handler decides per
        thread until :meth:`settle`); returns the ftrace user to register
        when the function was not patched yet."""
        m = self.machine
        stack = self.by_site.get(f.site)
        below = read_word(m, stack.klp_ops) if stack else 0
        f.node = self.heap.alloc(KLP_FUNC_NODE.size)
        node = f.node
        m.write(node, KLP_FUNC_NODE.pack(f.new_func, below, patch_id, int(transition)))
        undo.append(lambda: self.heap.free(node))
        if stack is not None:
            st = stack
            old_top = st.funcs[-1].new_func
            self.unsettle([st])
            write_word(m, st.klp_ops, node)             # the switch: one word
            st.funcs.append(f)

            def pop() -> None:
                st.funcs.remove(f)
                write_word(m, st.klp_ops, below)
                self._retarget(st, old_top)
            undo.append(pop)
            return None
        klp_ops = self.heap.alloc(KLP_OPS.size)
        m.write(klp_ops, KLP_OPS.pack(node))
        undo.append(lambda: self.heap.free(klp_ops))
        ops = FtraceOps(f"livepatch:{f.label}", self.target.runtime.symbol("klp_ftrace_handler"),
                        flags=FTRACE_OPS_FL_SAVE_REGS, private=klp_ops, ips={f.site})
        rec = self.ftrace.records[f.site]
        new_stack = FuncStack(f.site, f.label, ops, klp_ops, [f], thumb=rec.thumb)
        if self.fast:
            assert rec.report.undo is not None
            tramp = build_trampoline(rec.report.undo, f.new_func, thumb=rec.thumb)
            addr = self.heap.alloc(tramp.size)
            # A Thumb site's b.w has no veneer (veneers are ARM): a trampoline
            # out of its reach leaves the function on the generic path.
            if not rec.thumb or t32_branch_in_range(f.site, addr):
                undo.append(lambda: self.heap.free(addr))
                tramps.append(CodeWrite(addr, bytes(tramp.size), tramp.code()))
                new_stack.tramp, new_stack.literal = addr, addr + 4 * tramp.literal_index
            else:
                self.heap.free(addr)
        self.by_site[f.site] = new_stack

        def forget() -> None:
            self.by_site.pop(f.site, None)
        undo.append(forget)
        return ops

    def settle(self, stacks: Iterable[FuncStack]) -> None:
        """The transition is over: the fast path to each top's new function
        (one code update for them all).  A thread may keep taking the
        generic path a while (qemu's old translations): with no transition,
        the handler sends it to the same new function."""
        changes = []
        for stack in stacks:
            new_func = stack.funcs[-1].new_func if stack.funcs else 0
            if stack.tramp and new_func:     # a nop top: the handler's job
                # The trampoline's literal is data (see _retarget): a plain write.
                write_word(self.machine, stack.literal, new_func)
                changes.append(stack.direct(new_func))
        self.ftrace.set_directs(changes, stale_ok=True)

    def unsettle(self, stacks: Iterable[FuncStack]) -> None:
        """A transition begins: every call through the handler, which
        looks at the calling thread's state (one code update)."""
        self.ftrace.set_directs([(st.ops, None, None) for st in stacks
                                 if st.tramp and st.ops.direct is not None])

    def _retarget(self, stack: FuncStack, new_func: int) -> None:
        """Point the fast path at the func stack's new top."""
        if not stack.tramp:
            return
        # The trampoline's literal is data that its ldr pc loads each time
        # it runs (no translator folds a load): a plain write, no stop.
        write_word(self.machine, stack.literal, new_func)
        self.ftrace.set_directs([stack.direct(new_func)])

    def unlink(self, f: KlpFunc) -> FuncStack | None:
        """Take *f* out of its stack wherever it is; the stack if that left it
        empty (its ftrace user is still registered: see :meth:`drop`)."""
        m = self.machine
        stack = self.by_site[f.site]
        i = stack.funcs.index(f)
        below = stack.funcs[i - 1].node if i > 0 else 0
        emptied = None
        if i == len(stack.funcs) - 1:
            if below:
                write_word(m, stack.klp_ops, below)
                self._retarget(stack, stack.funcs[i - 1].new_func)
            else:
                emptied = stack
        else:
            above = stack.funcs[i + 1]
            write_word(m, above.node + 4, below)     # above.next = below
        stack.funcs.remove(f)
        return emptied

    def drop(self, emptied: list[FuncStack]) -> None:
        """Functions left unpatched go back to the NOP in one batch of writes;
        only then are their func stacks cleared.  A thread may keep calling
        the regs trampoline a while (qemu's old translations of the sites):
        their records have no users left, so it resumes the function."""
        self.ftrace.unregister_ftrace_functions([st.ops for st in emptied], stale_ok=True)
        for stack in emptied:
            write_word(self.machine, stack.klp_ops, 0)
            self.heap.free(stack.klp_ops)
            if stack.tramp:
                self.dead_tramps.append((stack.tramp, stack.literal + 4 - stack.tramp))
            del self.by_site[stack.site]
