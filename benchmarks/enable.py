"""Enable/disable time of one patch replacing N functions, on the emulator.

Generates a program with N small functions and a patch module replacing all
of them, then times ``Livepatch.enable`` and ``Livepatch.disable`` (the whole
control-plane work: relocation, checks, func-stack nodes, the code writes)
over several runs, fast path on and off.  Prints the figures and writes
benchmarks/results/enable.json.

    .venv/bin/python benchmarks/enable.py [--functions 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from armlp.livepatch import Livepatch
from armlp.program_build import build_program, cache_dir
from armlp.target import Target
from armlp.toolchain import patch_cflags, tool
from results_io import stats, write_results

HERE = Path(__file__).resolve().parent


def generate(n: int) -> tuple[Path, Path]:
    work = cache_dir() / f"bench-enable-{n}"
    work.mkdir(parents=True, exist_ok=True)
    prog = work / "prog.c"
    body = ["#include \"armlp_fs.h\""]
    body += [f"FS_NOINLINE int f{i}(int x) {{ return x * {i + 3} + {i}; }}" for i in range(n)]
    body += ["int main(void) { int s = 0;"]
    body += [f"  s += f{i}(s);" for i in range(n)]
    body += ["  return s & 1; }"]
    prog.write_text("\n".join(body) + "\n")
    patch = work / "patch.c"
    lines = ["#include <armlp/livepatch.h>", 'ARMLP_PATCH("bench");']
    for i in range(n):
        lines.append(f"int f{i}_v2(int x) {{ return x * {i + 3} - {i}; }}")
        lines.append(f"ARMLP_REPLACE(f{i}, f{i}_v2);")
    patch.write_text("\n".join(lines) + "\n")
    exe = build_program([prog], work / "prog")
    obj = work / "patch.o"
    if not obj.exists() or obj.stat().st_mtime < patch.stat().st_mtime:
        subprocess.run([tool("gcc"), *patch_cflags(), "-c", str(patch), "-o", str(obj)],
                       check=True)
    return exe, obj


def measure(exe: Path, obj: Path, runs: int, fast: bool) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"enable_ms": [], "disable_ms": []}
    for _ in range(runs):
        target = Target.emulate(exe)
        lp = Livepatch(target, fast=fast)
        patch = lp.load(obj)
        t0 = time.perf_counter()
        lp.enable(patch)
        t1 = time.perf_counter()
        lp.disable(patch)
        t2 = time.perf_counter()
        out["enable_ms"].append((t1 - t0) * 1e3)
        out["disable_ms"].append((t2 - t1) * 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--functions", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    exe, obj = generate(args.functions)
    result: dict[str, object] = {"functions": args.functions, "runs": args.runs}
    print(f"patch of {args.functions} functions, {args.runs} runs (ms: min / median / max)")
    for fast in (True, False):
        figs = measure(exe, obj, args.runs, fast)
        label = "fast path" if fast else "generic path"
        row = {k: stats(v, 1) for k, v in figs.items()}
        for k, st in row.items():
            print(f"  {label:13} {k:11} {st['min']:8.1f} {st['median']:8.1f} {st['max']:8.1f}")
        result["fast" if fast else "generic"] = row
    write_results("enable", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
