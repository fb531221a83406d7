"""The loader of relocatable ARM objects (armlp.loader).

The oracle: GNU ld links the same objects at the same addresses; every
section the loader produces must be byte-identical to ld's.  Run on a small
corpus (calls across files, globals, statics, function pointers, strings,
jump tables, ARM and Thumb, MOVW/MOVT builds, several -O levels), on
hand-written assembly with every supported relocation type, and on real
code, zlib from Debian's source package (fetched by ./run.sh setup into
build/zlib).  Then the layout an allocator gets and write_to.

Resolution against a target program and veneers are in
test_loader_resolution.py, bad input in test_loader_errors.py; the shared
helpers in loader_helpers.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from armlp.elf.image import ElfImage
from armlp.loader import (
    ObjectFile,
    SymbolResolver,
    VeneerArea,
    apply_relocate_add,
    load_object,
    load_objects,
    rel_addend,
)
from armlp.toolchain import PATCHABLE_CFLAGS, compile_object
from loader_helpers import (
    BASE,
    EXPORTS,
    NO_PIC,
    asm_object,
    assert_same_bytes,
    build_corpus,
    ld_link,
)

ROOT = Path(__file__).resolve().parent.parent
ZLIB_DIR = ROOT / "build" / "zlib"


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


# --- pure data first, then write_to ---------------------------------------------

class RecordingMachine:
    """Just enough of the Machine protocol for write_to."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def read(self, address: int, size: int) -> bytes:
        return b"\xaa" * size

    def write_code(self, writes: Sequence[object], *, unused: bool = False) -> None:
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
