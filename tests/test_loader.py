"""The loader of relocatable ARM objects (armlp.loader).

The oracle: GNU ld links the same objects at the same addresses; every
section the loader produces must be byte-identical to ld's.  Run on a small
corpus (calls across files, globals, statics, function pointers, strings,
jump tables, ARM and Thumb, MOVW/MOVT builds, several -O levels) and on real
code, zlib from Debian's source package (fetched by ./run.sh setup into
build/zlib).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import capstone
import pytest

from armlp.elf.image import ElfImage
from armlp.errors import LoaderError
from armlp.loader import (
    LoadedModule,
    ObjectFile,
    SymbolResolver,
    VeneerArea,
    apply_relocate_add,
    load_object,
    load_objects,
    rel_addend,
)
from armlp.toolchain import PATCHABLE_CFLAGS, compile_object, run_tool

ROOT = Path(__file__).resolve().parent.parent
ZLIB_DIR = ROOT / "build" / "zlib"
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


# --- the oracle on the corpus ------------------------------------------------

@pytest.mark.parametrize("opt", ["-O0", "-O1", "-O2", "-Os"])
def test_oracle_corpus_matches_ld(tmp_path: Path, opt: str) -> None:
    objs = build_corpus(tmp_path, opt)
    module = load_objects(objs, base=BASE, exports=EXPORTS)
    linked = ld_link(objs, module, tmp_path / "linked.elf", EXPORTS)
    assert assert_same_bytes(module, linked) >= 10
    # every relocation type the corpus is meant to exercise did occur
    seen = {r.type_name for o in objs for img in [ElfImage(o)] for s in img.sections
            if s.is_alloc for r in img.relocations_for(s)}
    want = {"R_ARM_CALL", "R_ARM_ABS32", "R_ARM_THM_CALL"}
    if opt != "-Os":          # -Os loads addresses from literal pools instead
        want |= {"R_ARM_MOVW_ABS_NC", "R_ARM_MOVT_ABS", "R_ARM_THM_MOVW_ABS_NC",
                 "R_ARM_THM_MOVT_ABS"}
    assert want <= seen, sorted(seen)
    # the symbols the loader reports are ld's
    for name in ("dispatch", "run_all", "twice", "thumb_add1", "t2_square", "shared_total",
                 "shared_bss", "ops"):
        lsym = linked.symbols.lookup(name)
        assert module.address_of(name) == lsym.value, name


# --- zlib: real code ----------------------------------------------------------

ZLIB_FILES = ["adler32", "compress", "crc32", "deflate", "gzclose", "gzlib", "gzread",
              "gzwrite", "infback", "inffast", "inflate", "inftrees", "trees", "uncompr",
              "zutil"]


def build_zlib(dest: Path) -> list[Path]:
    if not (ZLIB_DIR / "zlib.h").is_file():
        pytest.fail(f"zlib sources missing in {ZLIB_DIR}: run ./run.sh setup (fetches the "
                    f"Debian source package zlib)")
    objs = []
    for name in ZLIB_FILES:
        out = dest / f"{name}.o"
        compile_object(ZLIB_DIR / f"{name}.c", out,
                       [*PATCHABLE_CFLAGS, "-O2", *NO_PIC, f"-I{ZLIB_DIR}"])
        objs.append(out)
    return objs


def external_symbols(objs: Sequence[Path], start: int) -> dict[str, int]:
    """Addresses for every symbol the objects use but none defines (libc)."""
    defined: set[str] = set()
    used: set[str] = set()
    for o in objs:
        for sym in ElfImage(o).symbols.symbols:
            if sym.name and sym.bind != 0:
                (defined if sym.defined else used).add(sym.name)
    return {name: start + 16 * i for i, name in enumerate(sorted(used - defined))}


@pytest.mark.slow
def test_oracle_zlib_matches_ld(tmp_path: Path) -> None:
    objs = build_zlib(tmp_path)
    exports = {**EXPORTS, **external_symbols(objs, 0x9000)}
    assert "memcpy" in exports and "malloc" in exports
    module = load_objects(objs, base=BASE, exports=exports)
    linked = ld_link(objs, module, tmp_path / "zlib.elf", exports)
    assert assert_same_bytes(module, linked) >= 25
    assert module.size > 50_000
    for name in ("inflate", "deflate", "crc32", "adler32", "gzopen"):
        assert module.address_of(name) == linked.symbols.lookup(name).value

    # One object loaded alone at ld's addresses, resolved against the linked
    # program (its globals and statics) instead of the other objects.
    inflate = tmp_path / "inflate.o"
    pinned = {(s.object, s.name): s.address for s in module.sections
              if s.object == str(inflate) and s.size}
    alone = load_object(inflate, section_addresses=pinned, base=0x400000, target=linked,
                        exports=exports)
    assert assert_same_bytes(alone, linked) == len(pinned)
    assert not alone.veneers


ASM_ALL_TYPES = r"""
    .syntax unified
    .arch armv7-a
    .text
    .arm
    .global arm_entry
    .type arm_entry, %function
