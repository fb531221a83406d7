"""armlp.arm encoders against GNU ``as``/``ld``, decoder round trips, ranges.

Every instruction case is assembled by GNU as in its own section, linked by
GNU ld with ``--section-start`` so the instruction sits at a known address
(branch targets in sections of their own at the extremes of the ranges),
and the bytes at that address are read from the linked ELF with pyelftools.
The armlp encoder must produce exactly those bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from armlp.arm import a32, t32
from armlp.arm.a32 import Branch
from armlp.errors import EncodingError
from conftest import Builder, cross, run

MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    """One instruction at address ``pc``; ``target`` places label ``{T}`` there."""

    name: str
    asm: str                       # "{T}" stands for the target label
    pc: int
    encode: Callable[[], int]
    thumb: bool = False
    target: int | None = None
    target_thumb: bool = False


def _arm(name: str, asm: str, pc: int, encode: Callable[[], int],
         target: int | None = None, target_thumb: bool = False) -> Case:
    return Case(name, asm, pc, encode, False, target, target_thumb)


def _t32(name: str, asm: str, pc: int, encode: Callable[[], int],
         target: int | None = None, target_thumb: bool = True) -> Case:
    return Case(name, asm, pc, encode, True, target, target_thumb)


# Address plan: each case has its own address; far targets land in the gaps
# between cases (ld refuses overlapping sections, so a clash fails loudly).
P_FWD = 0x0100_0000          # b/bl forward by the maximum
P_BACK = 0x0510_0000         # b/bl backward by the maximum
P_BLX_FWD = 0x0600_0000
P_BLX_BACK = 0x0A10_0000
P_T_FWD = 0x0B00_0002        # Thumb at a pc that is not word aligned
P_T_BACK = 0x0DC0_0002
P_T_BLX = 0x0E00_0002

CASES: list[Case] = [
    # B/BL/BLX immediate: in-range extremes and ordinary offsets.
    _arm("b_max_fwd", "b {T}", P_FWD, lambda: a32.encode_b(P_FWD, P_FWD + 8 + a32.BRANCH_MAX),
         P_FWD + 8 + a32.BRANCH_MAX),
    _arm("bl_max_back", "bl {T}", P_BACK,
         lambda: a32.encode_bl(P_BACK, P_BACK + 8 + a32.BRANCH_MIN), P_BACK + 8 + a32.BRANCH_MIN),
    _arm("bl_fwd", "bl {T}", 0x0400_0000, lambda: a32.encode_bl(0x0400_0000, 0x0400_1000),
         0x0400_1000),
    _arm("b_back", "b {T}", 0x0480_0000, lambda: a32.encode_b(0x0480_0000, 0x047F_FF00),
         0x047F_FF00),
    _arm("b_self", "b .", 0x0410_0000, lambda: a32.encode_b(0x0410_0000, 0x0410_0000)),
    _arm("bleq", "bleq {T}", 0x0420_0000, lambda: a32.encode_bl(0x0420_0000, 0x0420_0100, 0x0),
         0x0420_0100),
    _arm("bne", "bne {T}", 0x0430_0000, lambda: a32.encode_b(0x0430_0000, 0x0420_0200, 0x1),
         0x0420_0200),
    _arm("blx_max_fwd", "blx {T}", P_BLX_FWD,
         lambda: a32.encode_blx(P_BLX_FWD, (P_BLX_FWD + 8 + a32.BRANCH_MAX + 2) | 1),
         P_BLX_FWD + 8 + a32.BRANCH_MAX + 2, target_thumb=True),
    _arm("blx_max_back", "blx {T}", P_BLX_BACK,
         lambda: a32.encode_blx(P_BLX_BACK, (P_BLX_BACK + 8 + a32.BRANCH_MIN) | 1),
         P_BLX_BACK + 8 + a32.BRANCH_MIN, target_thumb=True),
    _arm("blx_halfword", "blx {T}", 0x0440_0000,
         lambda: a32.encode_blx(0x0440_0000, 0x0440_0102 | 1), 0x0440_0102,
         target_thumb=True),
    # LDR literal: the two extremes of ±4095 and the value it loads.
    _arm("ldr_lit_fwd", "ldr r3, 1f\n.space 4099\n1: .byte 0", 0x0450_0000,
         lambda: a32.encode_ldr_literal(3, 0x0450_0000, 0x0450_0000 + 8 + 4095)),
    _arm("ldr_lit_word", "ldr ip, 1f\n.space 12\n1: .word 0", 0x0450_8000,
         lambda: a32.encode_ldr_literal(12, 0x0450_8000, 0x0450_8000 + 16)),
    # MOVW/MOVT, including the extremes of the 16-bit immediate.
    _arm("movw", "movw r2, #0xabcd", 0x0490_0000, lambda: a32.encode_movw(2, 0xABCD)),
    _arm("movw_max", "movw ip, #0xffff", 0x0490_0100, lambda: a32.encode_movw(12, 0xFFFF)),
    _arm("movt_zero", "movt r0, #0", 0x0490_0200, lambda: a32.encode_movt(0, 0)),
    _arm("movt", "movtne lr, #0x8001", 0x0490_0300, lambda: a32.encode_movt(14, 0x8001, 0x1)),
    # push/pop: one register (str/ldr forms, as gas writes them) and lists.
    _arm("push_lr", "push {lr}", 0x04A0_0000, lambda: a32.encode_push(1 << 14)),
    _arm("push_lr_const", "push {lr}", 0x04A0_0100, lambda: a32.PUSH_LR),
    _arm("push_apcs", "push {r4-r9, sl, fp, ip, lr, pc}", 0x04A0_0200,
         lambda: a32.encode_push(0b1101_1111_1111_0000)),
    _arm("push_all", "stmdb sp!, {r0-r15}", 0x04A0_0300, lambda: a32.encode_push(0xFFFF)),
    _arm("pop_lr", "pop {lr}", 0x04A0_0400, lambda: a32.encode_pop(1 << 14)),
    _arm("pop_r4_pc", "pop {r4, pc}", 0x04A0_0500, lambda: a32.encode_pop(0x8010)),
    _arm("pop_lr_ldm", "ldmia sp!, {lr}", 0x04A0_0600, lambda: a32.MCOUNT_NOP_POP_LR),
    # ADD/SUB immediate, modified-immediate extremes, the mcount NOPs.
    _arm("add_sp_4", "add sp, sp, #4", 0x04B0_0000, lambda: a32.encode_add_imm(13, 13, 4)),
    _arm("nop_add_sp", "add sp, sp, #4", 0x04B0_0100, lambda: a32.MCOUNT_NOP_ADD_SP),
    _arm("sub_fp_ip", "sub fp, ip, #4", 0x04B0_0200, lambda: a32.encode_sub_imm(11, 12, 4)),
    _arm("sub_sp_big", "sub sp, sp, #0x11000", 0x04B0_0300,
         lambda: a32.encode_sub_imm(13, 13, 0x11000)),
    _arm("add_ror", "add r0, r1, #0xf000000f", 0x04B0_0400,
         lambda: a32.encode_add_imm(0, 1, 0xF000000F)),
    _arm("sub_top", "sub r5, r6, #0xff000000", 0x04B0_0500,
         lambda: a32.encode_sub_imm(5, 6, 0xFF000000)),
    _arm("add_255", "add pc, lr, #255", 0x04B0_0600, lambda: a32.encode_add_imm(15, 14, 255)),
    _arm("sub_sp_chunks", "sub sp, sp, #69632\nsub sp, sp, #384", 0x04B0_0700,
         lambda: a32.encode_sub_sp(70016)[0]),
    # Moves, register branches, loads/stores used by trampolines.
    _arm("mov_ip_sp", "mov ip, sp", 0x04C0_0000, lambda: a32.encode_mov_reg(12, 13)),
    _arm("mov_ip_sp_const", "mov ip, sp", 0x04C0_0100, lambda: a32.MOV_IP_SP),
    _arm("bx_lr", "bx lr", 0x04C0_0200, lambda: a32.encode_bx(14)),
    _arm("blx_r3", "blx r3", 0x04C0_0300, lambda: a32.encode_blx_reg(3)),
    _arm("ldr_fp_m4", "ldr lr, [fp, #-4]", 0x04C0_0400, lambda: a32.encode_ldr_imm(14, 11, -4)),
    _arm("ldr_max", "ldr r0, [r1, #4095]", 0x04C0_0500, lambda: a32.encode_ldr_imm(0, 1, 4095)),
    _arm("str_min", "str r2, [sp, #-4095]", 0x04C0_0600,
         lambda: a32.encode_str_imm(2, 13, -4095)),
    # T32 BL / B.W / BLX at the ±16 MiB extremes.
    # GNU ld keeps Thumb BL 2 bytes short of the architectural maximum (it
    # inserts a veneer at exactly +16 MiB - 2); test_t32_true_maximum covers it.
    _t32("t_bl_max_fwd", "bl {T}", P_T_FWD,
         lambda: t32.encode_t32_branch("bl", P_T_FWD, P_T_FWD + 4 + t32.T32_BRANCH_MAX - 2),
         P_T_FWD + 4 + t32.T32_BRANCH_MAX - 2),
    _t32("t_bw_max_back", "b.w {T}", P_T_BACK,
         lambda: t32.encode_t32_branch("b", P_T_BACK, P_T_BACK + 4 + t32.T32_BRANCH_MIN),
         P_T_BACK + 4 + t32.T32_BRANCH_MIN),
    _t32("t_bl_back", "bl {T}", 0x0C80_0000,
         lambda: t32.encode_t32_branch("bl", 0x0C80_0000, 0x0C7F_F000 | 1), 0x0C7F_F000),
    _t32("t_blx_arm", "blx {T}", P_T_BLX,
         lambda: t32.encode_t32_branch("blx", P_T_BLX, P_T_BLX + 0x1000 + 2),
         P_T_BLX + 0x1000 + 2, target_thumb=False),
    _t32("t_blx_arm_back", "blx {T}", 0x0E80_0000,
         lambda: t32.encode_t32_branch("blx", 0x0E80_0000, 0x0E7F_0000), 0x0E7F_0000,
         target_thumb=False),
]
# The T32 instructions of a Thumb site and its fast-path trampoline.
CASES += [
    _t32("t_nop_add_sp", "add.w sp, sp, #4", 0x0F00_0002, lambda: t32.T32_NOP_ADD_SP),
    _t32("t_addw_sp", "addw sp, sp, #4095", 0x0F10_0002, lambda: t32.encode_t32_addw_sp(4095)),
    _t32("t_addw_sp_small", "addw sp, sp, #20", 0x0F20_0000,
         lambda: t32.encode_t32_addw_sp(20)),
    _t32("t_ldr_r7_sp", "ldr.w r7, [sp, #4092]", 0x0F30_0002,
         lambda: t32.encode_t32_ldr_sp(7, 4092)),
    *(_t32(f"t_add_sp_{v:#x}", f"add.w sp, sp, #{v:#x}", 0x0F40_0000 + 0x10000 * k,
           lambda v=v: t32.encode_t32_add_sp_imm(v))           # type: ignore[misc]
      for k, v in enumerate((0x10000, 0xAB, 0x00120012, 0x34003400, 0x56565656, 0xFF000000,
                             0x3FC00))),
]
# "ldr_lit_neg": the label at byte 1, the ldr 4088 bytes in: offset -4095.
CASES.append(_arm("ldr_lit_neg", ".byte 0\n1: .space 4087\nldr r0, 1b", 0x04D0_0000,
                  lambda: a32.encode_ldr_literal(0, 0x04D0_0000 + 4088, 0x04D0_0001)))
_INSN_OFFSET = {"ldr_lit_neg": 4088}
# T32 blx from a pc that is not word aligned: the Align(pc, 4) rule matters.
assert P_T_BLX % 4 == 2


def _source(cases: list[Case]) -> tuple[str, list[str]]:
    lines = [".syntax unified"]
    ld_args: list[str] = []
    for i, c in enumerate(cases):
        text = c.asm.replace("{T}", f"tgt_{i}")
        lines += [f'.section .c{i},"ax",%progbits', ".p2align 1" if c.thumb else ".p2align 2",
                  ".thumb" if c.thumb else ".arm", text]
        ld_args.append(f"--section-start=.c{i}={c.pc:#x}")
        if c.target is not None:
            lines += [f'.section .t{i},"ax",%progbits',
                      ".p2align 1" if c.target_thumb else ".p2align 2",
                      ".thumb" if c.target_thumb else ".arm",
                      f".type tgt_{i}, %function",
                      ".thumb_func" if c.target_thumb else "",
                      f"tgt_{i}:", "bx lr"]
            ld_args.append(f"--section-start=.t{i}={c.target:#x}")
    lines.append('.section .note.GNU-stack,"",%progbits')
    return "\n".join(lines) + "\n", ld_args


@pytest.fixture(scope="module")
def assembled(builder: Builder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, ld_args = _source(CASES)
    d = tmp_path_factory.mktemp("enc")
    s = d / "cases.s"
    s.write_text(src)
    obj = builder.build("cases.o", [cross("as"), "-march=armv7-a", "-o", "{out}", s], [s])
    return builder.build("cases.elf", [cross("ld"), "-e", "0", "--no-warn-rwx-segments",
                                       *ld_args, "-o", "{out}", obj], [obj])


def _bytes_at(elf: ELFFile, addr: int, size: int) -> bytes:
    for sec in elf.iter_sections():
        start = sec["sh_addr"]
        if sec["sh_flags"] & 2 and start <= addr and addr + size <= start + sec["sh_size"]:
            return sec.data()[addr - start:addr - start + size]
    raise AssertionError(f"no section holds {addr:#x}")


def test_encoders_match_gnu_as(assembled: Path) -> None:
    with open(assembled, "rb") as fh:
        elf = ELFFile(fh)
        bad = []
        for c in CASES:
            addr = c.pc + _INSN_OFFSET.get(c.name, 0)
            got = int.from_bytes(_bytes_at(elf, addr, 4), "little")
            mine = c.encode()
            if got != mine:
                bad.append(f"{c.name}: gas {got:#010x} armlp {mine:#010x}")
    assert not bad, "\n".join(bad)
    assert len(CASES) >= 40


def test_sub_sp_chunks_match_gas(assembled: Path) -> None:
    """``encode_sub_sp(70016)`` splits like GCC does (0x11000 + 0x180)."""
    case = next(c for c in CASES if c.name == "sub_sp_chunks")
    with open(assembled, "rb") as fh:
        raw = _bytes_at(ELFFile(fh), case.pc, 8)
    assert a32.encode_sub_sp(70016) == [int.from_bytes(raw[:4], "little"),
                                        int.from_bytes(raw[4:], "little")]


def test_t32_true_maximum(assembled: Path) -> None:
    """BL at +16 MiB - 2: gas's word at -4 with the lowest offset bit set."""
    c = next(x for x in CASES if x.name == "t_bl_max_fwd")
    with open(assembled, "rb") as fh:
        gas = int.from_bytes(_bytes_at(ELFFile(fh), c.pc, 4), "little")
    assert gas >> 16 & 1 == 0
    top = t32.encode_t32_branch("bl", c.pc, c.pc + 4 + t32.T32_BRANCH_MAX)
    assert top == gas | 1 << 16
    assert t32.decode_t32_branch(top, c.pc) == Branch("bl", (c.pc + 4 + t32.T32_BRANCH_MAX) | 1)


