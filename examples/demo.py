"""The main job: live patch a running multi-threaded ARM service.

Builds examples/programs/live_service.c (four worker threads price orders,
the main thread prints a line every 200 ms; price() forgets a 10% discount)
and the fix examples/patches/fix_price.c, starts the service as a real
Linux process under qemu-arm with ``armlp run``, and while it runs applies
the fix with ``armlp patch``, shows ``armlp status``, and takes the fix out
again with ``armlp unpatch``: the printed prices change and change back, and
a last ``armlp status`` shows the target as it was.  Then the same fix as a
source diff (examples/patches/fix_price.diff): ``armlp build`` proves the
source rebuilds the running binary and makes the patch, applied to the
service running again.

Then the kernel part (examples/demo_kernel.py): Debian's stock ARM kernel,
live patched.  Run through ``./run.sh demo`` (which installs what is missing
first); ``./run.sh demo program`` or ``./run.sh demo kernel`` runs one part.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from armlp.program_build import build_program
from armlp.toolchain import tool

HERE = Path(__file__).resolve().parent
ARMLP = [sys.executable, "-m", "armlp.cli.main"]


def rel(path: Path) -> str:
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def armlp(*args: str) -> None:
    print(f"\n$ armlp {' '.join(args)}", flush=True)
    subprocess.run([*ARMLP, *args], check=True)


def main(argv: list[str]) -> int:
    parts = argv or ["program", "kernel"]
    if any(p not in ("program", "kernel") for p in parts):
        print("usage: ./run.sh demo [program] [kernel]", file=sys.stderr)
        return 2
    status = program() if "program" in parts else 0
    if status == 0 and "kernel" in parts:
        import demo_kernel
        status = demo_kernel.main()
    return status


def program() -> int:
    build = HERE.parent / "build"
    service = build_program([HERE / "programs" / "live_service.c"], build / "live_service",
                            freestanding=False, ldflags=["-pthread"])
    flags = subprocess.run([*ARMLP, "cflags", "--target", str(service)], check=True,
                           capture_output=True, text=True).stdout.split()
    fix = build / "fix_price.o"
    subprocess.run([tool("gcc"), *flags, "-c", str(HERE / "patches" / "fix_price.c"),
                    "-o", str(fix)], check=True)
    print(f"built {rel(service)} (examples/programs/live_service.c, -marm -pg -mapcs-frame "
          f"-O2, static glibc, 4 worker threads): price() forgets the 10% discount")
    print(f"built {rel(fix)} from examples/patches/fix_price.c with "
          f"$(armlp cflags --target {rel(service)})")
    armlp("scan", rel(service), "--function", "price")
    env = dict(os.environ, ARMLP_RUNTIME_DIR=tempfile.mkdtemp(prefix="armlp-demo-"))
    os.environ.update(env)
    print(f"\n$ armlp run {rel(service)} 16 &", flush=True)
    run = subprocess.Popen([*ARMLP, "run", rel(service), "16"], env=env)
    try:
        time.sleep(1.1)
        armlp("patch", rel(fix))
        time.sleep(0.3)
        armlp("status")
        time.sleep(0.9)
        armlp("unpatch", "fix-price")
        time.sleep(0.6)
        armlp("status")
        status = run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    print(f"\nthe service exited with status {status}")
    if status == 0:
        status = from_diff(service, env)
    return status


#: How the demo's service is built, for armlp build: the flags build_program
#: gave it (the base proof checks they are the same).
MAKEFILE = """\
CFLAGS = -marm -pg -mapcs-frame -O2
live_service: live_service.o
\t$(CC) -static -pthread -o $@ live_service.o
live_service.o: live_service.c
\t$(CC) $(CFLAGS) -c live_service.c -o $@
"""


def from_diff(service: Path, env: dict[str, str]) -> int:
    """The same fix as a source diff, made into a patch by armlp build."""
    import shutil
    build = HERE.parent / "build"
    tree = build / "demo-src"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    shutil.copy(HERE / "programs" / "live_service.c", tree)
    (tree / "Makefile").write_text(MAKEFILE)
    fix = build / "fix_price_from_diff.o"
    print("\nthe same fix as a diff of the source (examples/patches/fix_price.diff), "
          "built into a patch after proving the tree rebuilds the running binary:")
    armlp("build", rel(HERE / "patches" / "fix_price.diff"), "--source", rel(tree),
          "--program", rel(service), "--build", "make", "--name", "fix-price-diff",
          "-o", rel(fix))
    print(f"\n$ armlp run {rel(service)} 8 &", flush=True)
    run = subprocess.Popen([*ARMLP, "run", rel(service), "8"], env=env)
    try:
        time.sleep(1.1)
        armlp("patch", rel(fix))
        status = run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    print(f"\nthe service exited with status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
