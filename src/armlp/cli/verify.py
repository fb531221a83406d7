"""``armlp verify``: prove, per function, that a redirect gives the new
function its caller's exact entry context (:mod:`armlp.verify`)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from armlp.cli.args import count
from armlp.cli.scan import parse_function_spec
from armlp.elf.image import ElfImage
from armlp.errors import ArmlpError

if TYPE_CHECKING:   # imported in run(): `armlp --help` should not pay for the emulator
    from armlp.analysis.scan import FunctionReport, ScanResult
    from armlp.verify import FunctionProof

HELP = """\
Load PROGRAM (an ARM executable built with -pg, ARM or Thumb code: static,
dynamic or PIE; or a shared library) into armlp's emulator (a dynamic program's or a
library's code only: it is not run from its entry) and, for every patchable
function (or the one --function names), prove by execution that redirecting
it to a new function is exact:

  The function's mcount site is pointed at the regs trampoline
  (ftrace_regs_caller) with an ops that moves the saved pc to a probe, the
  way the livepatch handler moves it to a replacement.  The function is then
  called --trials times, each with a random entry context: r0-r11, sp, lr
  and eight stack-argument words above sp.  When the probe is reached, after
  the prologue ran and the trampoline undid it, r0-r11, sp and lr must hold
  exactly the caller's values and the stack arguments must be unchanged --
  the context a direct call of the new function would have seen.  ip, pc and
  the flags are not compared (the AAPCS lets a veneer change ip; no callee
  may rely on the flags).  A crash or a run that never reaches the probe is
  a failure too.

Paths (--paths, default all), each proven and counted separately, with
the instructions executed from the function's first instruction to the
probe's:

  generic  the seed's design: the site calls the regs trampoline, whose
           handler moves the saved pc; the trampoline undoes the prologue
  fast     the site branches straight to the function's own small
           trampoline, which undoes the prologue (what a thread already
           inside the prologue takes)
  entry    a branch written over the function's first instruction (what
           new calls take once the redirect is settled); ARM functions
           only: a Thumb function's entry is never rewritten, its new calls
           take the fast path's trampoline

Functions that are not patchable (see `armlp scan`) are skipped and listed
by reason.

