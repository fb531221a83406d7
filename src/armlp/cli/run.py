"""``armlp run`` and ``armlp cflags``: run a program and live patch it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from armlp.errors import ArmlpError

RUN_HELP = """\
Run PROGRAM (a static ARM executable built with -pg) on a machine and apply a
live patch while it runs.  With --machine emu (the only machine so far) the
program runs in armlp's emulator; its output passes through unchanged.

--after MS applies the patch once the program's clock has advanced MS
milliseconds (the emulator's virtual clock, which the program's sleeps
advance: runs are reproducible); --unpatch-after MS disables it again that
many milliseconds after it was applied.  armlp's own messages go to stderr.
"""

CFLAGS_HELP = """\
Print the compiler flags for building a live patch module:

  arm-linux-gnueabi-gcc $(armlp cflags --target PROGRAM) -c fix.c -o fix.o

With --target the patch records PROGRAM's build-id and armlp refuses to
apply it to any other program.
"""

CHUNK = 100_000


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a program and live patch it while it runs",
                       description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", metavar="PROGRAM")
    p.add_argument("args", nargs="*", metavar="ARGS", help="program arguments (after --)")
    p.add_argument("--machine", choices=["emu"], default="emu",
                   help="where to run it (emu: armlp's emulator)")
    p.add_argument("--patch", action="append", default=[], metavar="PATCH.o",
                   help="patch module to apply (repeatable: applied in order, stacked)")
    p.add_argument("--after", type=float, default=0.0, metavar="MS",
                   help="apply the patches after MS ms of the program's clock (default 0)")
    p.add_argument("--unpatch-after", type=float, default=None, metavar="MS",
                   help="disable the patches (newest first) MS ms after applying them")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary of events and the exit status at the end")
    p.add_argument("--max-instructions", type=int, default=5_000_000_000, metavar="N",
                   help="stop the program after N instructions")
    p.set_defaults(func=run)
    c = sub.add_parser("cflags", help="compiler flags for building a live patch",
                       description=CFLAGS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--target", metavar="PROGRAM", help="bind the patch to PROGRAM's build-id")
    c.set_defaults(func=cflags)


def cflags(args: argparse.Namespace) -> int:
    from armlp.elf.image import ElfImage
    from armlp.toolchain import patch_cflags

    build_id = None
    if args.target:
        build_id = ElfImage(args.target).build_id
        if build_id is None:
            raise ArmlpError(f"{args.target}: has no build-id to bind the patch to")
    print(" ".join(patch_cflags(build_id)))
    return 0


def _note(msg: str) -> None:
    sys.stdout.flush()
    print(f"[armlp] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from armlp.livepatch import Livepatch
    from armlp.machine.emulator import Emulator, StopReason
    from armlp.target import Target

    target = Target.emulate(args.program, [args.program, *args.args], echo=True)
    lp = Livepatch(target)
    patches = [lp.load(p) for p in args.patch]       # every check before running
    emu = target.machine
    assert isinstance(emu, Emulator)
    clock = emu.syscalls.vclock
    events: list[dict[str, object]] = []
    applied_at: float | None = None
    budget = args.max_instructions

    def now_ms() -> float:
        return clock.elapsed_ns(None) / 1e6

    def due() -> bool:
        if patches and applied_at is None:
            return bool(now_ms() >= args.after)
        return bool(applied_at is not None and args.unpatch_after is not None
                    and any(p.enabled for p in patches)
                    and now_ms() >= applied_at + args.unpatch_after)

    def on_sleep() -> None:
        if due():
            emu.stop()      # act right after the program's sleep, between its outputs

    emu.syscalls.on_sleep = on_sleep

    status: int | None = None
    while budget > 0:
        if patches and applied_at is None and now_ms() >= args.after:
            for p in patches:
                lp.enable(p)
                funcs = ", ".join(f"{f.label} -> {f.new_name}" for f in p.funcs)
                _note(f"{now_ms():.0f} ms: patch {p.name} enabled ({funcs})")
                events.append({"ms": now_ms(), "event": "enabled", "patch": p.name})
            applied_at = now_ms()
        if (applied_at is not None and args.unpatch_after is not None
                and any(p.enabled for p in patches)
                and now_ms() >= applied_at + args.unpatch_after):
            for p in reversed(patches):
                lp.disable(p)
                _note(f"{now_ms():.0f} ms: patch {p.name} disabled")
                events.append({"ms": now_ms(), "event": "disabled", "patch": p.name})
        stop = emu.run(max_instructions=min(CHUNK, budget))
        budget -= CHUNK
        lp.release_deferred()
        if stop.reason is StopReason.EXITED:
            status = stop.exit_status
            break
    if status is None:
        raise ArmlpError(f"{args.program}: still running after {args.max_instructions} "
                         f"instructions (raise --max-instructions)")
    if args.json:
        sys.stdout.write(json.dumps({"exit_status": status, "events": events}) + "\n")
    return status
