"""The consistency model's cost: how long a transition takes on a loaded
live process, what the per-thread check adds to a redirected call, and
enable/disable cycles with transitions under load.

transition  ``tests/programs/busy.c`` under ``armlp run`` (qemu-arm): eight
            threads spin outside the patched function, never making a
            system call (their registers are never exact: each switches on
            a clean conservative scan once it has run since the code
            writes).  Per cycle, the time from sending ``patch`` to the
            controller's answer to a ``wait`` (the transition over),
            unforced, and the same for ``unpatch``; the pause of the request.
check       instructions of one call of ``leaf`` (``benchmarks/programs/
            redirect.c``) from its first instruction to the new function's,
            counted in the emulator with the real livepatch handler: the
            generic path outside a transition, the same during one (the
            handler looks the calling thread's stack up in the table, which
            has one row per writable mapping), and the fast path (the branch
            over the first instruction; off while a transition lasts).
cycles      ``--cycles N`` enable/disable cycles on busy.c, each waiting for
            its transition (unforced; forced after 10 s and counted), then
            the program's count of wrong results (must be 0) and its exit.

    .venv/bin/python benchmarks/transition.py [--runs 20] [--cycles 1000]

Prints the figures and writes benchmarks/results/transition.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from armlp.control.protocol import request  # noqa: E402
from armlp.elf.image import ElfImage  # noqa: E402
from armlp.ftrace.cost import executed, span  # noqa: E402
from armlp.livepatch import Livepatch  # noqa: E402
from armlp.machine.base import write_word  # noqa: E402
from armlp.machine.emulator import Emulator  # noqa: E402
from armlp.program_build import build_program  # noqa: E402
from armlp.runtime.layout import KLP_NODE_TRANSITION  # noqa: E402
from armlp.target import Target  # noqa: E402
from armlp.toolchain import patch_cflags, tool  # noqa: E402
from results_io import controller_socket, stats, wait_transition, write_results  # noqa: E402

BUSY = ROOT / "tests/programs/busy.c"
BUSY_FIX = ROOT / "tests/patches/busy_fix.c"
REDIRECT = ROOT / "benchmarks/programs/redirect.c"
LEAF_FIX = """#include <armlp/livepatch.h>
ARMLP_PATCH("leaf-fix");
int leaf_v2(int x) { return x + 2; }
ARMLP_REPLACE(leaf, leaf_v2);
"""
#: The issue's goal for a transition with eight busy threads (issue 11).
GOAL_MS = 100.0
FORCE_AFTER = 10.0


def build_patch(source: str | Path, program: Path, out: Path) -> Path:
    src = Path(source) if isinstance(source, Path) else out.with_suffix(".c")
    if not isinstance(source, Path):
        src.write_text(source)
    subprocess.run([tool("gcc"), *patch_cflags(ElfImage(program).build_id), "-c", str(src),
                    "-o", str(out)], check=True)
    return out


# -- the per-thread check, in instructions ---------------------------------------

def check_costs(work: Path) -> dict[str, Any]:
    program = build_program([REDIRECT])
    patch = build_patch(LEAF_FIX, program, work / "leaf_fix.o")
    out: dict[str, Any] = {}
    for fast in (False, True):
        target = Target.emulate(program)
        emu = target.machine
        assert isinstance(emu, Emulator)
        lp = Livepatch(target, fast=fast)
        p = lp.load(patch)
        lp.enable(p)
        if lp.transition is not None:
            raise SystemExit("the emulated transition did not finish at once")
        leaf = target.ftrace.find_function("leaf").report.fn.address
        (f,) = p.funcs
        if fast:
            out["fast"] = span(executed(emu, leaf, [1]), leaf, f.new_func)
            continue
        out["generic"] = span(executed(emu, leaf, [1]), leaf, f.new_func)
        # The same call while the function is in transition: the flag set,
        # the table as the last transition left it (every row patched).
        write_word(emu, f.node + KLP_NODE_TRANSITION, 1)
        pcs = executed(emu, leaf, [1])
        out["generic_in_transition"] = span(pcs, leaf, f.new_func)
        write_word(emu, f.node + KLP_NODE_TRANSITION, 0)
        table = lp.transition_table(0)
        out["table_rows"] = int.from_bytes(emu.read(table + 4, 4), "little")
        state = target.runtime.symbol("klp_patch_state")
        out["klp_patch_state"] = sum(1 for pc in pcs if state <= pc < state + 0x80)
    out["check_added"] = out["generic_in_transition"] - out["generic"]
    return out


# -- a live process ----------------------------------------------------------------

def live(work: Path, runs: int, cycles: int) -> dict[str, Any]:
    program = build_program([BUSY], work / "busy", freestanding=False, ldflags=["-pthread"])
    patch = build_patch(BUSY_FIX, program, work / "busy_fix.o")
    env = dict(os.environ, ARMLP_RUNTIME_DIR=str(work / "rt"))
    os.environ["ARMLP_RUNTIME_DIR"] = env["ARMLP_RUNTIME_DIR"]
    done_file = work / "done"
    with open(work / "armlp.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "armlp.cli.main", "run", str(program),
                                 "36000", "-", str(done_file)], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
    try:
        socket = controller_socket(proc)
        time.sleep(0.5)
        enable: list[float] = []
        disable: list[float] = []
        pauses: list[float] = []
        forced = 0
        for i in range(max(runs, cycles)):
            for op, times in (("patch", enable), ("unpatch", disable)):
                req = {"op": "patch", "path": str(patch)} if op == "patch" else \
                    {"op": "unpatch", "name": "busy-fix"}
                t0 = time.monotonic()
                res = request(socket, req)
                done = not res["transition"] or \
                    wait_transition(socket, "busy-fix", t0 + FORCE_AFTER)
                if not done:
                    request(socket, {"op": "force", "name": "busy-fix"})
                    forced += 1
                elif i < runs:
                    times.append((time.monotonic() - t0) * 1e3)
                    pauses.append(res["pause_ms"])
        done_file.touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    m = re.search(r"fresh (\d+) bad (\d+)", out)
    result: dict[str, Any] = {
        "busy_threads": 8,
        "enable_ms": stats(enable) if enable else None,
        "disable_ms": stats(disable) if disable else None,
        "pause_ms": stats(pauses) if pauses else None,
        "timed_cycles": len(enable),
        "cycles": max(runs, cycles),
        "forced": forced,
    }
    if m:
        result.update(fresh=int(m[1]), wrong_results=int(m[2]))
    result["exit_status"] = proc.returncode
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="timed enable/disable cycles")
    ap.add_argument("--cycles", type=int, default=0,
                    help="enable/disable cycles in all (the first RUNS timed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="armlp-bench-") as tmp:
        work = Path(os.environ.get("ARMLP_BENCH_DIR", tmp))
        check = check_costs(work)
        print(f"instructions, leaf's first instruction to the new function's (emulator): "
              f"generic {check['generic']}, generic in a transition "
              f"{check['generic_in_transition']} (+{check['check_added']}, a table of "
              f"{check['table_rows']} rows), fast {check['fast']}")
        result = live(work, args.runs, args.cycles)
    e, d = result["enable_ms"], result["disable_ms"]
    print(f"transition with 8 busy threads (qemu-arm, unforced, {result['timed_cycles']} timed "
          f"cycles of {result['cycles']}): enable {e['median']} ms median "
          f"(min {e['min']}, max {e['max']}), disable {d['median']} ms median "
          f"(goal < {GOAL_MS:.0f} ms); forced {result['forced']}; wrong results "
          f"{result.get('wrong_results')}")
    write_results("transition", {"check_instructions": check, "live": result,
                                 "goal_ms": GOAL_MS,
                                 "command": "benchmarks/transition.py "
                                            f"--runs {args.runs} --cycles {args.cycles}"})


if __name__ == "__main__":
    main()
