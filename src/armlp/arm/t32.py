"""T32 (Thumb-2) encodings used for calls and wide moves, as halfword pairs
packed little-endian in a 32-bit value: ``hw1 | hw2 << 16`` (memory order).

Ranges: ``BL``/``B.W`` target - (pc + 4) in [-16 MiB, 16 MiB - 2];
``BLX`` target - Align(pc + 4, 4) likewise, a multiple of 4.
"""

from __future__ import annotations

from armlp.arm.a32 import SP, Branch
from armlp.errors import EncodingError

T32_BRANCH_MIN = -(1 << 24)
T32_BRANCH_MAX = (1 << 24) - 2
#: How near armlp places what a site branches to (trampolines, veneers,
#: patches): a Thumb-2 ``BL``'s reach, which an ARM ``BL``'s ±32 MiB covers.
NEAR_RANGE = 1 << 24


#: ``push {lr}`` (T16): the first half of Thumb's mcount calling sequence.
T16_PUSH_LR = 0xB500
#: ``bx lr; nop`` (T16, as bytes): an empty Thumb function padded to a word.
T16_BX_LR_NOP = bytes.fromhex("7047" "00bf")
#: ``ldr.w pc, [pc, #0]`` (as bytes): a Thumb veneer to the word after it.
T32_LDR_PC = bytes.fromhex("dff8" "00f0")
#: ``add.w sp, sp, #4`` (one 32-bit instruction): the Thumb mcount site's
#: NOP, the size of the ``bl`` it replaces, so no thread is ever left
#: between two halves of a rewritten site.
T32_NOP_ADD_SP = 0x0D04F10D
#: The largest immediate of ``addw`` and of ``ldr.w rt, [rn, #imm12]``.
T32_IMM12_MAX = 4095

def is_t32(hw1: int) -> bool:
    """Whether the halfword *hw1* starts a 32-bit Thumb instruction."""
    return (hw1 >> 11) in (0b11101, 0b11110, 0b11111)


def _split(off: int) -> tuple[int, int]:
    s = (off >> 24) & 1
    i1 = (off >> 23) & 1
    i2 = (off >> 22) & 1
    j1 = (~(i1 ^ s)) & 1
    j2 = (~(i2 ^ s)) & 1
    hw1 = 0xF000 | (s << 10) | ((off >> 12) & 0x3FF)
    hw2 = (j1 << 13) | (j2 << 11) | ((off >> 1) & 0x7FF)
    return hw1, hw2


def t32_branch_in_range(pc: int, target: int) -> bool:
    """Whether a T32 ``B.W``/``BL``/``BLX`` at *pc* reaches *target* (with
    the halfword ``BLX``'s alignment can cost)."""
    off = (target & ~1) - (pc + 4)
    return T32_BRANCH_MIN + 4 <= off <= T32_BRANCH_MAX - 4


def _check(off: int, what: str, pc: int, target: int) -> None:
    if not T32_BRANCH_MIN <= off <= T32_BRANCH_MAX:
        raise EncodingError(f"{what} at {pc:#x} to {target:#x}: offset {off:+#x} outside ±16 MiB")


_KIND_BITS = {"bl": 0xD000, "blx": 0xC000, "b": 0x9000}


def t32_branch_from_offset(kind: str, off: int) -> int:
    """``BL``/``BLX``/``B.W`` with the signed offset *off*, which the caller
    has checked against its range (the loader's depends on the architecture:
    ±4 MiB for Thumb-1, ±16 MiB for Thumb-2)."""
    bits = _KIND_BITS.get(kind)
    if bits is None:
        raise EncodingError(f"unknown Thumb branch kind {kind!r}")
    hw1, hw2 = _split(off)
    hw2 |= bits
    if kind == "blx":
        hw2 &= ~1
    return hw1 | (hw2 << 16)


def encode_t32_branch(kind: str, pc: int, target: int) -> int:
    """``BL``, ``BLX`` (to ARM) or ``B.W`` at Thumb address *pc*."""
    if kind == "blx":
        off = (target & ~3) - ((pc + 4) & ~3)
    else:
        off = (target & ~1) - (pc + 4)
    if kind not in _KIND_BITS:
        raise EncodingError(f"unknown Thumb branch kind {kind!r}")
    _check(off, kind, pc, target)
    return t32_branch_from_offset(kind, off)


def decode_t32_branch(value: int, pc: int) -> Branch | None:
    """Decode ``BL``/``BLX``/``B.W`` (hw1 in the low half); None otherwise."""
    if (value & 0xF800) != 0xF000:
        return None
    op = (value >> 16) & 0xD000
    off = t32_branch_addend(value)
    if op == 0xD000:
        return Branch("bl", (pc + 4 + off) & 0xFFFFFFFF | 1)
    if op == 0xC000:
        return Branch("blx", ((pc + 4) & ~3) + off & 0xFFFFFFFC)
    if op == 0x9000:
        return Branch("b", (pc + 4 + off) & 0xFFFFFFFF | 1)
    return None


