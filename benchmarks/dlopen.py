"""Following the dynamic linker: what a ``dlopen`` + ``dlclose`` costs a
program that armlp runs, against the same program under plain qemu-arm.

The program is the tests' dlopen host (armel, ARM code): it loads
``libplugin.so``, calls it and unloads it, ROUNDS times without pause.
Under armlp every change ld.so makes to its list of objects goes through
armlp's hook (``runtime/linker.S``), and the thread waits there until the
controller has seen the event: four waits a round.

    .venv/bin/python benchmarks/dlopen.py [--rounds 100] [--runs 5]

Prints the figures and writes benchmarks/results/dlopen.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from armlp.toolchain import tool
from results_io import stats, write_results

TESTS = Path(__file__).resolve().parent.parent / "tests" / "programs"
FLAGS = ["-marm", "-pg", "-mapcs-frame", "-O2"]
SYSROOT = "/usr/arm-linux-gnueabi"


def build(where: Path) -> tuple[Path, Path]:
    """dlopen_host (compiled with -pg, linked without) and libplugin.so."""
    gcc = tool("gcc")
    plugin, host = where / "libplugin.so", where / "dh"
    subprocess.run([gcc, *FLAGS, "-fPIC", "-shared", "-Wl,-soname,libplugin.so",
                    str(TESTS / "plugin.c"), "-o", str(plugin)], check=True)
    subprocess.run([gcc, *FLAGS, "-c", str(TESTS / "dlopen_host.c"), "-o",
                    str(where / "dh.o")], check=True)
    subprocess.run([gcc, str(where / "dh.o"), "-o", str(host)], check=True)
    return host, plugin


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds *cmd* took; it must end well and print its last round."""
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    took = time.monotonic() - t0
    if out.returncode != 0 or not out.stdout.endswith("done\n"):
        sys.exit(f"{cmd[0]} failed ({out.returncode}): {out.stderr[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    armlp = str(Path(sys.executable).parent / "armlp")
    with tempfile.TemporaryDirectory(prefix="armlp-dlopen-") as tmp:
        host, plugin = build(Path(tmp))
        env = {**os.environ, "ARMLP_RUNTIME_DIR": tmp, "QEMU_LD_PREFIX": SYSROOT}
        rounds = [str(host), str(plugin), str(args.rounds), "0"]
        start = [str(host), str(plugin), "0", "0"]
        runs: dict[str, list[float]] = {"armlp": [], "armlp_start": [], "qemu": []}
        for _ in range(args.runs):          # interleaved: the machine drifts
            runs["armlp"].append(timed([armlp, "run", *rounds], env))
            runs["armlp_start"].append(timed([armlp, "run", *start], env))
            runs["qemu"].append(timed(["qemu-arm", *rounds], env))
    per_round = stats([(a - s) / args.rounds * 1000
                       for a, s in zip(runs["armlp"], runs["armlp_start"], strict=True)], 2)
    qemu_round = stats([q / args.rounds * 1000 for q in runs["qemu"]], 2)
    times = {key: stats(values) for key, values in runs.items()}
    result = {"rounds": args.rounds, "runs": args.runs, "seconds": times,
              "armlp_ms_per_round": per_round, "qemu_arm_ms_per_round": qemu_round}
    print(f"{args.rounds} rounds of dlopen + call + dlclose, {args.runs} runs (min/median/max):")
    for label, key in (("armlp run", "armlp"), ("armlp run, 0 rounds", "armlp_start"),
                       ("qemu-arm", "qemu")):
        t = times[key]
        print(f"  {label:22s} {t['min']:7.3f} {t['median']:7.3f} {t['max']:7.3f} s")
    print(f"  per round: armlp {per_round['median']} ms, qemu-arm {qemu_round['median']} ms "
          f"(medians; armlp's start-up taken off)")
    write_results("dlopen", result)


if __name__ == "__main__":
    main()