def test_decoders_read_gas_output(assembled: Path) -> None:
    """Decoders give back the operands gas was asked for."""
    with open(assembled, "rb") as fh:
        elf = ELFFile(fh)

        def word(name: str) -> tuple[Case, int]:
            c = next(x for x in CASES if x.name == name)
            addr = c.pc + _INSN_OFFSET.get(name, 0)
            return c, int.from_bytes(_bytes_at(elf, addr, 4), "little")

        for name in ("b_max_fwd", "bl_max_back", "bl_fwd", "b_back", "blx_max_fwd",
                     "blx_max_back", "blx_halfword"):
            c, w = word(name)
            br = a32.decode_branch(w, c.pc)
            assert br is not None and c.target is not None
            assert br.target == c.target | (1 if c.target_thumb else 0), name
            assert br.kind == c.asm.split()[0], name
        for name in ("t_bl_max_fwd", "t_bw_max_back", "t_bl_back"):
            c, w = word(name)
            br = t32.decode_t32_branch(w, c.pc)
            assert br is not None and c.target is not None
            assert br.target == c.target | 1, name
        c, w = word("t_blx_arm")
        assert c.target is not None
        assert t32.decode_t32_branch(w, c.pc) == Branch("blx", c.target)
        c, w = word("ldr_lit_fwd")
        assert a32.decode_ldr_literal(w, c.pc) == (3, c.pc + 8 + 4095)
        c, w = word("movw_max")
        assert a32.decode_movw_movt(w) == ("movw", 12, 0xFFFF)
        c, w = word("push_apcs")
        assert a32.decode_push(w) == 0b1101_1111_1111_0000
        c, w = word("pop_lr")
        assert a32.decode_pop(w) == 1 << 14
        c, w = word("sub_sp_big")
        assert a32.decode_add_sub_imm(w) == ("sub", 13, 13, 0x11000)


