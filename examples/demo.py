"""The main job: build an example ARM service with a bug and a patch module
that fixes it, show which functions armlp can patch, then run the service in
the emulator, apply the fix while it runs, and take it out again.

Run through ``./run.sh demo`` (which installs what is missing first).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from armlp.build import build_program
from armlp.toolchain import tool

HERE = Path(__file__).resolve().parent


def armlp(*args: str) -> None:
    cmd = [sys.executable, "-m", "armlp.cli.main", *args]
    print(f"\n$ armlp {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        sys.exit(proc.returncode)


def rel(path: Path) -> str:
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def main() -> int:
    build = HERE.parent / "build"
    service = build_program([HERE / "programs" / "service.c"], build / "service")
    print(f"built {rel(service)} from examples/programs/service.c "
          f"(-marm -pg -mapcs-frame -O2): price() forgets the 10% discount")
    flags = subprocess.run([sys.executable, "-m", "armlp.cli.main", "cflags", "--target",
                            str(service)], check=True, capture_output=True, text=True).stdout
    fix = build / "fix_price.o"
    subprocess.run([tool("gcc"), *flags.split(), "-c", str(HERE / "patches" / "fix_price.c"),
                    "-o", str(fix)], check=True)
    print(f"built {rel(fix)} from examples/patches/fix_price.c with $(armlp cflags --target "
          f"{rel(service)})")
    armlp("scan", rel(service), "--function", "price")
    armlp("run", "--machine", "emu", rel(service), "--patch", rel(fix), "--after", "450",
          "--unpatch-after", "400")
    calls = build_program([HERE / "programs" / "calls.c"], build / "calls")
    armlp("trace", "--graph", rel(calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
