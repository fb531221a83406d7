"""Helpers of the loader tests (tests/test_loader*.py): a small corpus of C
files compiled for ARM, Thumb and ARMv7 (MOVW/MOVT), GNU ld linking objects
at the addresses the loader chose (the oracle), and byte comparison of the
two.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from armlp.elf.image import ElfImage
from armlp.loader import LoadedModule
from armlp.toolchain import PATCHABLE_CFLAGS, compile_object, run_tool

MCOUNT = 0x8000          # where ld's --defsym and the loader's exports put __gnu_mcount_nc
BASE = 0x10000

CORPUS = {
    "main.c": r"""
#include "corpus.h"
static int counter;                       /* same name as in util.c: sympos */
static __attribute__((noipa)) int helper(int x) { return x * 7 + counter++; }
static const char *names[] = { "zero", "one", "two", "three" };
int (*ops[])(int) = { twice, helper, thumb_add1, t2_square };
const char *greeting = "hello, loader";

__attribute__((noinline)) int dispatch(int which, int x) {
    switch (which) {
    case 0: return twice(x);
    case 1: return helper(x) + 1;
    case 2: return thumb_add1(x) * 3;
    case 3: return wide_add(x, 9);
    case 4: return (int)names[x & 3][0];
    case 5: return t2_square(x) - 1;
    default: return -1;
    }
}

int run_all(int x) {
    int sum = 0;
    for (unsigned i = 0; i < sizeof ops / sizeof ops[0]; i++)
        sum += ops[i](x + (int)i);
    for (int w = 0; w < 7; w++)
        sum += dispatch(w, x);
    return sum + shared_total + greeting[0] + thumb_calls_arm(x);
}
""",
    "util.c": r"""
#include "corpus.h"
static int counter = 3;
int shared_total = 11;
int shared_bss;
static char buffer[64];

static __attribute__((noipa)) int helper(int x) { return x + counter++; }
int twice(int x) { shared_bss += x; buffer[x & 63] = (char)x; return helper(2 * x); }
const char *describe(int x) { return x ? "non-zero" : "zero"; }
int arm_callee(int x) { return x ^ 0x55; }
""",
    "thumb.c": r"""
#include "corpus.h"
static int thumb_state = 1;
int thumb_add1(int x) { thumb_state += x; return x + 1; }
int thumb_calls_arm(int x) { int r = arm_callee(x); return r + twice(x) + thumb_state; }
""",
    "t2.c": r"""
#include "corpus.h"
int t2_counter;
static const int table[4] = { 1, 4, 9, 16 };
int t2_square(int x) { t2_counter++; return x * x + table[x & 3] + arm_callee(x); }
""",
    "wide.c": r"""
#include "corpus.h"
int wide_value = 40;
static int wide_static[8];
int wide_add(int x, int y) { wide_static[x & 7] += y; return x + y + wide_value + twice(y); }
""",
    "corpus.h": r"""
extern int shared_total, shared_bss, wide_value, t2_counter;
int twice(int);
int arm_callee(int);
int thumb_add1(int);
int thumb_calls_arm(int);
int t2_square(int);
int wide_add(int, int);
const char *describe(int);
""",
}

#: Kernel-module-like code: no PIC (GOT relocations are not loadable), no
#: COMMON, no SHF_MERGE string sections (ld merges strings across and within
#: input sections, the loader copies sections as they are).
NO_PIC = ["-fno-common", "-fno-pie", "-fno-merge-constants"]
ARM_FLAGS = [*PATCHABLE_CFLAGS, *NO_PIC]
#: file -> extra flags (beyond -O level); ARMv7 builds use MOVW/MOVT for addresses
#: (-mword-relocations would turn that off).  Sibling calls are off in Thumb code:
#: a tail call ARM<->Thumb is a stub in ld and a veneer here (tested apart).
FILE_FLAGS = {
    "main.c": ARM_FLAGS,
    "util.c": ARM_FLAGS,
    "thumb.c": ["-mthumb", "-fno-optimize-sibling-calls", *NO_PIC],
    "t2.c": ["-march=armv7-a", "-mthumb", "-fno-optimize-sibling-calls", *NO_PIC],
    "wide.c": ["-march=armv7-a", *ARM_FLAGS],
}


def _write_sources(dest: Path, sources: dict[str, str]) -> None:
    for name, text in sources.items():
        (dest / name).write_text(text)


def build_corpus(dest: Path, opt: str) -> list[Path]:
    _write_sources(dest, CORPUS)
    objs = []
    for name, flags in FILE_FLAGS.items():
        out = dest / f"{Path(name).stem}{opt}.o"
        compile_object(dest / name, out, [opt, *flags])
        objs.append(out)
    return objs


def ld_link(objs: Sequence[Path], module: LoadedModule, out: Path,
            defsyms: dict[str, int]) -> ElfImage:
    """Link *objs* with GNU ld, every input section at the module's address."""
    lines = ["SECTIONS", "{"]
    for i, sec in enumerate(module.sections):
        lines.append(f"  .o{i} {sec.address:#x} : {{ {Path(sec.object).name}({sec.name}) }}")
    lines += ["  /DISCARD/ : { *(.note.GNU-stack) }", "}"]
    script = out.with_suffix(".ld")
    script.write_text("\n".join(lines) + "\n")
    args: list[str | Path] = ["-o", out.name, "-T", script.name, "-e", "0",
                              "--no-merge-exidx-entries"]
    for name, value in defsyms.items():
        args += ["--defsym", f"{name}={value:#x}"]
    args += [Path(o).name for o in objs]
    run_tool("ld", args, cwd=out.parent)
    return ElfImage(out)


def assert_same_bytes(module: LoadedModule, linked: ElfImage) -> int:
    """Every loaded section equals ld's bytes at the same address; returns the count."""
    checked = 0
    for sec in module.sections:
        if not sec.size:
            continue
        want = linked.read(sec.address, sec.size)
        if want != sec.data:
            diff = next(i for i in range(sec.size) if want[i] != sec.data[i]) & ~3
            raise AssertionError(
                f"{sec.label} at {sec.address:#x}: first difference at +{diff:#x}: "
                f"ld {want[diff:diff + 4].hex()} loader {sec.data[diff:diff + 4].hex()}")
        checked += 1
    return checked


EXPORTS = {"__gnu_mcount_nc": MCOUNT}


def asm_object(tmp_path: Path, name: str, text: str, flags: Sequence[str] = ()) -> Path:
    src = tmp_path / f"{name}.s"
    src.write_text(text)
    return compile_object(src, tmp_path / f"{name}.o", flags)