def test_t32_movw_field(tmp_path: Path) -> None:
    """T32 MOVW/MOVT immediates read and rewritten like gas encodes them."""
    s = tmp_path / "m.s"
    s.write_text(".syntax unified\n.thumb\nmovw r2, #0xabcd\nmovt r9, #0x0800\n"
                 "movw r0, #0\nmovt lr, #0xffff\nmovw r0, #0xabcd\nmovt lr, #0\n")
    o = tmp_path / "m.o"
    run([cross("as"), "-march=armv7-a", "-o", o, s])
    b = tmp_path / "m.bin"
    run([cross("objcopy"), "-O", "binary", "-j", ".text", o, b])
    raw = b.read_bytes()
    w = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 24, 4)]
    assert [t32.t32_movw_movt_imm(x) for x in w] == [0xABCD, 0x0800, 0, 0xFFFF, 0xABCD, 0]
    assert t32.t32_with_movw_movt_imm(w[2], 0xABCD) == w[4]
    assert t32.t32_with_movw_movt_imm(w[3], 0) == w[5]
    assert t32.t32_with_movw_movt_imm(w[5], 0xFFFF) == w[3]
    with pytest.raises(EncodingError):
        t32.t32_with_movw_movt_imm(w[0], 0x10000)


# --- out of range raises, in-range extremes encode ----------------------------

