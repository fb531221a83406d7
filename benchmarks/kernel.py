"""Kernel live patching, measured on Debian's stock armhf kernel.

Emulated on the kernel's own code (vmlinux from the release's kit):

kernel path   the old function's first instruction to the new function's
              first: its prologue, the site calling ftrace_regs_caller, the
              handler moving ARM_pc (what armlp_klp's does), the restore,
              the generated trampoline (``armlp verify VMLINUX``'s proof, over
              every patchable function: count, time, instructions)
traced call   the same site with a handler that leaves pc where it is: the
              function's entry to the instruction after its site
seed's design the seed put the undo inside ftrace_regs_caller, through the
              APCS frame pointer; Debian's kernel has no frame pointers, so
              it cannot run there.  Its count in user space is the generic
              path of benchmarks/redirect.py (results/redirect.json).

In the guest (qemu-system-arm -M virt, 2 CPUs, two shell loops keeping both
busy), RUNS times: the sample loaded with insmod until ``transition`` reads 0
(wall time in the guest), and the stop_machine switch armlp_klp logs.

    .venv/bin/python benchmarks/kernel.py [--runs N] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from armlp.analysis.scan import FunctionReport, scan
from armlp.elf.image import ElfImage
from armlp.kernel.build import build
from armlp.kernel.kit import kit
from armlp.kernel.verify import PATH, KernelProver
from armlp.kernel.vm import Guest
from results_io import RESULTS, stats, write_results

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kernel" / "livepatch-sample.c"


def emulated(image: ElfImage, trials: int) -> dict[str, object]:
    t0 = time.perf_counter()
    result = scan(image)
    patchable = [r for r in result.functions if r.verdict.patchable and r.site is not None]
    prover = KernelProver(image)
    t1 = time.perf_counter()
    proofs = prover.prove(patchable, trials=trials)
    t2 = time.perf_counter()
    counts = [n for p in proofs if (n := p.paths[PATH].instructions)]
    failed = [p.name for p in proofs if not p.verified]
    traced = [traced_call(prover, r) for r in patchable[::100]]
    return {
        "functions": len(result.functions), "patchable": len(patchable),
        "verified": len(proofs) - len(failed), "failed": failed[:20], "trials": trials,
        "setup_seconds": round(t1 - t0, 1), "prove_seconds": round(t2 - t1, 1),
        "kernel_path_instructions": {**stats([float(c) for c in counts], 0),
                                     "p90": sorted(counts)[int(0.9 * len(counts))]},
        "traced_call_instructions": stats([float(c) for c in traced], 0),
    }


def traced_call(prover: KernelProver, r: FunctionReport) -> int:
    """Entry to the instruction after the site, the handler writing back the
    pc it found (a traced call that is not redirected)."""
    assert r.site is not None
    emu = prover.emu
    with prover.hooked(r, r.site + 4):
        before = emu.instructions or 0
        emu.call_regs(r.fn.address, (), until=r.site + 4,
                      regs=prover.bench.random_context(), max_instructions=10_000)
        return (emu.instructions or 0) - before


def in_guest(runs: int) -> dict[str, object]:
    k = kit()
    out = Path(tempfile.mkdtemp(prefix="armlp-bench-"))
    build(SAMPLE, k, out)
    files = {p.name: p for p in out.iterdir()}
    enable_ms: list[float] = []
    switch_us: list[float] = []
    with Guest(k, files) as g:
        g.sh("insmod /armlp/armlp_klp.ko; rm -f /tmp/stop")
        for _ in range(2):
            g.spawn("sh -c 'while [ ! -e /tmp/stop ]; do :; done'")
        d = "/sys/kernel/livepatch/livepatch_sample"
        # busybox's date has no %N: time on the host, less a command's round trip
        rtts = []
        for _ in range(5):
            t = time.perf_counter()
            g.sh("true")
            rtts.append(time.perf_counter() - t)
        rtt = sorted(rtts)[2]
        for _ in range(runs):
            g.sh("dmesg -c > /dev/null")
            t = time.perf_counter()
            g.sh(f"insmod /armlp/livepatch_sample.ko; "
                 f"while [ $(cat {d}/transition) != 0 ]; do :; done")
            enable_ms.append((time.perf_counter() - t - rtt) * 1e3)
            m = re.search(r"patching complete \(switch (\d+) us", g.sh("dmesg"))
            assert m, "no switch time in the log"
            switch_us.append(float(m.group(1)))
            g.sh(f"echo 0 > {d}/enabled; while [ -e {d} ]; do :; done; "
                 f"rmmod livepatch_sample")
        g.sh("touch /tmp/stop")
        bad = g.bad_log_lines()
    return {"runs": runs, "command_round_trip_ms": round(rtt * 1e3, 1),
            "insmod_to_transition_0_ms": stats(enable_ms, 1),
            "stop_machine_switch_us": stats(switch_us, 0), "bad_log_lines": bad,
            "release": k.release}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args()
    image = ElfImage(kit().vmlinux)
    emu = emulated(image, args.trials)
    print(json.dumps(emu, indent=1), flush=True)
    seed = None
    redirect = RESULTS / "redirect.json"
    if redirect.exists():      # the seed's design, per rule, from benchmarks/redirect.py
        builds = json.loads(redirect.read_text())["builds"]
        seed = {rule: stats([float(f["generic"]) for f in b["functions"]], 0)
                for rule, b in builds.items()}
    guest = in_guest(args.runs)
    result: dict[str, object] = {"emulated": emu, "seed_design_user_space": seed,
                                 "guest": guest}
    print(json.dumps(result, indent=1))
    write_results("kernel", result)
    ki = emu["kernel_path_instructions"]
    assert isinstance(ki, dict)
    print(f"\n{emu['verified']}/{emu['patchable']} patchable functions of {image.path.name} "
          f"verified in {emu['prove_seconds']} s ({args.trials} contexts each); kernel path "
          f"median {ki['median']:.0f} instructions")
    return 0 if not emu["failed"] and not guest["bad_log_lines"] else 1


if __name__ == "__main__":
    sys.exit(main())
