"""The main job: build an example ARM program, show which of its functions
armlp can live patch, then run it in the emulator with the function tracer.

Run through ``./run.sh demo`` (which installs what is missing first).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from armlp.build import build_program

HERE = Path(__file__).resolve().parent


def armlp(*args: str) -> None:
    cmd = [sys.executable, "-m", "armlp.cli.main", *args]
    print(f"\n$ armlp {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        sys.exit(proc.returncode)


def main() -> int:
    program = build_program([HERE / "programs" / "calls.c"], HERE.parent / "build" / "calls")
    rel = program.relative_to(Path.cwd()) if program.is_relative_to(Path.cwd()) else program
    print(f"built {rel} from examples/programs/calls.c with -marm -pg -mapcs-frame -O2")
    armlp("scan", str(rel))
    armlp("scan", str(rel), "--function", "top")
    armlp("trace", "--graph", str(rel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