def t32_branch_addend(value: int) -> int:
    """The signed offset field of a BL/B.W/BLX (the REL addend of THM_CALL/JUMP24)."""
    hw1, hw2 = value & 0xFFFF, value >> 16
    s = (hw1 >> 10) & 1
    j1 = (hw2 >> 13) & 1
    j2 = (hw2 >> 11) & 1
    i1 = (~(j1 ^ s)) & 1
    i2 = (~(j2 ^ s)) & 1
    off = (s << 24) | (i1 << 23) | (i2 << 22) | ((hw1 & 0x3FF) << 12) | ((hw2 & 0x7FF) << 1)
    return (off ^ (1 << 24)) - (1 << 24)


def t32_movw_movt_imm(value: int) -> int:
    """The 16-bit immediate of a T32 MOVW/MOVT (T3/T1 encodings)."""
    hw1, hw2 = value & 0xFFFF, value >> 16
    return ((hw1 & 0xF) << 12) | (((hw1 >> 10) & 1) << 11) | (((hw2 >> 12) & 7) << 8) | (hw2 & 0xFF)


def t32_with_movw_movt_imm(value: int, imm16: int) -> int:
    """*value* with its T32 MOVW/MOVT immediate replaced by *imm16*."""
    if not 0 <= imm16 <= 0xFFFF:
        raise EncodingError(f"movw/movt immediate {imm16:#x} outside 0..0xffff")
    hw1, hw2 = value & 0xFFFF, value >> 16
    hw1 = (hw1 & 0xFBF0) | ((imm16 >> 12) & 0xF) | (((imm16 >> 11) & 1) << 10)
    hw2 = (hw2 & 0x8F00) | (((imm16 >> 8) & 7) << 12) | (imm16 & 0xFF)
    return hw1 | (hw2 << 16)


def encode_t32_addw_sp(imm12: int) -> int:
    """``addw sp, sp, #imm12`` (T4)."""
    if not 0 <= imm12 <= T32_IMM12_MAX:
        raise EncodingError(f"addw immediate {imm12} outside 0..4095")
    hw1 = 0xF20D | (((imm12 >> 11) & 1) << 10)
    hw2 = (((imm12 >> 8) & 7) << 12) | (SP << 8) | (imm12 & 0xFF)
    return hw1 | (hw2 << 16)


def encode_t32_ldr_sp(rt: int, imm12: int) -> int:
    """``ldr.w rt, [sp, #imm12]`` (T3)."""
    if not 0 <= rt <= 15:
        raise EncodingError(f"register r{rt} out of range")
    if not 0 <= imm12 <= T32_IMM12_MAX:
        raise EncodingError(f"ldr.w offset {imm12} outside 0..4095")
    return 0xF8DD | (((rt << 12) | imm12) << 16)


def t32_modified_imm(value: int) -> int | None:
    """The 12-bit ``ThumbExpandImm`` field for *value*, None if it has none
    (a byte, a byte repeated in a pattern, or 1bcdefgh rotated right by 8-31)."""
    if not 0 <= value <= 0xFFFFFFFF:
        return None
    b0, b1 = value & 0xFF, (value >> 8) & 0xFF
    if value == b0:
        return b0
    if value == b0 * 0x00010001:
        return 0x100 | b0
    if value == b1 * 0x01000100:
        return 0x200 | b1
    if value == b0 * 0x01010101:
        return 0x300 | b0
    for rot in range(8, 32):
        byte = ((value << rot) | (value >> (32 - rot))) & 0xFFFFFFFF     # rotate left
        if byte < 0x100 and byte & 0x80:
            return (rot << 7) | (byte & 0x7F)
    return None


def encode_t32_add_sp_imm(value: int) -> int:
    """``add.w sp, sp, #value`` (T3, a modified immediate)."""
    imm12 = t32_modified_imm(value)
    if imm12 is None:
        raise EncodingError(f"{value:#x} is not a Thumb modified immediate")
    hw1 = 0xF10D | (((imm12 >> 11) & 1) << 10)
    hw2 = (((imm12 >> 8) & 7) << 12) | (SP << 8) | (imm12 & 0xFF)
    return hw1 | (hw2 << 16)


def encode_t32_add_sp(value: int) -> list[int]:
    """Steps adding *value* to sp: one ``addw`` up to 4095; above, the part
    above 4 KiB as one ``add.w`` when encodable (as GCC's frames are), else
    ``addw`` steps of at most 4095."""
    if value < 0:
        raise EncodingError(f"cannot add {value} to sp")
    words = []
    high, low = value & ~0xFFF, value & 0xFFF
    if high and t32_modified_imm(high) is not None:
        words.append(encode_t32_add_sp_imm(high))
        value = low
    while value > T32_IMM12_MAX:
        words.append(encode_t32_addw_sp(T32_IMM12_MAX))
        value -= T32_IMM12_MAX
    if value:
        words.append(encode_t32_addw_sp(value))
    return words
