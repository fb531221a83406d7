"""The loader of relocatable ARM objects (armlp.loader), continued from
test_loader.py: symbols resolved against a target program (.klp.sym names,
statics by sympos) and veneers for out-of-range branches and ARM/Thumb
jumps.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import capstone
import pytest

from armlp.elf.image import ElfImage
from armlp.errors import LoaderError
from armlp.loader import LoadedModule, load_object, load_objects
from armlp.toolchain import compile_object, run_tool
from loader_helpers import (
    ARM_FLAGS,
    BASE,
    EXPORTS,
    MCOUNT,
    NO_PIC,
    build_corpus,
    ld_link,
)

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