arm_entry:
    movw r0, #:lower16:data_word
    movt r0, #:upper16:data_word
    movw r1, #:lower16:data_word - 8 - (. + 8)
    movt r1, #:upper16:data_word - 8 - (. + 4)
    bl thumb_func
    b far_label
    blne arm_entry
    bx lr
    .reloc ., R_ARM_V4BX, arm_entry
    bx r2
far_label:
    bx lr
    .reloc ., R_ARM_PC24, arm_entry
    bl arm_entry
    .word thumb_func
    .reloc ., R_ARM_TARGET1, data_word
    .word 4
    .reloc ., R_ARM_PREL31, arm_entry
    .word 0x80000010
    .reloc ., R_ARM_REL32, other_data
    .word -4
    .reloc ., R_ARM_NONE, other_data
    nop

    .thumb
    .global thumb_func
    .type thumb_func, %function
    .thumb_func
thumb_func:
    movw r0, #:lower16:other_data + 12
    movt r0, #:upper16:other_data + 12
    movw r1, #:lower16:other_data - (. + 4)
    movt r1, #:upper16:other_data - (. + 4)
    bl arm_entry
    bl thumb_func
    b.w thumb_func
    .reloc ., R_ARM_THM_JUMP24, thumb_func
    b.w .
    bx lr

    .data
data_word:
    .word arm_entry, thumb_func, data_word + 4
"""
ASM_OTHER = r"""
    .data
    .global other_data
other_data:
    .word 1, 2, 3, 4
    .word thumb_func
