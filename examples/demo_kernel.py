"""The main job, kernel part: live patch Debian's stock 32-bit ARM kernel.

Builds the kernel's own livepatch sample, rewritten as an armlp patch
(examples/kernel/livepatch-sample.c), with ``armlp kernel build`` against the
release's headers and vmlinux; boots that stock kernel under qemu-system-arm
(-M virt, 2 CPUs) with a busybox shell, and there shows /proc/cmdline, loads
the modules in load-order, shows /proc/cmdline and the sysfs view, disables
the patch, shows /proc/cmdline again and removes the module.

Run through ``./run.sh demo`` (both parts) or ``./run.sh demo kernel``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from armlp.kernel.kit import kit
from armlp.kernel.vm import Guest

HERE = Path(__file__).resolve().parent
ARMLP = [sys.executable, "-m", "armlp.cli.main"]
GUEST_STEPS = [
    "cat /proc/cmdline",
    "cd /armlp && for m in $(cat load-order); do insmod $m; done",
    "cat /proc/cmdline",
    "cd /sys/kernel/livepatch/livepatch_sample && grep . enabled transition vmlinux/patched"
    " && ls vmlinux",
    "echo 0 > /sys/kernel/livepatch/livepatch_sample/enabled",
    # disabled: the view goes (and the module's reference with it) once switched out
    "while [ -d /sys/kernel/livepatch/livepatch_sample ]; do sleep 0.1; done",
    "cat /proc/cmdline",
    "rmmod livepatch_sample",
    "dmesg | grep armlp:",
]


def main() -> int:
    out = HERE.parent / "build" / "ksample"
    k = kit()
    src = HERE / "kernel" / "livepatch-sample.c"
    print(f"\n$ armlp kernel build examples/kernel/livepatch-sample.c --out build/ksample "
          f"--release {k.release}", flush=True)
    subprocess.run([*ARMLP, "kernel", "build", str(src), "--out", str(out), "--release",
                    k.release], check=True)
    files = {p.name: p for p in out.iterdir()}
    print(f"\nbooting Debian's stock {k.release} under qemu-system-arm -M virt (2 CPUs), "
          f"{', '.join(sorted(files))} in /armlp ...", flush=True)
    with Guest(k, files) as g:
        print(f"booted in {g.boot_seconds:.1f} s")
        for step in GUEST_STEPS:
            print(f"\n(guest) # {step}")
            text = g.sh(step)
            if text:
                print(text, flush=True)
        bad = g.bad_log_lines()
    if bad:
        print("\nthe kernel log has warnings:\n" + "\n".join(bad))
        return 1
    print("\nthe kernel log is clean: no warning, no oops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