PC = 0x0200_0000


@pytest.mark.parametrize("call", [
    lambda: a32.encode_b(PC, PC + 8 + a32.BRANCH_MAX + 4),
    lambda: a32.encode_b(PC, PC + 8 + a32.BRANCH_MIN - 4),
    lambda: a32.encode_bl(PC, PC + 8 + 32 * MiB),
    lambda: a32.encode_bl(PC, PC + 8 - 32 * MiB - 4),
    lambda: a32.encode_bl(PC, PC + 0x102),             # target not word aligned
    lambda: a32.encode_b(PC + 2, PC + 0x100),          # pc not word aligned
    lambda: a32.encode_b(PC, PC + 0x100, cond=0xF),    # 0xF is not a condition
    lambda: a32.encode_blx(PC, (PC + 8 + a32.BRANCH_MAX + 4) | 1),
    lambda: a32.encode_blx(PC, (PC + 8 + a32.BRANCH_MIN - 2) | 1),
    lambda: a32.encode_ldr_literal(0, PC, PC + 8 + 4096),
    lambda: a32.encode_ldr_literal(0, PC, PC + 8 - 4096),
    lambda: a32.encode_ldr_literal(16, PC, PC + 8),
    lambda: a32.encode_movw(0, 0x10000),
    lambda: a32.encode_movw(0, -1),
    lambda: a32.encode_movt(0, 0x10000),
    lambda: a32.encode_movw(16, 0),
    lambda: a32.with_movw_movt_imm(0xE3000000, 0x10000),
    lambda: a32.encode_modified_imm(0x101),
    lambda: a32.encode_modified_imm(0x102),            # needs an odd rotation
    lambda: a32.encode_modified_imm(0x1FE00000 | 1),
    lambda: a32.encode_modified_imm(1 << 32),
    lambda: a32.encode_modified_imm(-4),
    lambda: a32.encode_add_imm(13, 13, 0x1001),
    lambda: a32.encode_sub_imm(13, 13, 70016),         # needs two instructions
    lambda: a32.encode_sub_sp(2),
    lambda: a32.encode_sub_sp(1 << 31),
    lambda: a32.encode_add_sp(-4),
    lambda: a32.encode_push(0),
    lambda: a32.encode_push(0x10000),
    lambda: a32.encode_pop(0),
    lambda: a32.encode_ldr_imm(0, 1, 4096),
    lambda: a32.encode_str_imm(0, 1, -4096),
    lambda: a32.encode_bx(16),
    lambda: a32.reg_name(-1),
    lambda: t32.encode_t32_branch("bl", PC, PC + 4 + t32.T32_BRANCH_MAX + 2),
    lambda: t32.encode_t32_branch("b", PC, PC + 4 + t32.T32_BRANCH_MIN - 2),
    lambda: t32.encode_t32_branch("blx", PC, PC + 4 + 16 * MiB),
    lambda: t32.encode_t32_branch("bx", PC, PC + 4),
])
def test_out_of_range_raises(call: Callable[[], int]) -> None:
    with pytest.raises(EncodingError):
        call()


