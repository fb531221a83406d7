"""``armlp run`` and ``armlp cflags``: run a program and live patch it."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from armlp.cli.args import amount, count
from armlp.errors import ArmlpError

if TYPE_CHECKING:
    from armlp.control.qemu_live import GdbLive
    from armlp.control.server import Controller
    from armlp.elf.image import ElfImage
    from armlp.livepatch.module import KlpPatch

RUN_HELP = """\
Run PROGRAM (an ARM executable built with -pg: static, dynamic or PIE) under
armlp.

--machine qemu (the default): the program runs as a real Linux process under
qemu-arm, with its stdin/stdout/stderr untouched.  armlp attaches through the
GDB stub on a private Unix socket before the first instruction, turns every
mcount site into the NOP, loads its runtime, and stays up for the program's
life serving a control socket: 'armlp patch', 'unpatch' and 'status' talk to
it.  It exits with the program's exit status.  --patch PATCH.o applies a patch
before the program's first instruction (a dynamic program's: its entry
point, once its libraries are mapped); PATCH.o@SECONDS that long after the
start.  Code writes stop every thread
(ptrace); should armlp be killed or fail, a guardian process lets the program
run on with whatever was fully applied.  armlp adds one thread of its own to
the program (its agent), which waits in qemu's GDB stub, so no system call
of the program's is interrupted; where armlp finds the stub's door, the
program's own signals never enter the stub (without it, armlp's stops are
the host's SIGRTMAX, the program's signal 62, to the agent: leave that
signal alone).  ^C in the terminal is the program's: armlp itself ignores
it.  Program arguments go after '--'.

A dynamically linked program runs with the sysroot its dynamic linker names
(or QEMU_LD_PREFIX, or --sysroot DIR) and LD_LIBRARY_PATH as given; armlp takes over at its
own entry point, once its libraries are mapped.  Its shared libraries are
patch objects (ARMLP_OBJECT("soname") in the patch): those built with -pg
and not stripped can be patched, and one loaded later (dlopen) is patched as
it loads, before its code runs.

--machine emu: the program runs in armlp's emulator.  --after MS applies the
--patch modules once the program's clock has advanced MS milliseconds (the
emulator's virtual clock, which the program's sleeps advance: runs are
reproducible); --unpatch-after MS disables them again that many milliseconds
later.

