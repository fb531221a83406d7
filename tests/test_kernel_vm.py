"""Kernel live patching on the real thing: Debian's stock armhf kernel booted
under qemu-system-arm (2 CPUs), patch modules from ``armlp kernel build``
loaded with insmod and driven through sysfs, as the kernel's
tools/testing/selftests/livepatch do (test-livepatch, -sysfs, -ftrace), with
their log lines adapted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from armlp.kernel.build import CORE_NAME
from armlp.kernel.vm import Guest
from conftest import Builder
from kernel_helpers import LIVEPATCH, PATCHES, SAMPLE, SAMPLE_TEXT, build_patch, release_kit

pytestmark = pytest.mark.slow

SAMPLE_DIR = f"{LIVEPATCH}/livepatch_sample"


@dataclass
class Booted:
    guest: Guest
    cmdline: str          # /proc/cmdline before any patch


def _tampered(src: Path, dst: Path, old: bytes, new: bytes, count: int = 1) -> Path:
    data = src.read_bytes()
    assert data.count(old) == count, f"{old!r} is not {count} times in {src}"
    dst.write_bytes(data.replace(old, new))
    return dst


@pytest.fixture(scope="module")
def booted(builder: Builder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    k = release_kit()
    files: dict[str, Path] = {}
    for src in (SAMPLE, PATCHES / "cmdline_one.c", PATCHES / "cmdline_two.c",
                PATCHES / "nanosleep.c"):
        for ko in build_patch(builder, src).glob("*.ko"):
            files[ko.name] = ko
    tmp = tmp_path_factory.mktemp("tampered")
    sample = files["livepatch_sample.ko"]
    # The crc the build took of cmdline_proc_show, changed: "a kernel someone
    # else patched".  And the release it names, changed: "another release"
    # (the kernel's vermagic check passes: only armlp's own check stands).
    doc = json.loads(subprocess.run(
        [sys.executable, "-m", "armlp.cli.main", "kernel", "build", SAMPLE, "--out",
         str(tmp / "again"), "--json"], capture_output=True, text=True, check=True).stdout)
    crc = doc["functions"][0]["crc32"].to_bytes(4, "little")
    other = bytes([crc[0] ^ 1]) + crc[1:]
    files["other_code.ko"] = _tampered(tmp / "again" / "livepatch_sample.ko",
                                       tmp / "other_code.ko", crc, other)
    rel = k.release.encode()     # the table's string and its debug info's
    files["other_release.ko"] = _tampered(sample, tmp / "other_release.ko", rel + b"\0",
                                          rel.replace(b"-armmp", b"-armxx") + b"\0", 2)
    with Guest(k, files) as g:
        g.sh(f"insmod /armlp/{CORE_NAME}.ko")
        yield Booted(g, g.sh("cat /proc/cmdline"))


def wait_gone(g: Guest, path: str, timeout: float = 30) -> None:
    g.sh(f"i=0; while [ -e {path} ] && [ $i -lt {int(timeout * 20)} ]; do sleep 0.05; "
         f"i=$((i+1)); done; [ ! -e {path} ]", timeout=timeout + 10)


def disable(g: Guest, name: str) -> None:
    g.sh(f"echo 0 > {LIVEPATCH}/{name}/enabled")
    wait_gone(g, f"{LIVEPATCH}/{name}")
    g.sh(f"rmmod {name}")


def test_basic_patch_sysfs_and_removal(booted: Booted) -> None:
    g = booted.guest
    assert "rdinit=/init" in booted.cmdline
    g.sh("dmesg -c >/dev/null; insmod /armlp/livepatch_sample.ko")
    assert g.sh("cat /proc/cmdline") == SAMPLE_TEXT
    # test-sysfs: names, rights and values as upstream
    assert g.sh(f"cd {SAMPLE_DIR} && stat -c '%a %n' enabled transition force "
                f"vmlinux/patched vmlinux/cmdline_proc_show,1").splitlines() == [
        "644 enabled", "444 transition", "200 force", "444 vmlinux/patched",
        "755 vmlinux/cmdline_proc_show,1"]
    assert g.sh(f"cat {SAMPLE_DIR}/enabled {SAMPLE_DIR}/transition "
                f"{SAMPLE_DIR}/vmlinux/patched").split() == ["1", "0", "1"]
    # bad input leaves it as it is
    rc, out = g.run("rmmod livepatch_sample")
    assert rc != 0 and "Resource temporarily unavailable" in out
    for bad in ("garbage", "2", "1"):
        rc, _ = g.run(f"echo {bad} > {SAMPLE_DIR}/enabled")
        assert rc != 0, bad
    rc, _ = g.run(f"echo 1 > {SAMPLE_DIR}/force")        # no transition to force
    assert rc != 0
    rc, _ = g.run(f"echo maybe > {SAMPLE_DIR}/force")
    assert rc != 0
    assert g.sh(f"cat {SAMPLE_DIR}/enabled") == "1"
    assert g.sh("cat /proc/cmdline") == SAMPLE_TEXT
    disable(g, "livepatch_sample")
    assert g.sh("cat /proc/cmdline") == booted.cmdline
    assert "livepatch_sample" not in g.sh("cat /proc/modules")
    # test-livepatch's log, adapted (armlp: for livepatch:, and the switch's cost)
    log = [ln.split("] ", 1)[1] for ln in g.sh("dmesg | grep armlp:").splitlines()]
    want = [r"armlp: enabling patch 'livepatch_sample'",
            r"armlp: 'livepatch_sample': initializing patching transition",
            r"armlp: 'livepatch_sample': starting patching transition",
            r"armlp: 'livepatch_sample': completing patching transition",
            r"armlp: 'livepatch_sample': patching complete \(switch \d+ us, 1 attempt\)",
            r"armlp: 'livepatch_sample': initializing unpatching transition",
            r"armlp: 'livepatch_sample': starting unpatching transition",
            r"armlp: 'livepatch_sample': completing unpatching transition",
            r"armlp: 'livepatch_sample': unpatching complete \(switch \d+ us, 1 attempt\)"]
    assert len(log) == len(want), log
    for line, rx in zip(log, want, strict=True):
        assert re.fullmatch(rx, line), line
    assert g.bad_log_lines() == []


@pytest.mark.parametrize("first_out", ["cmdline_two", "cmdline_one"])
def test_stacked_patches_removed_in_either_order(booted: Booted, first_out: str) -> None:
    g = booted.guest
    g.sh("insmod /armlp/cmdline_one.ko")
    assert g.sh("cat /proc/cmdline") == "one"
    g.sh("insmod /armlp/cmdline_two.ko")
    assert g.sh("cat /proc/cmdline") == "two"
    disable(g, first_out)
    left = "one" if first_out == "cmdline_two" else "two"
    assert g.sh("cat /proc/cmdline") == left
    assert g.sh(f"cat {LIVEPATCH}/cmdline_{left}/enabled") == "1"
    disable(g, f"cmdline_{left}")
    assert g.sh("cat /proc/cmdline") == booted.cmdline
    assert g.bad_log_lines() == []


def test_function_tracer_and_kprobe_keep_working(booted: Booted) -> None:
    """test-ftrace: the function tracer on a patched function, and a kprobe."""
    g = booted.guest
    t = "/sys/kernel/tracing"
    g.sh(f"echo cmdline_proc_show > {t}/set_ftrace_filter; echo function > {t}/current_tracer;"
         f" echo > {t}/trace")
    g.sh("insmod /armlp/livepatch_sample.ko")
    assert g.sh("cat /proc/cmdline") == SAMPLE_TEXT
    assert "cmdline_proc_show" in g.sh(f"cat {t}/trace")
    # both users on the one site: the tracer and armlp's ops (regs, ipmodify)
    assert "R I" in g.sh(f"grep cmdline_proc_show {t}/enabled_functions")
    g.sh(f"echo 'p:armlp_probe cmdline_proc_show' > {t}/kprobe_events; "
         f"echo 1 > {t}/events/kprobes/armlp_probe/enable")
    for _ in range(3):
        assert g.sh("cat /proc/cmdline") == SAMPLE_TEXT
    hits = g.sh(f"grep armlp_probe {t}/kprobe_profile").split()
    assert int(hits[1]) == 3
    g.sh(f"echo 0 > {t}/events/kprobes/armlp_probe/enable; echo > {t}/kprobe_events; "
         f"echo nop > {t}/current_tracer")
    assert g.sh("cat /proc/cmdline") == SAMPLE_TEXT       # the patch outlives both
    g.sh(f"echo function > {t}/current_tracer; echo > {t}/trace")
    disable(g, "livepatch_sample")
    assert g.sh("cat /proc/cmdline") == booted.cmdline
    assert "cmdline_proc_show" in g.sh(f"cat {t}/trace")   # the tracer outlives the patch
    g.sh(f"echo nop > {t}/current_tracer; echo > {t}/set_ftrace_filter")
    assert g.bad_log_lines() == []


@pytest.mark.parametrize(("module", "line"), [
    ("other_code", "livepatch_sample: cmdline_proc_show: the running code differs from the "
                   "build's"),
    ("other_release", "livepatch_sample: built for"),
])
def test_other_kernel_refused_with_one_line(booted: Booted, module: str, line: str) -> None:
    g = booted.guest
    g.sh("dmesg -c > /dev/null")
    rc, out = g.run(f"insmod /armlp/{module}.ko")
    assert rc != 0 and "Invalid" in out
    log = g.sh("dmesg").splitlines()
    assert [ln for ln in log if "armlp" in ln and line in ln], log
    assert g.sh("cat /proc/cmdline") == booted.cmdline
    assert g.sh(f"ls {LIVEPATCH}") == ""
    assert "cmdline_proc_show" not in g.sh("cat /sys/kernel/tracing/enabled_functions")


def asleep(g: Guest) -> None:
    """Wait (spinning: a sleep would be another sleeper) until a `sleep` sleeps."""
    g.sh("until p=$(pidof sleep) && grep -q '^State:.*S' /proc/$p/status; do :; done",
         timeout=30)


def test_consistency_waits_for_a_sleeping_task_then_reverse_and_force(booted: Booted) -> None:
    """A task asleep in do_nanosleep holds the switch back (transition 1)
    until it leaves; disabling meanwhile reverses; force switches anyway."""
    g = booted.guest
    d = f"{LIVEPATCH}/nanosleep_fix"
    g.sh("dmesg -c > /dev/null")
    g.spawn("sleep 3")
    asleep(g)
    g.sh("insmod /armlp/nanosleep_fix.ko")
    assert g.sh(f"cat {d}/transition {d}/enabled").split() == ["1", "1"]
    assert "(sleep) is in do_nanosleep" in g.sh("dmesg")
    g.sh(f"i=0; while [ $(cat {d}/transition) = 1 ] && [ $i -lt 200 ]; do sleep 0.05; "
         f"i=$((i+1)); done", timeout=30)
    assert g.sh(f"cat {d}/transition") == "0"
    g.sh("sleep 0.1")
    assert "nanosleep_fix: do_nanosleep replaced" in g.sh("dmesg")
    # a task asleep in the replacement now holds the switch out back
    g.spawn("sleep 1000")
    asleep(g)
    g.sh(f"echo 0 > {d}/enabled")
    assert g.sh(f"cat {d}/transition {d}/enabled").split() == ["1", "0"]
    g.sh(f"echo 1 > {d}/enabled")                       # reverse: stays patched
    assert g.sh(f"cat {d}/transition {d}/enabled").split() == ["0", "1"]
    g.sh(f"echo 0 > {d}/enabled; echo 1 > {d}/force")
    wait_gone(g, d)
    assert "forcing the transition" in g.sh("dmesg")
    rc, _ = g.run("rmmod nanosleep_fix")                  # forced: never removable
    assert rc != 0
    g.sh("killall sleep")
    assert g.bad_log_lines() == []


def test_enable_disable_100_times_under_load(booted: Booted) -> None:
    """Four readers of /proc/cmdline on both CPUs while the sample is loaded,
    enabled, disabled and removed 100 times: every read is one whole answer,
    no warning, no oops."""
    g = booted.guest
    # The 800 messages go to the ring buffer only, not through the slow
    # serial console as well (restored at the end).
    level = g.sh("cut -f1 /proc/sys/kernel/printk")
    g.sh("rm -f /tmp/stop /tmp/torn; dmesg -c > /dev/null; dmesg -n 1")
    reader = ("while [ ! -e /tmp/stop ]; do c=$(cat /proc/cmdline); case \"$c\" in "
              f"\"{SAMPLE_TEXT}\"|*rdinit=*) ;; *) echo \"$c\" >> /tmp/torn;; esac; done")
    for _ in range(4):
        g.spawn(f"sh -c '{reader}'")
    script = (
        "i=0; bad=0; while [ $i -lt 100 ]; do "
        "insmod /armlp/livepatch_sample.ko || exit 11; "
        f"while [ $(cat {SAMPLE_DIR}/transition) != 0 ]; do sleep 0.01; done; "
        f"[ \"$(cat /proc/cmdline)\" = \"{SAMPLE_TEXT}\" ] || bad=$((bad+1)); "
        f"echo 0 > {SAMPLE_DIR}/enabled || exit 12; "
        f"while [ -e {SAMPLE_DIR} ]; do sleep 0.01; done; "
        "grep -q rdinit= /proc/cmdline || bad=$((bad+1)); "
        "rmmod livepatch_sample || exit 13; i=$((i+1)); done; echo cycles=$i bad=$bad")
    start = time.monotonic()
    out = g.sh(script, timeout=600)
    elapsed = time.monotonic() - start
    g.sh(f"touch /tmp/stop; sleep 0.5; dmesg -n {level}")
    assert out.splitlines()[-1] == "cycles=100 bad=0", out
    assert g.run("cat /tmp/torn")[0] != 0, g.sh("cat /tmp/torn")
    text = g.dmesg()
    log = text.splitlines()
    assert sum("'livepatch_sample': patching complete" in ln for ln in log) == 100
    assert sum("'livepatch_sample': unpatching complete" in ln for ln in log) == 100
    assert g.bad_log_lines(text) == []
    print(f"100 cycles in {elapsed:.1f} s")
