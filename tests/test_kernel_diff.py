"""``armlp kernel build --diff``: kernel live patches from source diffs of
Debian's own kernel source, proven against the release's vmlinux, loaded into
the stock kernel booted under qemu-system-arm; refusals with their reasons."""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from armlp.elf.image import ElfImage
from armlp.kernel.build import CORE_NAME
from armlp.kernel.vm import Guest
from conftest import REPO, Builder, armlp
from kernel_helpers import LIVEPATCH, PATCHES, release_kit

pytestmark = pytest.mark.slow

DIFFS = PATCHES / "diffs"
#: The diffs that build, with what each must include (function -> reason)
#: and what differs only by line numbers.
BUILT = {
    "cmdline": ({"cmdline_proc_show": "changed"}, set()),
    # __set_task_comm's fix moves the WARN_ON lines below it by three.
    "comm_prefix": ({"__set_task_comm": "changed"}, {"exec.c:kernel_execve",
                                                     "exec.c:set_dumpable"}),
    "hide_entry": ({"filldir64": "changed"}, set()),
}


def _build(builder: Builder, name: str) -> Path:
    """The modules and the JSON report of one diff, once per run."""
    diff = DIFFS / f"{name}.diff"
    cmd = (f"mkdir -p {{out}} && {shlex.quote(sys.executable)} -m armlp.cli.main kernel "
           f"build --diff {diff} --out {{out}} --json > {{out}}/report.json")
    inputs = [diff, *sorted((REPO / "src" / "armlp" / "kernel").rglob("*.[ch]")),
              *sorted((REPO / "src" / "armlp" / "kernel").glob("*.py")),
              *sorted((REPO / "src" / "armlp" / "builder").glob("*.py"))]
    return builder.build(f"kdiff-{name}", ["sh", "-c", cmd], inputs)


def _report(builder: Builder, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((_build(builder, name) / "report.json").read_text())
    return doc


@pytest.mark.parametrize("name", sorted(BUILT))
def test_diff_build_reports_what_it_includes(builder: Builder, name: str) -> None:
    doc = _report(builder, name)
    want, line_only = BUILT[name]
    report = doc["build"]
    # The base: every function of the rebuilt file is vmlinux's, byte for byte.
    assert report["base"]["objects"] == 1
    assert report["base"]["functions_proven"] >= 2
    assert {f["name"]: f["reason"] for f in report["functions"]} == want
    assert set(report["line_only"]) == line_only
    # Each replaced function is vmlinux's, scanned, with its trampoline.
    vmlinux = ElfImage(release_kit().vmlinux)
    assert {f["old_name"] for f in doc["functions"]} == set(want)
    for f in doc["functions"]:
        sym = vmlinux.symbols.lookup(f["old_name"])
        assert (f["address"], f["size"]) == (sym.value, sym.size)
        assert f["rule"] == "push" and f["trampoline"]
    out = _build(builder, name)
    assert (out / "load-order").read_text().split() == [f"{CORE_NAME}.ko", f"{name}.ko"]


def test_code_comes_with_its_kernel_tables(builder: Builder) -> None:
    """The fixed __set_task_comm has a tracepoint (a static key): its jump
    table entry travels with it, as do its mcount site and unwind entry."""
    ko = ElfImage(_build(builder, "comm_prefix") / "comm_prefix.ko")
    for name, size in (("__jump_table", 12), ("__mcount_loc", 4),
                       (".ARM.exidx.text.__set_task_comm", 8)):
        sec = ko.section(name)
        assert sec is not None and sec.size >= size, name


@pytest.fixture(scope="module")
def guest(builder: Builder) -> Iterator[Guest]:
    files = {}
    for name in BUILT:
        for ko in _build(builder, name).glob("*.ko"):
            files[ko.name] = ko
    with Guest(release_kit(), files) as g:
        g.sh(f"insmod /armlp/{CORE_NAME}.ko")
        yield g


def test_diff_patches_run_in_the_stock_kernel(guest: Guest) -> None:
    g = guest
    cmdline = g.sh("cat /proc/cmdline")
    g.sh("touch /tmp/.armlp-hidden /tmp/shown")
    rename = "sh -c 'echo -n =abc > /proc/$$/comm; cat /proc/$$/comm; true'"
    assert ".armlp-hidden" in g.sh("ls -a /tmp").split()
    assert g.sh(rename).strip() == "=abc"
    for name in BUILT:
        g.sh(f"insmod /armlp/{name}.ko")
    for name in BUILT:
        g.sh(f"i=0; while [ $(cat {LIVEPATCH}/{name}/transition) != 0 ] && [ $i -lt 200 ]; "
             f"do sleep 0.05; i=$((i+1)); done")
        assert g.sh(f"cat {LIVEPATCH}/{name}/enabled {LIVEPATCH}/{name}/transition").split() \
            == ["1", "0"]
    # Each fix, as the patched source would behave.
    assert g.sh("cat /proc/cmdline") == f"patched from a diff: {cmdline}"
    assert g.sh("ls -a /tmp").split() == [".", "..", "shown"]
    # The tracepoint in the new __set_task_comm fires: its static key's
    # entry was registered with the module, and it reports the fixed name.
    g.sh("echo 1 > /sys/kernel/tracing/events/task/task_rename/enable")
    assert g.sh(rename).strip() == "abc"
    g.sh("echo 0 > /sys/kernel/tracing/events/task/task_rename/enable")
    assert "newcomm=abc " in g.sh("cat /sys/kernel/tracing/trace")
    # Disabled and removed: the kernel behaves as before.
    for name in BUILT:
        g.sh(f"echo 0 > {LIVEPATCH}/{name}/enabled")
    for name in BUILT:
        g.sh(f"i=0; while [ -e {LIVEPATCH}/{name} ] && [ $i -lt 200 ]; do sleep 0.05; "
             f"i=$((i+1)); done; rmmod {name}")
    assert g.sh("cat /proc/cmdline") == cmdline
    assert ".armlp-hidden" in g.sh("ls -a /tmp").split()
    assert g.sh(rename).strip() == "=abc"
    assert g.bad_log_lines() == []


@pytest.mark.parametrize(("diff", "env", "line"), [
    ("lease_time", {}, r"locks\.c: the diff changes the size or initial value of "
                       r"lease_break_time, .*shadow variable"),
    ("cmdline_init", {}, r"proc_cmdline_init: not patchable: in \.init\.text"),
    ("header", {}, r"include/linux/seq_file\.h: the diff changes a header"),
    ("vfat_module", {}, r"none of the 1 files .* is in .*vmlinux \(built as a module\?"),
    # The tree built with other flags than Debian's is not the running kernel.
    ("comm_prefix", {"KCFLAGS": "-O1"}, r"the tree does not rebuild .*vmlinux: \d+ of \d+ "
                                        r"functions differ, first \w+ \(exec\.c: "),
])
def test_refusals_name_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, diff: str,
                                  env: dict[str, str], line: str) -> None:
    out = tmp_path / "out"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = armlp("kernel", "build", "--diff", DIFFS / f"{diff}.diff", "--out", out)
    assert r.code == 2
    assert r.out == ""
    [err] = r.err.splitlines()
    assert re.search(r"^armlp: error: " + line, err), err
    assert not out.exists()