armlp's own messages go to stderr, prefixed with [armlp].
"""

ATTACH_HELP = """\
Like 'armlp run', for a program already waiting under a GDB stub: a device's
gdbserver (HOST:PORT) or a 'qemu-arm -g PATH' (unix:PATH).  PROGRAM is the
same ELF file, for its symbols.  armlp ends when the program does, with its
exit status when it can read it (a local qemu's stub reports none while
armlp keeps the program's signals out of it: armlp reads it from /proc
before the program's parent reaps it, else exits 255).  The GDB protocol
has no authentication: anyone who can reach a TCP stub controls the
process, so prefer a Unix socket or an SSH tunnel.
"""

CFLAGS_HELP = """\
Print the compiler flags for building a live patch module:

  arm-linux-gnueabi-gcc $(armlp cflags --target PROGRAM) -c fix.c -o fix.o

With --target the patch records PROGRAM's build-id and armlp refuses to
apply it to any other program.  PROGRAM may be a shared library (a patch of
that library, ARMLP_OBJECT): the patch then applies to any program that has
loaded that very build of it.

The patch's code is ARM (-marm) by default, Thumb-2 with --thumb; either
kind replaces ARM and Thumb functions alike (calls interwork).  For an armhf
program (hard-float) compile with arm-linux-gnueabihf-gcc.
"""

CHUNK = 100_000


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a program and live patch it while it runs",
                       description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", metavar="PROGRAM")
    p.add_argument("args", nargs="*", metavar="ARGS", help="program arguments (after --)")
    p.add_argument("--machine", choices=["qemu", "emu"], default="qemu",
                   help="qemu: a real process under qemu-arm (default); emu: armlp's emulator")
    p.add_argument("--sysroot", metavar="DIR",
                   help="the ARM root a dynamically linked program's dynamic linker and "
                        "libraries come from (default: the Debian cross sysroot its "
                        "interpreter names, /usr/arm-linux-gnueabi[hf], or QEMU_LD_PREFIX)")
    p.add_argument("--patch", action="append", default=[], metavar="PATCH.o[@SECONDS]",
                   help="patch module to apply (repeatable: applied in order, stacked); "
                        "with qemu, @SECONDS delays it")
    p.add_argument("--after", type=amount, default=0.0, metavar="MS",
                   help="apply the patches after MS ms of the program's clock (default 0)")
    p.add_argument("--unpatch-after", type=amount, default=None, metavar="MS",
                   help="disable the patches (newest first) MS ms after applying them")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary of events and the exit status at the end")
    p.add_argument("--max-instructions", type=count, default=5_000_000_000, metavar="N",
                   help="stop the program after N instructions")
    p.set_defaults(func=run)
    a = sub.add_parser("attach", help="take control of a program waiting under a GDB stub",
                       description=ATTACH_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("address", metavar="unix:PATH|HOST:PORT")
    a.add_argument("program", metavar="PROGRAM", help="the program's ELF file (for its symbols)")
    a.add_argument("--patch", action="append", default=[], metavar="PATCH.o[@SECONDS]")
    a.set_defaults(func=attach)
    c = sub.add_parser("cflags", help="compiler flags for building a live patch",
                       description=CFLAGS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--target", metavar="PROGRAM", help="bind the patch to PROGRAM's build-id")
    c.add_argument("--thumb", action="store_true",
                   help="build the patch's code as Thumb-2 (-mthumb) instead of ARM")
    c.set_defaults(func=cflags)


def cflags(args: argparse.Namespace) -> int:
    from armlp.elf.image import ElfImage
    from armlp.toolchain import patch_cflags

    build_id = None
    if args.target:
        build_id = ElfImage(args.target).build_id
        if build_id is None:
            raise ArmlpError(f"{args.target}: has no build-id to bind the patch to")
    print(" ".join(patch_cflags(build_id, thumb=args.thumb)))
    return 0


def _note(msg: str) -> None:
    sys.stdout.flush()
    print(f"[armlp] {msg}", file=sys.stderr, flush=True)


def _split_patch(spec: str) -> tuple[str, float]:
    """``PATCH.o[@SECONDS]``: a regular file (checked now, before anything
    starts) and a finite delay of at least 0."""
    from armlp.inputs import check_input

    path, sep, delay = spec.rpartition("@")
    if not sep:
        path, seconds = spec, 0.0
    else:
        try:
            seconds = amount(delay)
        except argparse.ArgumentTypeError as exc:
            raise ArmlpError(f"bad --patch {spec!r}: expected PATCH.o@SECONDS ({exc})") \
                from None
    check_input(path, "patch module")
    return path, seconds


def run(args: argparse.Namespace) -> int:
    if args.machine == "qemu":
        return run_qemu(args)
    return run_emu(args)


def run_qemu(args: argparse.Namespace) -> int:
    from armlp.control import qemu_live
    from armlp.control.paths import runtime_dir
    from armlp.elf.image import ElfImage

    if args.after or args.unpatch_after is not None:
        raise ArmlpError("--after/--unpatch-after are for --machine emu; with qemu use "
                         "--patch PATCH.o@SECONDS and 'armlp unpatch'")
    image = ElfImage(args.program)
    if image.is_relocatable:
        raise ArmlpError(f"{args.program}: a relocatable object, not a program")
    if args.sysroot is not None and image.interpreter is None:
        raise ArmlpError(f"--sysroot: {args.program} is statically linked (it loads no "
                         f"libraries)")
    patches = [_split_patch(p) for p in args.patch]
    runtime_dir()       # a control directory that is not private: refuse before starting
    live = qemu_live.start(image, args.program, args.args, args.sysroot)
    assert live.qemu is not None and live.guardian is not None
    if qemu_live.gprof_linked(image) and live.machine.door is None:
        _note(f"warning: {args.program} was linked with -pg (gprof): its SIGPROF timer "
              f"stops a thread in qemu's GDB stub 100 times a second, and armlp found no "
              f"way to keep it out (armlp.machine.door), so qemu-user 7.2's stub may not "
              f"survive it beside armlp's own stops; compile with -pg, link without it")
    try:                # refusals before the program's first instruction: it never runs
        controller = _controller(live.image, live, args.program, patches)
        listener = controller.listen()
    except BaseException:
        live.guardian.stand_down()
        live.qemu.close()
        raise
    # From here on the program runs: a terminal's ^C is the program's (it
    # ends with its SIGINT, or goes on), and no error of armlp's ends it.
    with _interrupts_are_the_programs():
        try:
            status = controller.serve(listener)
        except Exception as exc:
            if live.qemu.popen.poll() is not None:      # nothing left to keep alive
                live.guardian.stand_down()
                live.qemu.close()
                raise ArmlpError(_describe(exc)) from None
            _note(f"error: {_describe(exc)}; the program runs on without armlp")
            status = live.abandon() or 0
        else:
            live.guardian.stand_down()
            live.qemu.close()
    if args.json:
        sys.stdout.write(json.dumps({"exit_status": status}) + "\n")
    return status


def attach(args: argparse.Namespace) -> int:
    from armlp.control import qemu_live
    from armlp.elf.image import ElfImage

    image = ElfImage(args.program)
    patches = [_split_patch(p) for p in args.patch]
    live = qemu_live.attach(image, args.program, args.address, _note)
    assert live.guardian is not None
    # Stood down only when the program has ended: if armlp fails while the
    # program it did not start runs on, the guardian lets it go cleanly.
    with _interrupts_are_the_programs():
        try:
            controller = _controller(live.image, live, args.program, patches)
            status = controller.serve()
        except Exception as exc:
            live.abandon()
            raise ArmlpError(f"{_describe(exc)}; the program runs on without armlp") from None
    live.guardian.stand_down()
    return status


@contextlib.contextmanager
def _interrupts_are_the_programs() -> Iterator[None]:
    """SIGINT ignored while armlp serves a running program (a terminal sends
    ^C to the whole process group: it is the program's to take), and put
    back as it was after, so that armlp called in-process (a script, a
    test) does not leave its caller deaf to ^C."""
    import signal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _describe(exc: BaseException) -> str:
    import os
    if os.environ.get("ARMLP_DEBUG") and not isinstance(exc, ArmlpError):
        import traceback
        traceback.print_exception(exc)
    return str(exc) if isinstance(exc, ArmlpError) else \
        f"internal error ({type(exc).__name__}: {exc})"


def _controller(image: ElfImage, live: GdbLive, program: str,
                patches: list[tuple[str, float]]) -> Controller:
    """Attach armlp to a stopped process: its controller, ready to serve."""
    import os

    from armlp.control.libraries import LibraryWatch
    from armlp.control.protocol import Patch
    from armlp.control.server import Controller
    from armlp.target import Target

    target = Target.attach(live.machine, image, live.libraries)
    controller = Controller(target, live, program=program, pid=live.pid, on_event=_note)
    if live.machine.host_memory is not None and LibraryWatch.wanted(controller.livepatch):
        try:
            live.watch = LibraryWatch(live.machine, controller.livepatch, live.pid, _note)
        except ArmlpError as exc:
            _note(f"warning: libraries loaded later are not patch objects: {exc}")
    for path, delay in patches:
        controller.livepatch.load(os.path.abspath(path))     # refuse before it runs
        controller.schedule(delay, Patch(os.path.abspath(path)))
    _note(f"target {controller.id}: {len(target.ftrace.records)} mcount sites ready; "
          f"control socket {controller.socket_path}")
    return controller


def run_emu(args: argparse.Namespace) -> int:
    from armlp.livepatch import Livepatch
    from armlp.machine.emulator import Emulator
    from armlp.target import Target

    if args.sysroot is not None:
        raise ArmlpError("--sysroot is for --machine qemu (the emulator runs static "
                         "programs)")
    target = Target.emulate(args.program, [args.program, *args.args], echo=True)
    lp = Livepatch(target)
    patches = [lp.load(_split_patch(p)[0]) for p in args.patch]   # every check first
    emu = target.machine
    assert isinstance(emu, Emulator)
    clock = emu.syscalls.vclock
    events: list[dict[str, object]] = []
    applied_at: float | None = None

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

    to_enable = list(patches)
    to_disable: list[KlpPatch] = []

    def between() -> None:
        nonlocal applied_at
        lp.release_deferred()
        # One transition at a time; each completes when the thread is out
        # of the functions it switches (tried between chunks).
        if not lp.try_complete():
            return
        if to_enable and now_ms() >= args.after:
            p = to_enable.pop(0)
            lp.enable(p)
            funcs = ", ".join(f"{f.label} -> {f.new_name}" for f in p.funcs)
            _note(f"{now_ms():.0f} ms: patch {p.name} enabled ({funcs})")
            events.append({"ms": now_ms(), "event": "enabled", "patch": p.name})
            if not to_enable:
                applied_at = now_ms()
                to_disable.extend(reversed(patches))
            return
        if (applied_at is not None and args.unpatch_after is not None and to_disable
                and now_ms() >= applied_at + args.unpatch_after):
            p = to_disable.pop(0)
            lp.disable(p)
            _note(f"{now_ms():.0f} ms: patch {p.name} disabled")
            events.append({"ms": now_ms(), "event": "disabled", "patch": p.name})

    status = emu.run_to_exit(args.max_instructions, CHUNK, between)
    if args.json:
        sys.stdout.write(json.dumps({"exit_status": status, "events": events}) + "\n")
    return status
