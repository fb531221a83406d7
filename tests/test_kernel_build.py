"""``armlp kernel build``: a patch module from a patch's C, against the
release's real headers and vmlinux; refusals before anything is built."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from armlp.elf.image import ElfImage
from armlp.kernel.build import CORE_NAME
from conftest import armlp
from kernel_helpers import SAMPLE, release_kit

pytestmark = pytest.mark.slow


def test_sample_builds_modules_and_load_order(tmp_path: Path) -> None:
    k = release_kit()
    out = tmp_path / "out"
    r = armlp("kernel", "build", SAMPLE, "--out", out, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert (out / "load-order").read_text().split() == [f"{CORE_NAME}.ko",
                                                        "livepatch_sample.ko"]
    assert doc["release"] == k.release
    [f] = doc["functions"]
    assert f["old_name"] == "cmdline_proc_show"
    assert f["new_name"] == "livepatch_cmdline_proc_show"
    assert f["rule"] == "push"
    # `push {r4, lr}` before the site: ftrace_regs_caller leaves sp at the
    # site's, so the trampoline drops those 8 bytes and branches.
    assert f["trampoline"] == ["0xe28dd008"]
    vmlinux = ElfImage(k.vmlinux)
    sym = vmlinux.symbols.lookup("cmdline_proc_show")
    assert (f["address"], f["size"]) == (sym.value, sym.size)
    for name in ("livepatch_sample.ko", f"{CORE_NAME}.ko"):
        mod = ElfImage(out / name)
        info = mod.section(".modinfo")
        assert info is not None
        assert f"vermagic={k.release} SMP".encode() in mod.section_data(info)
    # the generated trampoline is in the module, ending in a branch to the replacement
    ko = ElfImage(out / "livepatch_sample.ko")
    assert ko.section(".text.armlp_tramp") is not None


def _bad_patch(tmp_path: Path, body: str) -> Path:
    src = tmp_path / "bad.c"
    src.write_text("#include <linux/kernel.h>\n#include <armlp/livepatch.h>\n"
                   "static int fixed(void) { return 0; }\n" + body + "\n")
    return src


def _ambiguous_name() -> str:
    """A patchable kernel function whose name several functions share."""
    seen: dict[str, int] = {}
    for fn in ElfImage(release_kit().vmlinux).symbols.functions():
        if fn.section_name == ".text":
            seen[fn.name] = seen.get(fn.name, 0) + 1
    return next(n for n, c in sorted(seen.items()) if c > 1 and n.isidentifier())


@pytest.mark.parametrize(("body", "message"), [
    ("ARMLP_REPLACE(memcpy, fixed);", r"memcpy: not patchable: no mcount site"),
    ("ARMLP_REPLACE(no_such_function, fixed);", r"no_such_function: no such function"),
    ("ARMLP_REPLACE(start_kernel, fixed);", r"in \.init\.text, freed after boot"),
    ("AMBIGUOUS", r"functions have that name .* ARMLP_REPLACE_POS"),
    ("extern int x ARMLP_SYMBOL(no_such_symbol, 0);\n"
     "static int g(void) { return x; }\nARMLP_REPLACE(cmdline_proc_show, g);",
     r"ARMLP_SYMBOL\(no_such_symbol, 0\): symbol 'no_such_symbol' not found"),
    ("extern int x ARMLP_SYMBOL(AMBIGUOUS, 0);\n"
     "static int g(void) { return x; }\nARMLP_REPLACE(cmdline_proc_show, g);",
     r"ARMLP_SYMBOL\(\w+, 0\): symbol '\w+' is ambiguous in vmlinux: \d+ symbols"),
    ("static int broken(void) { return undeclared; }", r"Kbuild failed: .*undeclared"),
    ("/* nothing */", r"replaces nothing and has no callbacks"),
])
def test_refusals_name_the_reason_and_build_nothing(tmp_path: Path, body: str,
                                                     message: str) -> None:
    if body == "AMBIGUOUS":
        body = f"ARMLP_REPLACE({_ambiguous_name()}, fixed);"
    body = body.replace("AMBIGUOUS", _ambiguous_name())
    out = tmp_path / "out"
    r = armlp("kernel", "build", _bad_patch(tmp_path, body), "--out", out)
    assert r.code == 2
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("armlp: error: "), r.err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--release", "6.1.0-1-rpi"], "only Debian's armhf armmp kernels"),
    (["--release", "x; rm -rf /"], "is not a Debian kernel release"),
    (["--name", "armlp_klp"], "is the core module's"),
    (["--name", "a/b"], "a module name is 1-55 letters"),
])
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    r = armlp("kernel", "build", SAMPLE, "--out", tmp_path / "o", *args)
    assert r.code == 2 and message in r.err, r.err
    assert not (tmp_path / "o").exists()
