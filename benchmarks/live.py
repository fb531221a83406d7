"""Live processes under qemu-arm: the pause a patch costs the target, the
latency of ``armlp patch``, and the overhead of a patched program.

    .venv/bin/python benchmarks/live.py [--runs 5]

Prints the figures and writes benchmarks/results/live.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from armlp.control.protocol import request
from armlp.elf.image import ElfImage
from armlp.program_build import build_program, cache_root
from armlp.toolchain import patch_cflags, tool
from results_io import controller_socket, stats, wait_transition, write_results

HERE = Path(__file__).resolve().parent
N_FUNCS = 100
#: Threads that spin while the loaded pauses are measured.
BUSY = 8
LOOP = 3_000_000

PROGRAM = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#define F(i) __attribute__((noinline, noipa)) int f##i(int x) { return x * (i + 3) + i; }
%(funcs)s
__attribute__((noinline, noipa)) int hot(int x) { return (x * 7) ^ (x >> 3); }
static void *spin(void *arg) { volatile int s = (int)(long)arg; for (;;) s += hot(s); }
static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                             return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char **argv)
{
    /* argv[1]: "wait FILE" waits for FILE (patches go in first), then times
     * LOOP calls of hot(); without arguments it just idles for the pause
     * measurements until the file named by argv[2] exists.  argv[3]: that
     * many threads spin calling hot() meanwhile (the loaded pause). */
    for (int i = 0; argc > 3 && i < atoi(argv[3]); i++) {
        pthread_t t;
        pthread_create(&t, NULL, spin, (void *)(long)i);
    }
    if (argc > 2)
        while (access(argv[2], F_OK) != 0)
            usleep(2000);
    int s = 0;
    long long t0 = now();
    for (int i = 0; i < %(loop)d; i++)
        s += hot(i);
    long long t1 = now();
    s += f0(s);
    printf("loop_ns %%lld sum %%d\n", t1 - t0, s);
    return 0;
}
"""


def patch_source(funcs: list[str]) -> str:
    lines = ["#include <armlp/livepatch.h>", 'ARMLP_PATCH("bench");']
    for name in funcs:
        if name == "hot":
            lines.append("int hot_v2(int x) { return (x * 7) ^ (x >> 3); }")
        else:
            i = int(name[1:])
            lines.append(f"int {name}_v2(int x) {{ return x * ({i} + 3) + {i}; }}")
        lines.append(f"ARMLP_REPLACE({name}, {name}_v2);")
    return "\n".join(lines) + "\n"


def build(work: Path) -> tuple[Path, dict[str, Path]]:
    src = work / "live_bench.c"
    funcs = "\n".join(f"F({i})" for i in range(N_FUNCS))
    src.write_text(PROGRAM % {"funcs": funcs, "loop": LOOP})
    prog = build_program([src], work / "live_bench", freestanding=False, ldflags=["-pthread"])
    flags = patch_cflags(ElfImage(prog).build_id)
    patches = {}
    for label, names in (("1", ["f1"]), ("10", [f"f{i}" for i in range(1, 11)]),
                         ("100", [f"f{i}" for i in range(N_FUNCS)]), ("hot", ["hot"])):
        c = work / f"patch_{label}.c"
        c.write_text(patch_source(names))
        obj = work / f"patch_{label}.o"
        subprocess.run([tool("gcc"), *flags, "-c", str(c), "-o", str(obj)], check=True)
        patches[label] = obj
    return prog, patches


