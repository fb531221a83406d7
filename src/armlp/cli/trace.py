"""``armlp trace``: run a program in the emulator with the function tracer on."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from armlp.cli.args import amount, count
from armlp.errors import ArmlpError

if TYPE_CHECKING:   # imported in run(): `armlp scan` should not pay for the emulator
    from armlp.ftrace.tracer import TraceEntry

HELP = """\
Run PROGRAM (a static ARM executable built with -pg) in armlp's emulator with
the function tracer on.  Every mcount site starts as the NOP; the sites of
functions matching a --filter (all when none is given) call the tracer.
Prints one line per call in ftrace's format, 'function <- caller' (with
--graph, indented by call depth), then a call-count summary.  The program's
own output goes to stderr so the trace on stdout stays parseable.

With --target ID (or '-' for the only one) it traces a program running under
'armlp run' or 'armlp attach' instead, until --duration SECONDS or Ctrl-C.
"""

CHUNK = 2_000_000


def register(sub: Any) -> None:
    p = sub.add_parser("trace", help="run a program in the emulator with the function tracer",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", metavar="PROGRAM", nargs="?",
                   help="static ARM executable (not with --target)")
    p.add_argument("--target", metavar="ID",
                   help="trace a running target instead (see 'armlp status'); "
                        "'-' for the only one")
    p.add_argument("--duration", type=amount, default=None, metavar="SECONDS",
                   help="with --target: stop after SECONDS (default: until Ctrl-C)")
    p.add_argument("args", nargs="*", metavar="ARGS", help="program arguments (after --)")
    p.add_argument("--filter", action="append", default=[], metavar="GLOB",
                   help="trace functions matching GLOB (NAME,SYMPOS for one static); "
                        "repeatable")
    p.add_argument("--graph", action="store_true", help="indent calls by nesting depth")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-instructions", type=count, default=2_000_000_000, metavar="N",
                   help="stop the program after N instructions (default 2e9)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.target is not None:
        return run_live(args)
    if args.program is None:
        raise ArmlpError("trace: give PROGRAM, or --target ID for a running target")
    return run_emu(args)


def run_live(args: argparse.Namespace) -> int:
    """Trace a running target through its controller: the tracer's ring is
    read every 0.2 s (the target stops for each read)."""
    import time

    from armlp.control.paths import find_target
    from armlp.control.protocol import Session

    if args.program is not None or args.graph:
        raise ArmlpError("trace --target: no PROGRAM and no --graph (threads share the ring)")
    info = find_target(None if args.target == "-" else args.target)
    counts: Counter[str] = Counter()
    calls: list[list[str]] = []
    lost = 0
    deadline = None if args.duration is None else time.monotonic() + args.duration
    op = "trace_read"
    # One session for the whole trace: should this process go away (killed,
    # or its output closed: 'armlp trace ... | head'), the controller sees
    # the connection close and stops the tracer.
    with Session(info.socket) as session:
        session.request({"op": "trace_start", "filters": args.filter})
        try:
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    op = "trace_stop"
                res = session.request({"op": op})
                lost = res["lost"]
                for fn, caller in res["calls"]:
                    counts[fn] += 1
                    if args.json:
                        calls.append([fn, caller])
                    else:
                        sys.stdout.write(f"{fn} <- {caller}\n")
                sys.stdout.flush()
                if op == "trace_stop":
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            res = session.request({"op": "trace_stop"})
            lost = res["lost"]
            for fn, _caller in res["calls"]:
                counts[fn] += 1
    if args.json:
        sys.stdout.write(json.dumps({"target": info.id, "lost": lost,
                                     "calls": [{"function": f, "caller": c} for f, c in calls],
                                     "counts": dict(counts.most_common())}) + "\n")
    else:
        print(f"# {sum(counts.values())} calls traced, {lost} lost")
        for name, n in counts.most_common():
            print(f"# {name} {n}")
    return 0


def run_emu(args: argparse.Namespace) -> int:
    from armlp.ftrace.tracer import FunctionTracer
    from armlp.machine.emulator import Emulator
    from armlp.target import Target

    target = Target.emulate(args.program, [args.program, *args.args])
    tracer = FunctionTracer(target.ftrace, args.filter)
    tracer.start()
    emu = target.machine
    assert isinstance(emu, Emulator)
    entries: list[TraceEntry] = []
    output = ProgramOutput(emu)

    def between() -> None:
        new = tracer.read()
        output.flush()
        if not args.json:
            _print_entries(new, graph=args.graph)
        entries.extend(new)

    status = emu.run_to_exit(args.max_instructions, CHUNK, between)
    counts = Counter(e.function for e in entries)
    if args.json:
        out = {
            "program": args.program,
            "exit_status": status,
            "filters": args.filter,
            "lost": tracer.lost,
            "calls": [{"function": e.function, "caller": e.caller, "depth": e.depth,
                       "ip": e.ip, "parent_ip": e.parent_ip} for e in entries],
            "counts": dict(counts.most_common()),
        }
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        print(f"# {len(entries)} calls traced, {tracer.lost} lost, exit status {status}")
        width = max((len(k) for k in counts), default=8)
        for name, n in counts.most_common():
            print(f"# {name:<{width}} {n:>10}")
    return 0


class ProgramOutput:
    """Passes the program's new stdout/stderr bytes through to our stderr."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.seen = [0, 0]

    def flush(self) -> None:
        for i, data in enumerate((self.emu.stdout, self.emu.stderr)):
            if len(data) > self.seen[i]:
                sys.stderr.write(data[self.seen[i]:].decode("utf-8", "replace"))
                self.seen[i] = len(data)
        sys.stderr.flush()


def _print_entries(entries: list[TraceEntry], *, graph: bool) -> None:
    w = sys.stdout.write
    for e in entries:
        indent = "  " * e.depth if graph else ""
        w(f"{indent}{e.function} <- {e.caller}\n")
