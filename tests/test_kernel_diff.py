"""``armlp kernel build --diff``: kernel live patches from source diffs of
Debian's own kernel source, proven against the release's vmlinux, loaded into
the stock kernel booted under qemu-system-arm; refusals with their reasons."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
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
    # The changed static helper is inlined: its caller is what is replaced.
    "renice_self": ({"set_one_prio": "changed: inlines set_one_prio_perm, which changed"},
                    set()),
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


TABLES_C = r"""
#define FIXUP(table_entry)                                                  \
    asm volatile("1: ldr %0, [%1]\n"                                        \
                 ".pushsection .text.fixup, \"ax\"\n2: mov %0, #0\n b 1b\n" \
                 ".popsection\n"                                            \
                 ".pushsection __ex_table, \"a\"\n .long 1b, 2b\n"          \
                 ".popsection\n" table_entry : "=r"(v) : "r"(p))
#define BUG_ENTRY ".pushsection __bug_table, \"aw\"\n .word 1b, 0\n .hword 7, 0\n" \
    ".popsection\n"
__attribute__((noinline)) int f(int *p) { int v; FIXUP(BUG_ENTRY); return v + 1; }
__attribute__((noinline)) int g(int *p) { int v; FIXUP(""); return v + 2; }
int main(void) { int x = 5; return f(&x) + g(&x); }
"""


def test_a_kernel_patch_carries_the_table_entries_of_its_code(tmp_path: Path) -> None:
    """Of a file whose two functions each have an exception-table entry
    (and one a BUG entry), the patch that copies f carries f's entries only,
    relocated to its copy of f and of the fixup code, and f's unwind entry
    linked to its copy; g stays vmlinux's (by address)."""
    from armlp.builder.base import ProgramIndex
    from armlp.builder.emit import PatchEmitter
    from armlp.builder.pieces import ObjectPieces
    from conftest import cross

    src = tmp_path / "tables.c"
    src.write_text(TABLES_C)
    obj, prog = tmp_path / "tables.o", tmp_path / "tables"
    flags = ["-marm", "-O2", "-ffunction-sections", "-funwind-tables"]
    subprocess.run([cross("gcc"), *flags, "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run([cross("gcc"), "-static", str(obj), "-o", str(prog)], check=True)
    index = ProgramIndex(ElfImage(prog))
    index.object = "vmlinux"
    emitter = PatchEmitter(index, kernel=True)
    pieces = ObjectPieces(obj)
    emitter.add_object(pieces, pieces, {"f": "changed"}, {})
    out = tmp_path / "patch.o"
    emitter.write(out, "tables", None)
    patch = ElfImage(out)
    names = {s.index: s.name for s in patch.sections}

    def targets(section: str) -> list[str]:
        sec = patch.section(section)
        assert sec is not None, section
        return [r.symbol.name if r.symbol.shndx == 0 else names[r.symbol.shndx]
                for r in sorted(patch.relocations_for(sec), key=lambda r: r.offset)]

    assert [s.name for s in patch.sections if s.name == "__ex_table"] == ["__ex_table"]
    assert patch.section("__ex_table").size == 8                  # type: ignore[union-attr]
    assert targets("__ex_table") == [".text.f", ".text.fixup"]
    assert patch.section("__bug_table").size == 12                # type: ignore[union-attr]
    assert targets("__bug_table")[0] == ".text.f"
    exidx = patch.section(".ARM.exidx.text.f")
    assert exidx is not None and names[exidx.link] == ".text.f"
    assert patch.section(".text.g") is None
    # g's fixup (in the same .text.fixup) branches back into vmlinux's g.
    assert ".klp.sym.vmlinux.g,0" in targets(".text.fixup")
    assert [s.name for s in patch.symbols.symbols if s.name == "armlp_new_0"] == ["armlp_new_0"]