"""


def test_oracle_every_relocation_type_matches_ld(tmp_path: Path) -> None:
    """Hand-written assembly with each supported type (``.reloc`` for the ones
    C does not produce) at ARM and Thumb places, ld versus loader."""
    objs = [asm_object(tmp_path, "alltypes", ASM_ALL_TYPES),
            asm_object(tmp_path, "other", ASM_OTHER)]
    module = load_objects(objs, base=BASE)
    linked = ld_link(objs, module, tmp_path / "alltypes.elf", {})
    assert assert_same_bytes(module, linked) == 3
    seen = {r.type_name for o in objs for img in [ElfImage(o)] for s in img.sections
            if s.is_alloc for r in img.relocations_for(s)}
    assert {"R_ARM_" + t for t in ("NONE", "ABS32", "REL32", "PREL31", "CALL", "JUMP24",
                                   "PC24", "MOVW_ABS_NC", "MOVT_ABS", "MOVW_PREL_NC",
                                   "MOVT_PREL", "V4BX", "TARGET1", "THM_CALL", "THM_JUMP24",
                                   "THM_MOVW_ABS_NC", "THM_MOVT_ABS", "THM_MOVW_PREL_NC",
                                   "THM_MOVT_PREL")} <= seen


def test_rela_gives_the_same_bytes_as_rel(tmp_path: Path) -> None:
    """apply_relocate_add with the addends made explicit (the kernel's
    livepatch relocations are RELA) and the fields scrambled == REL result."""
    objs = build_corpus(tmp_path, "-O2")
    module = load_objects(objs, base=BASE, exports=EXPORTS)
    objects = [ObjectFile(o) for o in objs]
    addresses = {(i, s.index): module.section(s.name, o.name).address
                 for i, o in enumerate(objects) for s in o.image.sections
                 if s.is_alloc and s.size}
    resolver = SymbolResolver(objects, addresses, exports=EXPORTS)
    area = VeneerArea(module.veneer_area[0], 64)
    compared = 0
    for i, obj in enumerate(objects):
        for sec in obj.image.sections:
            rels = obj.image.relocations_for(sec) if sec.is_alloc and sec.size else []
            if not rels:
                continue
            data = bytearray(obj.image.section_data(sec))
            rela = []
            for rel in rels:
                (word,) = struct.unpack_from("<I", data, rel.offset)
                rela.append(dataclasses.replace(rel, addend=rel_addend(rel.type, word)))
                if rel.type_name in ("R_ARM_ABS32", "R_ARM_REL32"):
                    struct.pack_into("<I", data, rel.offset, 0xDEADBEEF)
                elif rel.type_name in ("R_ARM_CALL", "R_ARM_JUMP24"):
                    struct.pack_into("<I", data, rel.offset, (word & 0xFF000000) | 0x123456)
            addr = addresses[i, sec.index]
            apply_relocate_add(data, addr, rela, functools.partial(_resolve, resolver, i),
                               area, where=obj.name, arch=obj.arch)
            assert bytes(data) == module.section(sec.name, obj.name).data, (obj.name, sec.name)
            compared += 1
    assert compared >= 5


# --- resolution against a target program --------------------------------------

PATCH_C = r"""
extern int helper_1(int), helper_2(int);   /* renamed to .klp.sym.prog.helper,N */
extern int counter_2;                        /* .klp.sym.prog.counter,2 */
extern int twice(int);
extern void runtime_hook(void);
int patched(int x) { runtime_hook(); return helper_1(x) + helper_2(x) + counter_2 + twice(x); }
"""


def build_program(tmp_path: Path) -> tuple[list[Path], ElfImage, LoadedModule]:
    objs = build_corpus(tmp_path, "-O2")
    module = load_objects(objs, base=BASE, exports=EXPORTS)
    return objs, ld_link(objs, module, tmp_path / "prog.elf", EXPORTS), module


def build_patch(tmp_path: Path, renames: dict[str, str]) -> Path:
    src = tmp_path / "patch.c"
    src.write_text(PATCH_C)
    obj = compile_object(src, tmp_path / "patch.o", ["-O2", *ARM_FLAGS])
    args: list[str | Path] = []
    for old, new in renames.items():
        args += ["--redefine-sym", f"{old}={new}"]
    if args:
        run_tool("objcopy", [*args, obj])
    return obj


KLP_RENAMES = {"helper_1": ".klp.sym.prog.helper,1", "helper_2": ".klp.sym.prog.helper,2",
               "counter_2": ".klp.sym.prog.counter,2"}


def _branch_targets(module: LoadedModule, section: str = ".text") -> list[int]:
    sec = module.section(section)
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM)
    return [int(i.op_str.lstrip("#"), 16) for i in md.disasm(sec.data, sec.address)
            if i.mnemonic in ("bl", "blx", "b")]


def test_klp_sym_resolves_statics_by_sympos(tmp_path: Path) -> None:
    _, prog, _ = build_program(tmp_path)
    patch = build_patch(tmp_path, KLP_RENAMES)
    module = load_object(patch, base=0x200000, target=prog, target_name="prog",
                         exports={**EXPORTS, "runtime_hook": 0x180000})
    helpers = [s.value for s in prog.symbols.by_name["helper"]]
    counters = [s.value for s in prog.symbols.by_name["counter"]]
    assert len(helpers) == 2 and len(counters) == 2
    targets = _branch_targets(module)
    assert {MCOUNT, 0x180000, helpers[0], helpers[1],
            prog.symbols.lookup("twice").value} <= set(targets)
    text = module.section(".text").data
    words = set(struct.unpack(f"<{len(text) // 4}I", text))
    assert counters[1] in words          # the literal-pool word of counter,2
    assert counters[0] not in words


def test_ambiguous_static_without_sympos(tmp_path: Path) -> None:
    _, prog, _ = build_program(tmp_path)
    patch = build_patch(tmp_path, {"helper_1": "helper", "helper_2": "twice",
                                   "counter_2": "shared_total"})
    with pytest.raises(LoaderError) as err:
        load_object(patch, base=0x200000, target=prog,
                    exports={**EXPORTS, "runtime_hook": 0x180000})
    msg = str(err.value)
    for part in ("patch.o", "section .text", "relocation ", "R_ARM_CALL", "helper",
                 "ambiguous", "sympos"):
        assert part in msg, (part, msg)


def test_klp_sym_bad_sympos_and_object(tmp_path: Path) -> None:
    _, prog, _ = build_program(tmp_path)
    patch = build_patch(tmp_path, {**KLP_RENAMES, "helper_2": ".klp.sym.prog.helper,3"})
    kw: dict[str, Any] = {"base": 0x200000, "target": prog,
                          "exports": {**EXPORTS, "runtime_hook": 0x180000}}
    with pytest.raises(LoaderError, match=r"patch\.o: section \.text: relocation \d+ "
                       r"\(R_ARM_CALL\) against \.klp\.sym\.prog\.helper,3: .*no sympos 3"):
        load_object(patch, **kw)
    patch = build_patch(tmp_path, KLP_RENAMES)
    with pytest.raises(LoaderError, match="is not the target"):
        load_object(patch, target_name="other", **kw)


# --- veneers: out-of-range branches and ARM/Thumb jumps -----------------------

VENEER_SOURCES = {
    "caller.c": ("int far_arm(int); int far_thumb(int);\n"
                 "int call_far(int x) { return far_arm(x) + far_thumb(x) * 2; }\n"
                 "int jump_far(int x) { return far_thumb(x + 1); }\n", ["-marm"]),
    "near.c": ("int near_arm(int x) { return x - 5; }\n", ["-marm"]),
    "thumbnear.c": ("int near_arm(int);\n"
                    "int thumb_jump_arm(int x) { return near_arm(x + 2); }\n",
                    ["-mthumb", "-march=armv7-a"]),
    "far.c": ("int far_arm(int x) { return x + 1000; }\n", ["-marm"]),
    "farthumb.c": ("int far_thumb(int x) { return x * 3; }\n", ["-mthumb", "-march=armv7-a"]),
}
FAR = BASE + (48 << 20)


def build_veneer_case(tmp_path: Path) -> tuple[list[Path], LoadedModule]:
    objs = []
    for name, (text, flags) in VENEER_SOURCES.items():
        (tmp_path / name).write_text(text)
        objs.append(compile_object(tmp_path / name, tmp_path / name.replace(".c", ".o"),
                                   ["-O2", *NO_PIC, *flags]))
    module = load_objects(objs, base=BASE, section_addresses={
        ("far.o", ".text"): FAR, ("farthumb.o", ".text"): FAR + 0x1000})
    return objs, module


def run_function(module: LoadedModule, name: str, arg: int) -> int:
    """Call *name* (arg in r0) in Unicorn with the module mapped; return r0."""
    import unicorn as _unicorn
    import unicorn.arm_const as a
    unicorn: Any = _unicorn        # the binding is untyped
    uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_ARM)
    pages: set[int] = set()
    for addr, data in module.chunks():
        pages.update(range(addr >> 12, (addr + len(data) + 0xFFF) >> 12))
    for page in sorted(pages):
        uc.mem_map(page << 12, 0x1000)
    for addr, data in module.chunks():
        uc.mem_write(addr, data)
    stack, ret = 0x7000000, 0x7100000
    uc.mem_map(stack, 0x10000)
    uc.mem_map(ret, 0x1000)
    uc.reg_write(a.UC_ARM_REG_SP, stack + 0x8000)
    uc.reg_write(a.UC_ARM_REG_LR, ret)
    uc.reg_write(a.UC_ARM_REG_R0, arg)
    uc.emu_start(module.address_of(name), ret, count=10_000)
    assert uc.reg_read(a.UC_ARM_REG_PC) == ret
    return int(uc.reg_read(a.UC_ARM_REG_R0))


def test_out_of_range_calls_go_through_veneers(tmp_path: Path) -> None:
    _, module = build_veneer_case(tmp_path)
    far_arm, far_thumb = module.symbol("far_arm"), module.symbol("far_thumb")
    assert far_arm.address == FAR and far_thumb.thumb
    by_addr = {v.address: v for v in module.veneers}
    caller = module.symbol("call_far")
    text = module.section(".text", "caller.o")
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM)
    calls = [i for i in md.disasm(text.data, text.address)
             if i.mnemonic in ("bl", "b") and caller.address <= i.address < caller.address
             + caller.size]
    assert len(calls) == 2
    reached = set()
    for insn in calls:
        ven = by_addr[int(insn.op_str.lstrip("#"), 16)]       # the bl goes to a veneer
        ldr, = md.disasm(ven.data[:4], ven.address)
        assert (ldr.mnemonic, ldr.op_str) == ("ldr", "pc, [pc, #-4]")
        reached.add(struct.unpack_from("<I", ven.data, 4)[0])  # ... which loads the target
    assert reached == {far_arm.value, far_thumb.value}
    assert run_function(module, "call_far", 5) == 1005 + 15 * 2


def test_jumps_between_arm_and_thumb_use_veneers(tmp_path: Path) -> None:
    _, module = build_veneer_case(tmp_path)
    assert run_function(module, "jump_far", 5) == 18          # ARM b -> far Thumb
    assert run_function(module, "thumb_jump_arm", 5) == 2     # Thumb b.w -> near ARM
    thumb_ven = [v for v in module.veneers if v.mode == "thumb"]
    assert [v.target for v in thumb_ven] == [module.address_of("near_arm")]
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB)
    ldr, = md.disasm(thumb_ven[0].data[:4], thumb_ven[0].address)
    assert (ldr.mnemonic, ldr.op_str) == ("ldr.w", "pc, [pc, #0]")
    # unused veneer slots trap (udf), they are never zero words
    _, area = module.veneer_area
    assert b"\0\0\0\0" not in area[len(module.veneers) * 8:]


def test_veneer_out_of_reach_is_an_error(tmp_path: Path) -> None:
    objs, _ = build_veneer_case(tmp_path)
    with pytest.raises(LoaderError) as err:
        load_objects(objs, base=BASE, veneer_address=FAR + 0x2000000, section_addresses={
            ("far.o", ".text"): FAR, ("farthumb.o", ".text"): FAR + 0x1000})
    msg = str(err.value)
    for part in ("caller.o", "section .text", "relocation ", "far_arm", "veneer area",
                 "out of range"):
        assert part in msg, (part, msg)


# --- bad input ------------------------------------------------------------------

def asm_object(tmp_path: Path, name: str, text: str, flags: Sequence[str] = ()) -> Path:
    src = tmp_path / f"{name}.s"
    src.write_text(text)
    return compile_object(src, tmp_path / f"{name}.o", flags)


def _assert_names(msg: str, *parts: str) -> None:
    for part in parts:
        assert part in msg, (part, msg)


def test_unknown_relocation_type(tmp_path: Path) -> None:
    obj = asm_object(tmp_path, "tls", ".text\n.global f\nf:\n  nop\n"
                     "  .reloc ., R_ARM_TLS_LE32, some_tls_var\n  .word 0\n")
    with pytest.raises(LoaderError) as err:
        load_object(obj, base=BASE)
    _assert_names(str(err.value), "tls.o", "section .text", "relocation 0",
                  "R_ARM_TLS_LE32", "some_tls_var", "unsupported")


def test_undefined_symbols_are_all_listed(tmp_path: Path) -> None:
    src = tmp_path / "undef.c"
    src.write_text("int missing_fn(int); extern int missing_var;\n"
                   "int f(int x) { return missing_fn(x) + missing_var; }\n")
    obj = compile_object(src, tmp_path / "undef.o", ["-O2", *ARM_FLAGS])
    with pytest.raises(LoaderError) as err:
        load_object(obj, base=BASE, exports=EXPORTS)
    msg = str(err.value)
    _assert_names(msg, "2 undefined symbol(s) missing_fn, missing_var", "undef.o",
                  "section .text", "relocation ", "(R_ARM_CALL) against missing_fn",
                  "(R_ARM_ABS32) against missing_var")
    assert "\n" not in msg


def test_overlapping_sections(tmp_path: Path) -> None:
    objs = build_corpus(tmp_path, "-O1")
    with pytest.raises(LoaderError) as err:
        load_objects(objs, base=BASE, exports=EXPORTS, section_addresses={
            ("main-O1.o", ".text"): 0x20000, ("util-O1.o", ".text"): 0x20010})
    _assert_names(str(err.value), "sections overlap", "main-O1.o:.text", "util-O1.o:.text",
                  "0x20000", "0x20010")


def test_rel_addend_out_of_range(tmp_path: Path) -> None:
    # PREL31 addend near +1 GiB, target 0x100 further: the offset needs 32 bits.
    obj = asm_object(tmp_path, "prel", ".text\n.global f\nf:\n"
                     "  .reloc ., R_ARM_PREL31, tgt\n  .word 0x3ffffff0\n"
                     "  .space 0xfc\ntgt:\n  bx lr\n")
    with pytest.raises(LoaderError) as err:
        load_object(obj, base=BASE)
    _assert_names(str(err.value), "prel.o", "section .text", "relocation 0",
                  "R_ARM_PREL31", "tgt", "31-bit range")


def test_relocation_on_wrong_instruction(tmp_path: Path) -> None:
    obj = asm_object(tmp_path, "notbl", ".text\n.global f\nf:\n  mov r0, r1\n"
                     "  .reloc ., R_ARM_CALL, g\n  add r0, r0, r0\n  bx lr\n")
    with pytest.raises(LoaderError) as err:
        load_object(obj, base=BASE, exports={"g": 0x20000})
    _assert_names(str(err.value), "notbl.o", "section .text", "relocation 0", "R_ARM_CALL",
                  "against g", "not a B/BL/BLX")


def test_wrong_architecture_and_not_relocatable(tmp_path: Path) -> None:
    good = asm_object(tmp_path, "ok", ".text\nf: bx lr\n")
    data = bytearray(good.read_bytes())
    data[18:20] = struct.pack("<H", 3)                      # e_machine = x86
    bad = tmp_path / "x86.o"
    bad.write_bytes(bytes(data))
    with pytest.raises(LoaderError, match=r"cannot load .*x86\.o: .*not ARM"):
        load_object(bad, base=BASE)
    exe = tmp_path / "exe.elf"
    run_tool("ld", ["-o", exe, "-e", "0", good])
    with pytest.raises(LoaderError, match="not a relocatable object"):
        load_object(exe, base=BASE)


def test_no_address_and_ambiguous_pin(tmp_path: Path) -> None:
    obj = asm_object(tmp_path, "one", ".text\n.global f\nf: bx lr\n")
    with pytest.raises(LoaderError, match="give a base address or an allocator"):
        load_object(obj)
    with pytest.raises(LoaderError, match=r"one\.o:\.nosuch: 0 allocated sections"):
        load_object(obj, base=BASE, section_addresses={("one.o", ".nosuch"): 0x1000})


# --- pure data first, then write_to ---------------------------------------------

class RecordingMachine:
    """Just enough of the Machine protocol for write_to."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def read(self, address: int, size: int) -> bytes:
        return b"\xaa" * size

    def write_code(self, writes: Sequence[object]) -> None:
        self.batches.append(list(writes))