def test_in_range_extremes_encode() -> None:
    assert a32.decode_branch(a32.encode_b(PC, PC + 8 + a32.BRANCH_MAX), PC) == \
        Branch("b", PC + 8 + a32.BRANCH_MAX)
    assert a32.decode_branch(a32.encode_bl(PC, PC + 8 + a32.BRANCH_MIN), PC) == \
        Branch("bl", PC + 8 + a32.BRANCH_MIN)
    assert a32.decode_ldr_literal(a32.encode_ldr_literal(1, PC, PC + 8 - 4095), PC) == \
        (1, PC + 8 - 4095)
    assert a32.decode_movw_movt(a32.encode_movt(15, 0xFFFF)) == ("movt", 15, 0xFFFF)
    assert a32.decode_modified_imm(a32.encode_modified_imm(0xFF)) == 0xFF
    assert a32.decode_modified_imm(a32.encode_modified_imm(0xFC000003)) == 0xFC000003
    assert a32.decode_push(a32.encode_push(0xFFFF)) == 0xFFFF
    assert t32.decode_t32_branch(t32.encode_t32_branch("bl", PC, PC + 4 + t32.T32_BRANCH_MIN),
                                 PC) == Branch("bl", (PC + 4 + t32.T32_BRANCH_MIN) | 1)
    assert a32.encode_sub_sp(0) == []
    parts = [a32.decode_add_sub_imm(w) for w in a32.encode_sub_sp((1 << 31) - 4)]
    assert sum(p[3] for p in parts if p is not None) == (1 << 31) - 4 and None not in parts


