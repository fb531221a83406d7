"""Instructions per call on each ftrace path, counted in the emulator.

Builds ``benchmarks/programs/paths.c`` three times — ARM with
``-mapcs-frame`` (rule ``apcs``) and ``-mno-apcs-frame`` (rule ``push``),
and Thumb-2 (``-mthumb -march=armv7-a``: T32 sites, the NOP ``add.w sp,
sp, #4``, ``blx`` to the ARM trampolines) — and, for functions of
different prologue shapes (a leaf, one with locals, one saving callee-saved
registers), counts the instructions one call executes
(:mod:`armlp.ftrace.cost`):

(a) nop       ``push {lr}`` to the instruction after the site, site = the NOP
(b) plain     the same span, function tracer on (``ftrace_caller``)
(c) regs      the same span, a SAVE_REGS ops that leaves pc (``ftrace_regs_caller``)
(d) redirect  the function's first instruction to the replacement's first
              instruction (``armlp_redirect_func`` to ``new_leaf``)

The figures are deterministic.  It prints a table, writes
``benchmarks/results/ftrace.json`` and exits non-zero when the issue's
targets are missed (the NOP exactly 2, the plain path under 40).

    .venv/bin/python benchmarks/ftrace.py [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from armlp.ftrace.cost import (  # noqa: E402
    NOP_TARGET,
    PLAIN_LIMIT,
    SiteCosts,
    check_targets,
    measure_program,
)
from armlp.program_build import PROGRAM_CFLAGS, build_program  # noqa: E402

PROGRAM = ROOT / "benchmarks/programs/paths.c"
#: build name -> its cflags
BUILDS: dict[str, list[str]] = {"apcs": list(PROGRAM_CFLAGS),
                                "push": [*PROGRAM_CFLAGS, "-mno-apcs-frame"],
                                "thumb2": ["-mthumb", "-march=armv7-a", "-pg", "-O2"]}
#: (function, arguments of the measured call)
FUNCTIONS: list[tuple[str, tuple[int, ...]]] = [
    ("leaf", (1,)),
    ("with_locals", (2,)),
    ("saves", (1, 2, 3, 4)),
]
NEW_FUNCTION = "new_leaf"


def measure() -> dict[str, list[SiteCosts]]:
    """The figures of every build, by build name."""
    out = {}
    for build, cflags in BUILDS.items():
        path = build_program([PROGRAM], base_cflags=cflags)
        out[build] = measure_program(path, FUNCTIONS, NEW_FUNCTION)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/ftrace.json")
    args = ap.parse_args()

    results = measure()
    head = (f"{'build':6} {'function':12} {'rule':5} {'prologue':>8} {'(a) nop':>8} "
            f"{'(b) plain':>9} {'(c) regs':>8} {'(d) redirect':>12}")
    print("instructions per call (emulator, exact); (a)-(c): push {lr} .. site+4, "
          f"(d): entry .. {NEW_FUNCTION}")
    print(head)
    print("-" * len(head))
    for build, costs in results.items():
        for c in costs:
            red = "-" if c.redirect is None else str(c.redirect)
            print(f"{build:6} {c.function:12} {c.rule or '-':5} {c.prologue:8} {c.nop:8} "
                  f"{c.plain:9} {c.regs:8} {red:>12}")
    doc = {
        "program": str(PROGRAM.relative_to(ROOT)),
        "base_cflags": "per build",
        "spans": {
            "prologue": "first instruction .. push {lr}",
            "nop": "push {lr} .. site + 4, site = add sp, sp, #4",
            "plain": "push {lr} .. site + 4, function tracer (ftrace_caller)",
            "regs": "push {lr} .. site + 4, SAVE_REGS ops armlp_ftrace_stub "
                    "(ftrace_regs_caller)",
            "redirect": f"first instruction .. first instruction of {NEW_FUNCTION}, "
                        "armlp_redirect_func (ftrace_regs_caller + undo)",
        },
        "targets": {"nop": NOP_TARGET, "plain_under": PLAIN_LIMIT},
        "builds": {build: {"cflags": BUILDS[build],
                           "functions": [c.to_json() for c in costs]}
                   for build, costs in results.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"wrote {shown}")
    bad = check_targets([c for costs in results.values() for c in costs])
    if bad:
        raise SystemExit("targets missed:\n  " + "\n  ".join(bad))
    print(f"targets met: nop == {NOP_TARGET}, plain < {PLAIN_LIMIT}")


if __name__ == "__main__":
    main()