Exit status: 0 when every patchable function is verified on every path,
1 when any fails, 2 on bad input (the file, the function name, an
unpatchable --function, an unknown path).
"""

DEFAULT_TRIALS = 8


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="prove per function that a redirect keeps the "
                                      "caller's entry context",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", metavar="PROGRAM", help="static ARM executable built with -pg")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--function", metavar="NAME[,SYMPOS]",
                   help="verify this function only")
    p.add_argument("--trials", type=count, default=DEFAULT_TRIALS, metavar="N",
                   help=f"random entry contexts per function and path "
                        f"(default {DEFAULT_TRIALS})")
    p.add_argument("--paths", metavar="PATH[,PATH...]",
                   help="paths to prove: generic, fast, entry (default all)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the random contexts (default 0; runs are reproducible)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from armlp.target import Target
    from armlp.verify import PATHS, Prover

    paths = PATHS if args.paths is None else tuple(args.paths.split(","))
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        raise ArmlpError(f"bad --paths {args.paths!r}: choose from {', '.join(PATHS)}")
    want = parse_function_spec(args.function) if args.function else None
    image = ElfImage(args.program)
    if image.kind == "vmlinux":
        return _run_kernel(args, image, want)
    target = Target.emulate(args.program, code_only=True, count_instructions=True)
    reports = _selected(target.scan, want)
    patchable = [r for r in reports if r.verdict.patchable]
    skipped = [r for r in reports if r.site is not None and not r.verdict.patchable]
    records = target.ftrace.records
    missing = [r.fn.label for r in patchable if r.site not in records]
    if missing:   # scan says patchable but ftrace has no record: an armlp bug
        raise ArmlpError(f"{args.program}: no ftrace record for {', '.join(missing[:5])}")
    proofs = Prover(target, seed=args.seed).prove([records[r.site] for r in patchable
                                                   if r.site is not None],
                                                  trials=args.trials, paths=paths)
    return _report(args, target.image, reports, proofs, skipped, paths)


def _run_kernel(args: argparse.Namespace, image: ElfImage,
                want: tuple[str, int | None] | None) -> int:
    """A kernel image: the one path armlp_klp takes (:mod:`armlp.kernel.verify`)."""
    from armlp.analysis.scan import scan
    from armlp.kernel.verify import PATH, KernelProver

    if args.paths not in (None, PATH):
        raise ArmlpError(f"bad --paths {args.paths!r}: a kernel image has one path, {PATH}")
    reports = _selected(scan(image), want)
    patchable = [r for r in reports if r.verdict.patchable and r.site is not None]
    skipped = [r for r in reports if r.site is not None and not r.verdict.patchable]
    proofs = KernelProver(image, seed=args.seed).prove(patchable, trials=args.trials)
    return _report(args, image, reports, proofs, skipped, (PATH,))


def _report(args: argparse.Namespace, image: ElfImage, reports: list[FunctionReport],
            proofs: list[FunctionProof], skipped: list[FunctionReport],
            paths: Sequence[str]) -> int:
    doc = _document(args, image, reports, proofs, skipped)
    doc["paths"] = list(paths)
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        _print(doc, proofs)
    return 1 if any(not p.verified for p in proofs) else 0


def _selected(result: ScanResult, want: tuple[str, int | None] | None
              ) -> list[FunctionReport]:
    if want is None:
        return list(result.functions)
    report = result.find(*want)
    v = report.verdict
    if report.site is None or not v.patchable:
        raise ArmlpError(f"{report.fn.label} is not patchable: {v.reason}; nothing to verify")
    return [report]


def _path_stats(proofs: list[FunctionProof]) -> dict[str, dict[str, object]]:
    """Per path: how many proofs, how many verified, instruction counts."""
    out: dict[str, dict[str, object]] = {}
    names = list(dict.fromkeys(k for p in proofs for k in p.paths))   # in proof order
    for name in names:
        results = [p.paths[name] for p in proofs if name in p.paths]
        counts = [r.instructions for r in results if r.instructions is not None]
        out[name] = {
            "functions": len(results),
            "verified": sum(r.verified for r in results),
            "instructions": None if not counts else {
                "min": min(counts), "median": statistics.median_low(counts),
                "max": max(counts)},
        }
    return out


def _document(args: argparse.Namespace, image: ElfImage, reports: list[FunctionReport],
              proofs: list[FunctionProof], skipped: list[FunctionReport]
              ) -> dict[str, object]:
    by_rule: dict[str, dict[str, int]] = {}
    for p in proofs:
        row = by_rule.setdefault(p.rule or "-", {"verified": 0, "failed": 0})
        row["verified" if p.verified else "failed"] += 1
    reasons = Counter(r.verdict.reason_code for r in skipped)
    return {
        "program": str(args.program),
        "build_id": image.build_id,
        "trials": args.trials,
        "seed": args.seed,
        "summary": {
            "functions": len(reports),
            "with_mcount_site": sum(r.site is not None for r in reports),
            "patchable": len(proofs),
            "verified": sum(p.verified for p in proofs),
            "failed": sum(not p.verified for p in proofs),
            "skipped": len(skipped),
            "by_rule": dict(sorted(by_rule.items())),
            "skipped_by_reason": dict(sorted(reasons.items())),
            "paths": _path_stats(proofs),
        },
        "functions": [p.to_json() for p in proofs],
        "skipped": [{"name": r.fn.name, "sympos": r.fn.sympos, "address": r.fn.address,
                     "reason": r.verdict.reason_code, "detail": str(r.verdict.reason)}
                    for r in skipped],
    }


def _print(doc: dict[str, Any], proofs: list[FunctionProof]) -> None:
    s = doc["summary"]
    print(f"{doc['program']}: {s['functions']} functions, {s['with_mcount_site']} with an "
          f"mcount site: {s['patchable']} patchable, {s['skipped']} skipped (not patchable)")
    print(f"{'rule':8} {'verified':>8} {'failed':>8}")
    for rule, row in s["by_rule"].items():
        print(f"{rule:8} {row['verified']:8} {row['failed']:8}")
    for reason, n in s["skipped_by_reason"].items():
        print(f"skipped: {reason}: {n}")
    for name, st in s["paths"].items():
        ins = st["instructions"]
        cost = ("" if ins is None else
                f", entry -> new function {ins['min']}..{ins['max']} instructions "
                f"(median {ins['median']})")
        print(f"path {name}: {st['verified']}/{st['functions']} verified{cost}")
    for p in proofs:
        for name, r in p.paths.items():
            if not r.verified:
                label = p.name if not p.sympos else f"{p.name},{p.sympos}"
                print(f"FAILED {label} at {p.address:#x} (rule {p.rule}) path {name}: "
                      f"{r.mismatch}")
    failed = f", {s['failed']} FAILED" if s["failed"] else ""
    print(f"{s['verified']} of {s['patchable']} patchable functions verified{failed} "
          f"({doc['trials']} random entry contexts each, seed {doc['seed']})")