# --- decoders round-trip (hypothesis) ----------------------------------------

regs = st.integers(0, 15)
conds = st.integers(0, 0xE)
word_pcs = st.integers(0x0200_0000 // 4, 0xFC00_0000 // 4).map(lambda x: 4 * x)


@settings(max_examples=300, deadline=None)
@given(pc=word_pcs, words=st.integers(a32.BRANCH_MIN // 4, a32.BRANCH_MAX // 4), cond=conds,
       link=st.booleans())
def test_branch_round_trip(pc: int, words: int, cond: int, link: bool) -> None:
    target = pc + 8 + 4 * words
    enc = a32.encode_bl if link else a32.encode_b
    w = enc(pc, target, cond)
    assert a32.decode_branch(w, pc) == Branch("bl" if link else "b", target, cond)
    assert a32.branch_in_range(pc, target)


@settings(max_examples=200, deadline=None)
@given(pc=word_pcs, halves=st.integers(a32.BRANCH_MIN // 2, (a32.BRANCH_MAX + 2) // 2))
def test_blx_round_trip(pc: int, halves: int) -> None:
    target = pc + 8 + 2 * halves
    assert a32.decode_branch(a32.encode_blx(pc, target | 1), pc) == Branch("blx", target | 1)


@settings(max_examples=200, deadline=None)
@given(pc=word_pcs, rt=regs, off=st.integers(-4095, 4095))
def test_ldr_literal_round_trip(pc: int, rt: int, off: int) -> None:
    w = a32.encode_ldr_literal(rt, pc, pc + 8 + off)
    assert a32.decode_ldr_literal(w, pc) == (rt, pc + 8 + off)


@settings(max_examples=200, deadline=None)
@given(rd=regs, value=st.integers(0, 0xFFFF), other=st.integers(0, 0xFFFF), cond=conds,
       top=st.booleans())
def test_movw_movt_round_trip(rd: int, value: int, other: int, cond: int, top: bool) -> None:
    w = (a32.encode_movt if top else a32.encode_movw)(rd, value, cond)
    assert a32.decode_movw_movt(w) == ("movt" if top else "movw", rd, value)
    assert a32.movw_movt_imm(w) == value
    w2 = a32.with_movw_movt_imm(w, other)
    assert a32.movw_movt_imm(w2) == other
    assert a32.decode_movw_movt(w2) == ("movt" if top else "movw", rd, other)


@settings(max_examples=200, deadline=None)
@given(mask=st.integers(1, 0xFFFF))
def test_push_pop_round_trip(mask: int) -> None:
    assert a32.decode_push(a32.encode_push(mask)) == mask
    assert a32.decode_pop(a32.encode_pop(mask)) == mask
    assert a32.decode_pop(a32.encode_push(mask)) is None
    assert a32.decode_push(a32.encode_pop(mask)) is None
    assert a32.reg_list(mask) == [r for r in range(16) if mask >> r & 1]


@settings(max_examples=300, deadline=None)
@given(imm8=st.integers(0, 255), rot=st.integers(0, 15), rd=regs, rn=regs, add=st.booleans())
def test_modified_imm_round_trip(imm8: int, rot: int, rd: int, rn: int, add: bool) -> None:
    value = ((imm8 >> 2 * rot) | (imm8 << (32 - 2 * rot))) & 0xFFFFFFFF if rot else imm8
    assert a32.decode_modified_imm(a32.encode_modified_imm(value)) == value
    w = (a32.encode_add_imm if add else a32.encode_sub_imm)(rd, rn, value)
    assert a32.decode_add_sub_imm(w) == ("add" if add else "sub", rd, rn, value)


@settings(max_examples=200, deadline=None)
@given(value=st.integers(0, (1 << 29) - 1).map(lambda x: 4 * x), add=st.booleans())
def test_sp_adjust_sums(value: int, add: bool) -> None:
    words = (a32.encode_add_sp if add else a32.encode_sub_sp)(value)
    decoded = [a32.decode_add_sub_imm(w) for w in words]
    assert all(d is not None and d[:3] == ("add" if add else "sub", 13, 13) for d in decoded)
    assert sum(d[3] for d in decoded if d) == value
    assert len(words) <= 4


@settings(max_examples=300, deadline=None)
@given(pc=st.integers(0x0100_0000 // 2, 0xFE00_0000 // 2).map(lambda x: 2 * x),
       halves=st.integers(t32.T32_BRANCH_MIN // 2, t32.T32_BRANCH_MAX // 2),
       kind=st.sampled_from(["bl", "b"]))
def test_t32_branch_round_trip(pc: int, halves: int, kind: str) -> None:
    target = pc + 4 + 2 * halves
    w = t32.encode_t32_branch(kind, pc, target | 1)
    assert t32.decode_t32_branch(w, pc) == Branch(kind, target | 1)
    assert t32.t32_branch_addend(w) == 2 * halves
    assert t32.is_t32(w & 0xFFFF)


@settings(max_examples=200, deadline=None)
@given(pc=st.integers(0x0100_0000 // 2, 0xFE00_0000 // 2).map(lambda x: 2 * x),
       quads=st.integers(-(1 << 22) + 1, (1 << 22) - 1))
def test_t32_blx_round_trip(pc: int, quads: int) -> None:
    target = ((pc + 4) & ~3) + 4 * quads
    w = t32.encode_t32_branch("blx", pc, target)
    assert t32.decode_t32_branch(w, pc) == Branch("blx", target)


@settings(max_examples=200, deadline=None)
@given(value=st.integers(0, 0xFFFF), base=st.sampled_from([0x0000F240, 0x0000F2C0]),
       rd=st.integers(0, 14))
def test_t32_movw_round_trip(value: int, base: int, rd: int) -> None:
    w = base | (rd << 24)
    w2 = t32.t32_with_movw_movt_imm(w, value)
    assert t32.t32_movw_movt_imm(w2) == value
    assert (w2 >> 24) & 0xF == rd


@settings(max_examples=300, deadline=None)
@given(word=st.integers(0, 0xFFFFFFFF), pc=word_pcs)
def test_decoders_total(word: int, pc: int) -> None:
    """Decoders accept any word: a result or None, and a decoded branch
    re-encodes to the same word."""
    br = a32.decode_branch(word, pc)
    if br is not None and br.kind != "blx" and 0 <= br.target < (1 << 32):
        enc = a32.encode_bl if br.kind == "bl" else a32.encode_b
        if a32.branch_in_range(pc, br.target):
            assert enc(pc, br.target, br.cond) == word
    push = a32.decode_push(word)
    if push is not None:
        assert a32.encode_push(push) == word or (word >> 16 == 0xE92D and bin(push).count("1")
                                                 == 1)
    a32.decode_ldr_literal(word, pc)
    a32.decode_movw_movt(word)
    a32.decode_add_sub_imm(word)
    a32.decode_mov_reg(word)
    t32.decode_t32_branch(word, pc)


@settings(max_examples=500, deadline=None)
@given(base=st.integers(0, 0xFFFF_FFF0 // 4).map(lambda x: 4 * x),
       words=st.integers(1, 3 << 20), target=st.integers(0, 0xFFFF_FFFF),
       at=st.floats(0, 1, exclude_max=True), top=st.just(0xEB) | st.sampled_from(
           [c << 4 | 0xB for c in range(14)] + [0xFA, 0xFB]),
       imm=st.integers(0, 0xFF_FFFF), calls=st.booleans(), near=st.integers(-(1 << 25), 1 << 25))
def test_the_mcount_call_key_is_the_decoded_target(base: int, words: int, target: int, at: float,
                                                    top: int, imm: int, calls: bool,
                                                    near: int) -> None:
    """scan's shortcut for ``bl __gnu_mcount_nc`` (``mcount._bl_key``): a
    ``bl`` word that matches the key calls the target, by the decoder's
    reading, even where its offset field points at the target 64 MB away or
    a halfword off; and the ``bl`` to the target matches wherever the key
    can be had (as in a vmlinux or a program)."""
    from armlp.analysis.mcount import _bl_key

    limit = min(base + 4 * words, 1 << 32)
    if near % 2:            # most targets near the section, as mcount is
        target = min(max(base + near & ~3, 0), 0xFFFF_FFFC)
    i = int(at * ((limit - base) // 4))
    pc = base + 4 * i
    if calls:               # the offset field points at the target, mod 2**26
        imm = (((target - base - 8) >> 2) - i) & 0xFF_FFFF
    w = top << 24 | imm
    key = _bl_key({target}, base, limit)
    branch = a32.decode_branch(w, pc)
    assert branch is not None
    if (w + i) & 0xFF_FFFF == key and w >> 24 == 0xEB:
        assert branch.kind == "bl" and branch.target == target
    reach = limit + 4 - (1 << 25) <= target <= base + 4 + (1 << 25)
    if reach and not target & 3 and a32.branch_in_range(pc, target):
        assert (a32.encode_bl(pc, target) + i) & 0xFF_FFFF == key