def test_allocator_layout_and_write_to(tmp_path: Path) -> None:
    objs = build_corpus(tmp_path, "-O2")
    asked: list[tuple[int, int]] = []

    def alloc(size: int, align: int) -> int:
        asked.append((size, align))
        return 0x40000

    module = load_objects(objs, allocator=alloc, exports=EXPORTS)
    assert asked == [(module.size, asked[0][1])] and module.base == 0x40000
    secs = module.sections
    assert all(s.address % s.align == 0 for s in secs)
    assert all(a.end <= b.address for a, b in itertools.pairwise(secs))
    kinds = [(not s.executable, s.writable, s.nobits) for s in secs if s.size]
    assert kinds == sorted(kinds)                  # code, rodata, data, bss
    assert all(s.data == bytes(s.size) for s in secs if s.nobits)
    assert module.base <= min(s.address for s in secs)
    assert max(s.end for s in secs) <= module.base + module.size
    machine = RecordingMachine()
    module.write_to(machine)  # type: ignore[arg-type]
    (batch,) = machine.batches
    assert [(w.address, w.new) for w in batch] == module.chunks()  # type: ignore[attr-defined]
    assert all(w.expected == b"\xaa" * len(w.new) for w in batch)  # type: ignore[attr-defined]


def test_marker_relocations_need_no_definition(tmp_path: Path) -> None:
    obj = asm_object(tmp_path, "marker", ".text\n.global f\nf:\n"
                     "  .reloc ., R_ARM_NONE, __aeabi_unwind_cpp_pr1\n  bx lr\n")
    module = load_object(obj, base=BASE)
    assert module.section(".text").data == ElfImage(obj).section_data(
        ElfImage(obj).sections[1])


def _resolve(resolver: Any, index: int, rel: Any) -> Any:
    return resolver.resolve(index, rel.symbol)
