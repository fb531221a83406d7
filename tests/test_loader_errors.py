"""The loader of relocatable ARM objects (armlp.loader), continued from
test_loader.py: bad input (unknown relocation types, undefined symbols,
overlapping sections, out-of-range addends, relocations on the wrong
instruction, objects that are not ARM or not relocatable, no address).
Every error names the object, section, relocation and symbol at fault.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from armlp.errors import LoaderError
from armlp.loader import load_object, load_objects
from armlp.toolchain import compile_object, run_tool
from loader_helpers import ARM_FLAGS, BASE, EXPORTS, asm_object, build_corpus

# --- bad input ------------------------------------------------------------------

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


def test_a_load_larger_than_a_patch_may_be_is_refused_before_any_bytes(tmp_path: Path) -> None:
    # A 1 GiB .bss (a corrupt or hostile size field: fuzzing found 3.8 GB
    # ones) was built as bytes, twice, before the address space refused it:
    # 12 s and gigabytes of memory for one line of error.
    obj = asm_object(tmp_path, "huge", ".text\n.global f\nf:\n  bx lr\n"
                     ".bss\nbig:\n  .space 0x40000000\n")
    with pytest.raises(LoaderError) as err:
        load_object(obj, base=BASE)
    _assert_names(str(err.value), "huge.o", "section .bss", "0x40000000 bytes", "64 MiB")
    # the bound is on the whole load: two objects of 40 MiB each
    halves = [asm_object(tmp_path, f"half{i}", f".text\n.global f{i}\nf{i}:\n  bx lr\n"
                         ".bss\n  .space 0x2800000\n") for i in (1, 2)]
    load_object(halves[0], base=BASE)
    with pytest.raises(LoaderError, match=r"half2\.o: section \.bss"):
        load_objects(halves, base=BASE)


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
