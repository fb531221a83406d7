"""Instructions from the old function's first instruction to the new
function's first instruction, per redirect path, counted in the emulator.

Builds ``benchmarks/programs/redirect.c`` three times -- ARM with
``-mapcs-frame`` (rule ``apcs``) and ``-mno-apcs-frame`` (rule ``push``),
and Thumb-2 (``-mthumb -march=armv7-a``, rule ``push``) -- and for each
prologue shape in it:

generic   the seed's design: the mcount site calls the regs trampoline
          (``ftrace_regs_caller``), whose ops (``armlp_redirect_func``, the
          livepatch handler's stand-in) moves the saved pc to ``new_func``;
          the trampoline undoes the prologue and branches there.  Counted
          twice, independently: by a code hook over one real call (every pc
          from the old entry to ``new_func``'s first instruction) and by
          :class:`armlp.verify.Prover` (entry to its probe, block-counted);
          the two must agree.  The Prover also proves the path exact.
fast      the per-function fast path as a thread inside the prologue
          takes it (and, in Thumb code, every call: its entry is never
          rewritten): the site's ``b`` to the function's own trampoline,
          which undoes the prologue and enters the new function
          (the Prover's count and proof).
entry     the per-function fast path as new calls take it once the
          redirect is settled: the branch written over the first
          instruction (the Prover's count and proof).  Issue 4's target for
          the fast path, at most 8 instructions (the floor is 1), is checked
          here (ARM builds).

The figures are deterministic.  Prints a table, writes
``benchmarks/results/redirect.json``, and exits non-zero when a proof fails
or the two generic counts disagree, or the entry path misses its target.

    .venv/bin/python benchmarks/redirect.py [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from armlp.ftrace.core import FtraceOps  # noqa: E402
from armlp.ftrace.cost import executed, span  # noqa: E402
from armlp.machine.emulator import Emulator  # noqa: E402
from armlp.program_build import PROGRAM_CFLAGS, build_program  # noqa: E402
from armlp.runtime.layout import FTRACE_OPS_FL_SAVE_REGS  # noqa: E402
from armlp.target import Target  # noqa: E402
from armlp.verify import PATHS, Prover  # noqa: E402

PROGRAM = ROOT / "benchmarks/programs/redirect.c"
#: build name -> its cflags
BUILDS: dict[str, list[str]] = {"apcs": list(PROGRAM_CFLAGS),
                                "push": [*PROGRAM_CFLAGS, "-mno-apcs-frame"],
                                "thumb2": ["-mthumb", "-march=armv7-a", "-pg", "-O2"]}
#: Stands for the address of a result buffer (struct_ret's hidden r0).
RET_BUFFER = "ret"
#: (function, arguments of the measured call)
FUNCTIONS: list[tuple[str, tuple[int | str, ...]]] = [
    ("leaf", (1,)),
    ("with_locals", (2,)),
    ("saves", (1, 2, 3, 4)),
    ("many_args", (1, 2, 3, 4, 5, 6)),
    ("args64", (1, 0, 2, 3, 0)),
    ("varargs_sum", (3, 1, 2, 3)),
    ("frame_64k", (5,)),
    ("struct_ret", (RET_BUFFER, 1)),
]
NEW_FUNCTION = "new_func"

#: The fast path's target (issue 4), checked on the entry path.
FAST_TARGET = 8


@dataclass(frozen=True)
class RedirectCost:
    function: str
    rule: str | None
    prologue: int               # first instruction .. push {lr}
    generic: int                # hook count: first instruction .. new_func
    generic_prover: int | None  # Prover's count: first instruction .. probe
    fast: int | None            # Prover: first instruction .. probe, site trampoline
    entry: int | None           # Prover: first instruction .. probe, entry branch
    verified: dict[str, bool]   # per path, the Prover's proof


def measure_build(path: Path) -> list[RedirectCost]:
    target = Target.emulate(path, count_instructions=True)
    emu = target.machine
    assert isinstance(emu, Emulator)
    ft = target.ftrace
    rt = target.runtime
    new = ft.scan.find(NEW_FUNCTION).fn.pc
    recs = {name: ft.find_function(name) for name, _ in FUNCTIONS}
    # The hook counts first: Unicorn's code hooks miss blocks it translated
    # before the hook was added, and the Prover runs the trampoline.
    hooked = {}
    ret_buffer = emu.alloc(64)
    for name, spec in FUNCTIONS:
        args = [ret_buffer if a == RET_BUFFER else int(a) for a in spec]
        rec = recs[name]
        fn = rec.report.fn
        plain = executed(emu, fn.pc, args)
        prologue = span(plain, fn.address, rec.ip - (2 if rec.thumb else 4))   # push {lr}
        ops = FtraceOps("bench-redirect", rt.symbol("armlp_redirect_func"),
                        flags=FTRACE_OPS_FL_SAVE_REGS, private=new, ips={rec.ip})
        ft.register_ftrace_function(ops)
        try:
            pcs = executed(emu, fn.pc, args)
        finally:
            ft.unregister_ftrace_function(ops)
        if rt.symbol("ftrace_regs_caller") not in pcs:
            raise SystemExit(f"{name}: the redirect did not go through ftrace_regs_caller")
        hooked[name] = (prologue, span(pcs, fn.address, new & ~1))
    proofs = {p.name: p for p in Prover(target).prove(recs.values(), trials=8,
                                                           paths=PATHS)}
    out = []
    for name, _ in FUNCTIONS:
        proof = proofs[name]
        prologue, generic_hooked = hooked[name]
        generic = proof.paths["generic"]
        out.append(RedirectCost(
            name, proof.rule, prologue, generic_hooked, generic.instructions,
            proof.paths["fast"].instructions,
            proof.paths["entry"].instructions if "entry" in proof.paths else None,
            {k: v.verified for k, v in proof.paths.items()}))
    return out


def problems(results: dict[str, list[RedirectCost]]) -> list[str]:
    bad = []
    for build, costs in results.items():
        for c in costs:
            where = f"{build}/{c.function}"
            bad += [f"{where}: the {k} path failed its proof"
                    for k, ok in c.verified.items() if not ok]
            if c.generic_prover is not None and c.generic_prover != c.generic:
                bad.append(f"{where}: hook count {c.generic} != Prover count "
                           f"{c.generic_prover}")
            if build != "thumb2" and (c.entry is None or c.entry > FAST_TARGET):
                bad.append(f"{where}: the entry path costs {c.entry} instructions, "
                           f"not at most {FAST_TARGET}")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/redirect.json")
    args = ap.parse_args()

    results = {build: measure_build(build_program([PROGRAM], base_cflags=cflags))
               for build, cflags in BUILDS.items()}
    print(f"instructions from the old function's first instruction to {NEW_FUNCTION}'s "
          f"first (emulator, exact)")
    head = (f"{'build':7} {'function':12} {'rule':5} {'prologue':>8} {'generic':>8} "
            f"{'fast':>6} {'entry':>6}")
    print(head)
    print("-" * len(head))
    for build, costs in results.items():
        for c in costs:
            print(f"{build:7} {c.function:12} {c.rule or '-':5} {c.prologue:8} "
                  f"{c.generic:8} {_n(c.fast):>6} {_n(c.entry):>6}")
    doc = {
        "program": str(PROGRAM.relative_to(ROOT)),
        "base_cflags": "per build",
        "new_function": NEW_FUNCTION,
        "spans": {
            "prologue": "first instruction .. push {lr} (included in the others)",
            "generic": f"first instruction .. first instruction of {NEW_FUNCTION}: "
                       "prologue, push {lr}, bl ftrace_regs_caller, pt_regs, "
                       "armlp_redirect_func, undo, branch",
            "fast": "first instruction .. probe (Prover): prologue, push {lr}, the site's "
                    "b to the function's trampoline, undo, branch",
            "entry": "first instruction .. probe (Prover): the branch written over the "
                     "first instruction (ARM functions; a Thumb entry is never rewritten)",
        },
        "targets": {"entry_at_most": FAST_TARGET},
        "builds": {build: {"cflags": BUILDS[build],
                           "functions": [asdict(c) for c in costs]}
                   for build, costs in results.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"wrote {shown}")
    bad = problems(results)
    if bad:
        raise SystemExit("problems:\n  " + "\n  ".join(bad))
    print(f"every path proven exact; hook and Prover counts agree; entry path at most "
          f"{FAST_TARGET}")


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


if __name__ == "__main__":
    main()