def start(prog: Path, go: Path, env: dict[str, str], busy: int = 0
          ) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "armlp.cli.main", "run", str(prog), "wait",
                             str(go), *([str(busy)] if busy else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    return proc, controller_socket(proc)


def settled(sock: str, req: dict[str, object]) -> dict[str, Any]:
    """*req*'s reply, once the transition it started has ended (forced after
    30 s: the benchmark's functions are never on a stack for long)."""
    res: dict[str, Any] = request(sock, req)
    if res["transition"] and not wait_transition(sock, res["name"], time.monotonic() + 30):
        request(sock, {"op": "force", "name": res["name"]})
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = cache_root() / "bench-live"
    work.mkdir(parents=True, exist_ok=True)
    prog, patches = build(work)
    rt = tempfile.mkdtemp(prefix="armlp-bench-")
    env = dict(os.environ, ARMLP_RUNTIME_DIR=rt)
    os.environ["ARMLP_RUNTIME_DIR"] = rt
    result: dict[str, object] = {"functions_in_program": N_FUNCS + 2, "runs": args.runs}

    # 1. The pause the target sees, and the whole `armlp patch` command.
    go = work / "go"
    go.unlink(missing_ok=True)
    proc, sock = start(prog, go, env)
    pauses: dict[str, list[float]] = {k: [] for k in ("1", "10", "100")}
    unpauses: dict[str, list[float]] = {k: [] for k in ("1", "10", "100")}
    latency: list[float] = []
    for _ in range(args.runs):
        for label in ("1", "10", "100"):
            pauses[label].append(settled(sock, {"op": "patch", "path": str(patches[label])})
                                 ["pause_ms"])
            unpauses[label].append(settled(sock, {"op": "unpatch", "name": "bench"})
                                   ["pause_ms"])
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "armlp.cli.main", "patch",
                        str(patches["10"]), "--wait"],
                       check=True, capture_output=True, env=env)
        latency.append((time.perf_counter() - t0) * 1e3)
        settled(sock, {"op": "unpatch", "name": "bench"})
    go.touch()
    proc.communicate(timeout=120)
    result["pause_ms"] = {k: stats(v) for k, v in pauses.items()}
    result["unpatch_pause_ms"] = {k: stats(v) for k, v in unpauses.items()}
    result["armlp_patch_command_ms"] = stats(latency)
    for what, table in (("enabled", pauses), ("disabled (the free follows, between transitions)",
                                               unpauses)):
        print(f"pause of the target while a patch is {what} (ms, min / median / max):")
        for k, v in table.items():
            s = stats(v)
            print(f"  {k:>3} functions  {s['min']:8.2f} {s['median']:8.2f} {s['max']:8.2f}")
    s = stats(latency)
    print(f"'armlp patch' (10 functions), whole command: {s['min']:.1f} / {s['median']:.1f} / "
          f"{s['max']:.1f} ms")

    # 1b. The same pauses with 8 threads spinning on 2 cores.
    go.unlink(missing_ok=True)
    proc, sock = start(prog, go, env, busy=BUSY)
    time.sleep(0.5)
    loaded: dict[str, list[float]] = {k: [] for k in ("1", "10", "100")}
    loaded_stopped: dict[str, list[float]] = {k: [] for k in ("1", "10", "100")}
    for _ in range(args.runs * 4):
        for label in ("1", "10", "100"):
            res = settled(sock, {"op": "patch", "path": str(patches[label])})
            loaded[label].append(res["pause_ms"])
            loaded_stopped[label].append(res["stopped_ms"])
            settled(sock, {"op": "unpatch", "name": "bench"})
    go.touch()
    proc.communicate(timeout=120)
    result["loaded_pause_ms"] = {k: {**stats(v), "p90": round(sorted(v)[int(len(v) * 0.9)], 3)}
                                 for k, v in loaded.items()}
    print(f"pause while a patch is enabled with {BUSY} busy threads (ms, min / median / p90 / "
          f"max, {args.runs * 4} runs):")
    for k, v in loaded.items():
        s = stats(v)
        p90 = result["loaded_pause_ms"][k]["p90"]  # type: ignore[index]
        print(f"  {k:>3} functions  {s['min']:8.2f} {s['median']:8.2f} {p90:8.2f} "
              f"{s['max']:8.2f}")
    result["loaded_stopped_ms"] = {k: stats(v) for k, v in loaded_stopped.items()}
    print("  armlp's whole stop of the target for the request (its agent thread parked; "
          "the program runs but for the pause above), median: "
          + ", ".join(f"{k}: {statistics.median(v):.1f} ms" for k, v in loaded_stopped.items()))

    # 2. Overhead on a CPU-bound loop of hot() calls, side by side.
    def loop_ns(kind: str) -> float:
        go.unlink(missing_ok=True)
        if kind == "qemu":
            go.touch()
            out = subprocess.run(["qemu-arm", str(prog), "wait", str(go)], check=True,
                                 capture_output=True, text=True).stdout
        else:
            p, s = start(prog, go, env)
            if kind in ("cold", "hot"):
                settled(s, {"op": "patch", "path": str(patches["100" if kind == "cold"
                                                                 else "hot"])})
            go.touch()
            out, _ = p.communicate(timeout=300)
        return float(out.split()[1])

    kinds = ("qemu", "armlp", "cold", "hot")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.runs):
        for k in kinds:                      # interleaved: the machine is shared
            times[k].append(loop_ns(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    result["loop_calls"] = LOOP
    result["loop_ms"] = {k: stats([t / 1e6 for t in v]) for k, v in times.items()}
    result["ratio_cold_patch_vs_unpatched"] = round(med["cold"] / med["armlp"], 4)
    result["fast_path_ns_per_redirected_call"] = round((med["hot"] - med["armlp"]) / LOOP, 2)
    result["ratio_armlp_nop_sites_vs_plain_qemu"] = round(med["armlp"] / med["qemu"], 4)
    print(f"\n{LOOP:,} calls of hot() (median of {args.runs}, ms):")
    for k, label in (("qemu", "plain qemu-arm (sites call glibc's mcount)"),
                     ("armlp", "armlp run, no patch (sites are NOPs)"),
                     ("cold", "armlp run, 100 cold functions patched"),
                     ("hot", "armlp run, hot() patched (fast path)")):
        print(f"  {label:45} {med[k] / 1e6:9.1f}")
    print(f"cold patch / unpatched: {result['ratio_cold_patch_vs_unpatched']}  "
          f"(target: within 2 %)")
    print(f"fast path: {result['fast_path_ns_per_redirected_call']} ns per redirected call "
          f"under qemu-arm")
    write_results("live", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
