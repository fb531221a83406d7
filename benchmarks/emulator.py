"""Emulator speed: armlp's Unicorn machine vs qemu-arm on the same binary.

A CPU-bound freestanding program (recursive calls through untouched mcount
sites, a sieve, a CRC loop), built with armlp.program_build.build_program, runs
untraced

* under armlp's :class:`~armlp.machine.emulator.Emulator`, as a whole
  command (``python benchmarks/emulator.py --run-one PROGRAM``: interpreter
  start, imports, ELF load, run), and
* under ``qemu-arm PROGRAM``,

interleaved, several times each.  It prints min/median/max wall times and
the ratio of the medians, the in-process run time, the instruction count
(one extra run with counting on, which also gives the counting overhead),
and writes ``benchmarks/results/emulator.json``.

    .venv/bin/python benchmarks/emulator.py [--runs N] [--scale S]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from armlp.machine.emulator import Emulator  # noqa: E402
from armlp.program_build import build_program  # noqa: E402

PROGRAM = r"""
#include "armlp_fs.h"

FS_NOINLINE unsigned fib(unsigned n)
{
	return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

static unsigned char sieve_buf[1 << 20];

FS_NOINLINE unsigned sieve(unsigned n)
{
	unsigned count = 0;
	memset(sieve_buf, 1, n);
	for (unsigned i = 2; i < n; i++) {
		if (!sieve_buf[i])
			continue;
		count++;
		for (unsigned j = i + i; j < n; j += i)
			sieve_buf[j] = 0;
	}
	return count;
}

FS_NOINLINE unsigned crc32(const unsigned char *p, unsigned len, unsigned crc)
{
	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

static unsigned parse(const char *s)
{
	unsigned v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (unsigned)(*s++ - '0');
	return v;
}

int main(int argc, char **argv)
{
	unsigned scale = argc > 1 ? parse(argv[1]) : 1;
	unsigned crc = 0;
	for (unsigned round = 0; round < scale; round++) {
		unsigned f = fib(24);
		unsigned s = sieve(sizeof sieve_buf);
		crc = crc32(sieve_buf, 65536, crc ^ f ^ s);
	}
	fs_print("fib(24)=");
	fs_print_uint(fib(24));
	fs_print(" primes<2^20=");
	fs_print_uint(sieve(sizeof sieve_buf));
	fs_print(" crc=");
	fs_print_hex(crc);
	fs_print("\n");
	return 0;
}
"""


def run_one(program: str, scale: str) -> None:
    """The emulator side as a whole command: load, run, print its output."""
    emu = Emulator.from_elf(program, [program, scale])
    stop = emu.run()
    sys.stdout.buffer.write(emu.stdout)
    sys.exit(stop.exit_status or 0)


def timed(cmd: list[str]) -> tuple[float, bytes]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode()}")
    return dt, proc.stdout


def summary(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=int, default=3, help="rounds of the workload")
    ap.add_argument("--run-one", metavar="PROGRAM", help=argparse.SUPPRESS)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/emulator.json")
    args = ap.parse_args()
    if args.run_one:
        run_one(args.run_one, str(args.scale))
        return

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "cpubound.c"
        src.write_text(PROGRAM)
        prog = build_program([src])
    scale = str(args.scale)
    emu_cmd = [sys.executable, str(Path(__file__).resolve()), "--run-one", str(prog),
               "--scale", scale]
    qemu_cmd = ["qemu-arm", str(prog), scale]

    emu_times: list[float] = []
    qemu_times: list[float] = []
    outputs: set[bytes] = set()
    for _ in range(args.runs):
        dt, out = timed(emu_cmd)
        emu_times.append(dt)
        outputs.add(out)
        dt, out = timed(qemu_cmd)
        qemu_times.append(dt)
        outputs.add(out)
    if len(outputs) != 1:
        raise SystemExit(f"outputs differ: {outputs}")

    # In-process: the run alone, then with instruction counting on.
    inproc: list[float] = []
    for _ in range(args.runs):
        emu = Emulator.from_elf(prog, [str(prog), scale])
        t = time.perf_counter()
        emu.run()
        inproc.append(time.perf_counter() - t)
    emu = Emulator.from_elf(prog, [str(prog), scale], count_instructions=True)
    t = time.perf_counter()
    emu.run()
    counted = time.perf_counter() - t
    insns = emu.instructions or 0
    startup, _ = timed([sys.executable, "-c", "import armlp.machine.emulator"])

    e, q = summary(emu_times), summary(qemu_times)
    ip = summary(inproc)
    result = {
        "program": "fib(24) + sieve(2^20) + crc32(64 KiB) per round, -marm -pg -mapcs-frame -O2",
        "scale": args.scale,
        "runs": args.runs,
        "output": outputs.pop().decode().strip(),
        "instructions": insns,
        "armlp_emulator_command_s": e,
        "qemu_arm_command_s": q,
        "ratio_median_emulator_over_qemu": e["median"] / q["median"],
        "armlp_emulator_run_only_s": ip,
        "emulator_mips_run_only": insns / ip["median"] / 1e6,
        "counted_run_s": counted,
        "counting_overhead": counted / ip["median"],
        "python_import_s": startup,
        "host": platform.platform(),
        "python": platform.python_version(),
        "qemu": subprocess.run(["qemu-arm", "--version"], capture_output=True, text=True,
                               check=False).stdout.splitlines()[0],
    }
    print(f"workload: {result['program']}, scale {args.scale}, {insns:,} instructions")
    print(f"output: {result['output']}")
    print(f"{'':28} {'min':>8} {'median':>8} {'max':>8}  (s, whole command, {args.runs} runs)")
    for label, s in (("armlp Emulator (Unicorn)", e), ("qemu-arm", q),
                     ("Emulator run() only", ip)):
        print(f"{label:28} {s['min']:8.3f} {s['median']:8.3f} {s['max']:8.3f}")
    print(f"ratio (median, whole command) emulator / qemu-arm: "
          f"{result['ratio_median_emulator_over_qemu']:.2f}")
    print(f"emulator speed, run only: {result['emulator_mips_run_only']:.0f} MIPS; "
          f"with instruction counting: {counted:.3f} s "
          f"(x{result['counting_overhead']:.1f})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"wrote {shown}")


if __name__ == "__main__":
    main()
