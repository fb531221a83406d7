"""The proof that a redirect gives the new function its caller's exact context.

For each patchable function: random entry contexts (r0-r11, sp, lr and the
stack arguments above sp), the function called with a redirect to a probe,
and the registers at the probe compared with the entry context — which is
what a direct call of the probe would have seen.  ip, pc and the flags are
excluded: the AAPCS lets a veneer change ip and no callee may rely on the
flags.  This answers the seed's reviewer ("can we really undo the prologue
correctly?") per function, by execution rather than by argument.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from armlp.errors import MachineError
from armlp.ftrace.core import DynFtrace, FtraceOps
from armlp.livepatch.trampoline import build_trampoline
from armlp.machine.base import CodeWrite
from armlp.machine.emulator import Emulator
from armlp.runtime.layout import FTRACE_OPS_FL_SAVE_REGS
from armlp.target import Target

COMPARED = ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11",
            "sp", "lr")
#: The hard-float ABI's argument registers (s0-s15 = d0-d7) and FPSCR: no
#: path may change them (the runtime uses no VFP instruction; this proves it).
COMPARED_VFP = (*(f"s{i}" for i in range(16)), "fpscr")
#: FPSCR bits a context sets: NZCV and the rounding mode (the rest would
#: enable traps or change arithmetic, and no path runs any).
_FPSCR_BITS = 0xF0C00000
STACK_ARG_WORDS = 8
PATHS = ("generic", "fast", "entry")
#: A page of ``udf``: a probe that faults if executed.
UDF_PAGE = struct.pack("<I", 0xE7F000F0) * 1024


@dataclass
class PathResult:
    """One path's outcome for one function."""

    verified: bool = True
    instructions: int | None = None
    mismatch: str | None = None


@dataclass
class FunctionProof:
    name: str
    sympos: int
    address: int
    rule: str | None
    paths: dict[str, PathResult] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return all(p.verified for p in self.paths.values())

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name, "sympos": self.sympos, "address": self.address,
            "rule": self.rule, "verified": self.verified,
            "paths": {k: {"verified": v.verified, "instructions": v.instructions,
                          "mismatch": v.mismatch} for k, v in self.paths.items()},
        }


@dataclass
class Bench:
    """An emulator, a probe (where the new function would be: udf words) and a
    stack: what a proof calls functions on."""

    emu: Emulator
    probe: int
    stack_top: int
    rng: random.Random

    def random_context(self) -> dict[str, int]:
        rnd = self.rng.getrandbits
        ctx = {f"r{i}": rnd(32) for i in range(12)}
        # Room below for the largest frames; 8-byte aligned as the AAPCS wants.
        ctx["sp"] = (self.stack_top - 0x30000 - 8 * rnd(10)) & ~7
        ctx["lr"] = rnd(32) & ~3
        for name in COMPARED_VFP[:-1]:
            ctx[name] = rnd(32)
        ctx["fpscr"] = rnd(32) & _FPSCR_BITS
        return ctx

    def check_path(self, entry: int, trials: int) -> PathResult:
        """Call *entry* with random contexts; the probe must see each one."""
        result = PathResult()
        emu = self.emu
        for _ in range(trials):
            ctx = self.random_context()
            args = [self.rng.getrandbits(32) for _ in range(STACK_ARG_WORDS)]
            sp = ctx["sp"]
            emu.write(sp, struct.pack(f"<{STACK_ARG_WORDS}I", *args))
            before = emu.instructions
            try:
                got = emu.call_regs(entry, (), until=self.probe, regs=ctx,
                                    max_instructions=100_000)
            except MachineError as exc:   # a wrong undo may crash: a failed proof
                result.verified = False
                result.mismatch = f"the call did not reach the probe: {exc}"
                break
            if before is not None and emu.instructions is not None:
                result.instructions = emu.instructions - before
            stack = struct.unpack(f"<{STACK_ARG_WORDS}I", emu.read(sp, 4 * STACK_ARG_WORDS))
            seen = dict(zip(COMPARED, [*got.r[:12], got.sp, got.lr], strict=True))
            seen |= {k: emu.reg(k) for k in COMPARED_VFP}     # as at the probe
            bad = [f"{k}={seen[k]:#x} (want {ctx[k]:#x})" for k in (*COMPARED, *COMPARED_VFP)
                   if seen[k] != ctx[k]]
            if list(stack) != args:
                bad.append("stack arguments changed")
            if bad:
                result.verified = False
                result.mismatch = ", ".join(bad)
                break
        return result


