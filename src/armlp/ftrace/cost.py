"""What a call costs on each ftrace path, in executed instructions.

Counted in the emulator, so the figures are deterministic: a code hook
records the pc of every instruction executed during one call of the
function, and a span is the number of instructions from one address to the
next occurrence of another (the start counted, the end not).  For a
function whose mcount site is at ``site``:

``nop``
    ``push {lr}`` (``site - 4``; in Thumb code ``site - 2``) to ``site + 4``
    with the site holding the NOP: the ``push {lr}`` and the NOP, 2 by
    construction.
``plain``
    the same span with the function tracer on the function (``bl
    ftrace_caller``, the tracer's callback, the return into the function).
``regs``
    the same span through ``ftrace_regs_caller`` with a ``SAVE_REGS`` ops
    that leaves pc alone (``armlp_ftrace_stub``): the pt_regs, the dispatch
    and the resume.
``redirect``
    the function's first instruction to the replacement's first instruction,
    with ``armlp_redirect_func`` moving pc: the prologue, the ``push {lr}``,
    the regs trampoline, the undo and the branch.  ``prologue`` is its first
    part (first instruction to the ``push {lr}``), so ``redirect -
    prologue`` is the trampoline's share.

Each measurement checks that the call really took the path it claims (the
trampoline's first instruction was executed, the tracer wrote its record,
the replacement was entered) and raises :class:`CostError` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from armlp.arm.a32 import PUSH_LR
from armlp.arm.t32 import T16_PUSH_LR
from armlp.errors import ArmlpError
from armlp.ftrace.core import DynFtrace, FtraceOps
from armlp.ftrace.tracer import FunctionTracer
from armlp.machine.base import read_word
from armlp.machine.emulator import Emulator
from armlp.runtime.layout import FTRACE_OPS_FL_SAVE_REGS
from armlp.target import Target

#: The issue's targets (issue 3, "Performance").
NOP_TARGET = 2
PLAIN_LIMIT = 40


class CostError(ArmlpError):
    """A path could not be measured (the call did not take it)."""


@dataclass(frozen=True)
class SiteCosts:
    """Instructions per call of one function on each path (see the module)."""

    function: str
    rule: str | None
    address: int
    site: int
    prologue: int
    nop: int
    plain: int
    regs: int
    redirect: int | None
    new_function: str | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def executed(emu: Emulator, entry: int, args: Sequence[int] = (),
             max_instructions: int = 100_000) -> list[int]:
    """The pcs of the instructions one ``call(entry, args)`` executes, in order."""
    pcs: list[int] = []
    handle = emu.hook_code(lambda _emu, address, _size: pcs.append(address))
    try:
        emu.call(entry, args, max_instructions=max_instructions)
    finally:
        emu.remove_hook(handle)
    return pcs


def span(pcs: Sequence[int], start: int, end: int) -> int:
    """Instructions from the first execution of *start* to the next of *end*
    (*start* counted, *end* not; 0 when they are the same address)."""
    try:
        i = pcs.index(start)
    except ValueError:
        raise CostError(f"{start:#010x} was not executed") from None
    try:
        j = pcs.index(end, i)
    except ValueError:
        raise CostError(f"{end:#010x} was not executed after {start:#010x}") from None
    return j - i


class CostMeter:
    """Measures the paths of the functions of one emulated target.

    Every measurement registers its ops, makes one call and unregisters, so
    the sites are back to the NOP between measurements.
    """

    def __init__(self, target: Target) -> None:
        if not isinstance(target.machine, Emulator):
            raise TypeError("instruction costs are counted in the emulator")
        self.target = target
        self.emu: Emulator = target.machine
        rt = target.runtime
        self.ftrace_caller = rt.symbol("ftrace_caller")
        self.ftrace_regs_caller = rt.symbol("ftrace_regs_caller")

    def measure(self, function: str, new_function: str | None = None,
                args: Sequence[int] = (1,)) -> SiteCosts:
        """All paths of *function*; ``redirect`` needs *new_function* and a
        patchable prologue (else it is None)."""
        ft = self.target.ftrace
        rec = ft.find_function(function)
        fn = rec.report.fn
        push = rec.ip - (2 if rec.thumb else 4)
        want, size = (T16_PUSH_LR, 0xFFFF) if rec.thumb else (PUSH_LR, 0xFFFFFFFF)
        if read_word(self.emu, push) & size != want:
            raise CostError(f"{fn.label}: no push {{lr}} before the site at {rec.ip:#x}")
        resume = rec.ip + 4

        pcs = self._call(rec, args)
        nop = span(pcs, push, resume)
        prologue = span(pcs, fn.address, push)

        tracer = FunctionTracer(ft, [fn.name])
        tracer.start()
        try:
            pcs = self._call(rec, args)
        finally:
            tracer.stop()
        self._require(pcs, self.ftrace_caller, fn.label, "the plain path")
        traced = [e for e in tracer.read() if e.ip == rec.ip]
        if len(traced) != 1:
            raise CostError(f"{fn.label}: the tracer recorded {len(traced)} calls, not 1")
        plain = span(pcs, push, resume)

        rt = self.target.runtime
        stub = FtraceOps("cost-regs", rt.symbol("armlp_ftrace_stub"),
                         flags=FTRACE_OPS_FL_SAVE_REGS, ips={rec.ip})
        pcs = self._with_ops(stub, rec, args)
        self._require(pcs, self.ftrace_regs_caller, fn.label, "the regs path")
        regs = span(pcs, push, resume)

        redirect: int | None = None
        if new_function is not None and rec.report.verdict.patchable:
            new_fn = ft.scan.find(new_function).fn
            new = new_fn.address
            ops = FtraceOps("cost-redirect", rt.symbol("armlp_redirect_func"),
                            flags=FTRACE_OPS_FL_SAVE_REGS, private=new_fn.pc, ips={rec.ip})
            pcs = self._with_ops(ops, rec, args)
            self._require(pcs, self.ftrace_regs_caller, fn.label, "the redirect")
            redirect = span(pcs, fn.address, new)
        return SiteCosts(fn.label, rec.report.verdict.rule, fn.address, rec.ip, prologue,
                         nop, plain, regs, redirect,
                         new_function if redirect is not None else None)

    def _call(self, rec: DynFtrace, args: Sequence[int]) -> list[int]:
        return executed(self.emu, rec.report.fn.pc, args)

    def _with_ops(self, ops: FtraceOps, rec: DynFtrace, args: Sequence[int]) -> list[int]:
        ft = self.target.ftrace
        ft.register_ftrace_function(ops)
        try:
            return self._call(rec, args)
        finally:
            ft.unregister_ftrace_function(ops)

    @staticmethod
    def _require(pcs: Sequence[int], address: int, label: str, what: str) -> None:
        if address not in pcs:
            raise CostError(f"{label}: the call did not take {what} "
                            f"({address:#010x} not executed)")


def check_targets(costs: Sequence[SiteCosts]) -> list[str]:
    """The issue's targets the figures miss, as messages (empty: all met)."""
    bad = []
    for c in costs:
        if c.nop != NOP_TARGET:
            bad.append(f"{c.function}: the NOP'ed site costs {c.nop} instructions, "
                       f"not {NOP_TARGET}")
        if c.plain >= PLAIN_LIMIT:
            bad.append(f"{c.function}: the plain tracer path costs {c.plain} instructions, "
                       f"not under {PLAIN_LIMIT}")
    return bad


def measure_program(path: str | Path, functions: Sequence[tuple[str, Sequence[int]]],
                    new_function: str | None = None) -> list[SiteCosts]:
    """:meth:`CostMeter.measure` for each ``(name, args)`` of the program at
    *path*, in one emulated target."""
    meter = CostMeter(Target.emulate(path))
    return [meter.measure(name, new_function, args) for name, args in functions]