class Prover:
    """Runs redirect proofs on an emulated target."""

    def __init__(self, target: Target, *, seed: int = 0) -> None:
        if not isinstance(target.machine, Emulator):
            raise TypeError("proofs run in the emulator")
        self.target = target
        self.emu: Emulator = target.machine
        text = target.image.section(".text")
        # Near the code, as a patch module is placed: branches reach it directly.
        probe = self.emu.alloc(4096, near=text.addr if text else None)
        self.emu.write(probe, UDF_PAGE)
        self.bench = Bench(self.emu, probe, self.emu.get_regs().sp, random.Random(seed))
        self.probe = probe
        self.check_path = self.bench.check_path

    def prove(self, recs: Iterable[DynFtrace], trials: int = 8,
              paths: Sequence[str] = ("generic",)) -> list[FunctionProof]:
        """Prove *paths* for every patchable record in *recs*.

        ``generic``: the regs trampoline with a handler moving pc (the seed's
        path); ``fast``: the site branching to the function's own fast-path
        trampoline (what threads caught inside the prologue take); ``entry``:
        the branch written over the first instruction (what new calls take;
        an ARM function's only: a Thumb entry is never rewritten).
        """
        recs = [r for r in recs if r.report.verdict.patchable]
        unknown = set(paths) - set(PATHS)
        if unknown:
            raise ValueError(f"unknown proof paths {sorted(unknown)}")
        proofs = {r.ip: FunctionProof(r.report.fn.name, r.report.fn.sympos,
                                      r.report.fn.address, r.report.verdict.rule) for r in recs}
        if not recs:
            return []
        ft = self.target.ftrace
        if "generic" in paths:
            ops = FtraceOps("verify-redirect", self.target.runtime.symbol("armlp_redirect_func"),
                            flags=FTRACE_OPS_FL_SAVE_REGS, private=self.probe,
                            ips={r.ip for r in recs})
            ft.register_ftrace_function(ops)
            try:
                for r in recs:
                    proofs[r.ip].paths["generic"] = self.check_path(r.report.fn.pc, trials)
            finally:
                ft.unregister_ftrace_function(ops)
        for path in ("fast", "entry"):
            if path in paths:
                for r in recs:
                    if path == "entry" and not r.tracks_entry:
                        continue
                    proofs[r.ip].paths[path] = self._prove_direct(r, trials,
                                                                  entry=path == "entry")
        return list(proofs.values())

    def _prove_direct(self, rec: DynFtrace, trials: int, *, entry: bool) -> PathResult:
        """The fast path: the site's ``b`` to a trampoline built from the
        function's recipe (and, with *entry*, the branch at the entry)."""
        ft = self.target.ftrace
        undo = rec.report.undo
        assert undo is not None
        tramp = build_trampoline(undo, self.probe, thumb=rec.thumb)
        addr = self.target.heap.alloc(tramp.size)
        self.emu.write_code([CodeWrite(addr, bytes(tramp.size), tramp.code())])
        ops = FtraceOps(f"verify-direct:{rec.name}", self.target.runtime.symbol(
                        "armlp_redirect_func"), flags=FTRACE_OPS_FL_SAVE_REGS,
                        private=self.probe, ips={rec.ip}, direct=addr | int(rec.thumb),
                        direct_entry=self.probe if entry else None)
        ft.register_ftrace_function(ops)
        try:
            return self.check_path(rec.report.fn.pc, trials)
        finally:
            ft.unregister_ftrace_function(ops)
            self.target.heap.free(addr)
