"""A32 (ARM state) encodings: branches, literal loads, MOVW/MOVT, push/pop,
immediate add/sub, and the mcount NOPs.

Ranges (ARM ARM, A32 encodings):

* ``B``/``BL``/``BLX (immediate)``: target - (pc + 8) in [-32 MiB, 32 MiB - 4];
  a multiple of 4 (``BLX``: a multiple of 2, the target is Thumb).
* ``LDR Rt, [pc, #±imm12]``: target - (pc + 8) in [-4095, 4095].
* ``MOVW``/``MOVT``: a 16-bit immediate, 0..65535.
* data-processing immediates: an 8-bit value rotated right by an even amount.
* ``STMDB sp!``/``LDMIA sp!``: a non-empty subset of r0-r15.
"""

from __future__ import annotations

from typing import NamedTuple

from armlp.errors import EncodingError

AL = 0xE
SP, LR, PC, FP, IP = 13, 14, 15, 11, 12
#: CPSR: user mode, the Thumb state bit, the IT (if-then) state bits.
CPSR_MODE_USR = 0x10
CPSR_T = 1 << 5
CPSR_IT = (0x3F << 10) | (0x3 << 25)

REG_NAMES = ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "sl", "fp", "ip",
             "sp", "lr", "pc")

#: ``bx lr``: an empty function's whole body.
BX_LR = 0xE12FFF1E
#: ``pop {lr}``: the NOP the kernel first wrote over ``bl __gnu_mcount_nc``.
MCOUNT_NOP_POP_LR = 0xE8BD4000
#: ``add sp, sp, #4``: the NOP the kernel writes now; balances ``push {lr}``.
MCOUNT_NOP_ADD_SP = 0xE28DD004
MCOUNT_NOPS = (MCOUNT_NOP_ADD_SP, MCOUNT_NOP_POP_LR)
#: ``push {lr}`` (``str lr, [sp, #-4]!``): the mcount ABI before the call.
PUSH_LR = 0xE52DE004
#: ``mov ip, sp``: the first instruction of an APCS frame.
MOV_IP_SP = 0xE1A0C00D

#: How far a B/BL reaches either side, in bytes (±32 MiB).
BRANCH_RANGE = 1 << 25
BRANCH_MIN = -BRANCH_RANGE
BRANCH_MAX = (1 << 25) - 4
LDR_LITERAL_MAX = 4095


def reg_name(reg: int) -> str:
    """The GCC/objdump name of register number *reg*."""
    if not 0 <= reg <= 15:
        raise EncodingError(f"register number {reg} is not r0-r15")
    return REG_NAMES[reg]


def reg_list(mask: int) -> list[int]:
    """Register numbers in a 16-bit register-list mask, lowest first."""
    return [r for r in range(16) if mask >> r & 1]


def format_reg_list(mask: int) -> str:
    return "{" + ", ".join(reg_name(r) for r in reg_list(mask)) + "}"


def _check_reg(reg: int) -> None:
    if not 0 <= reg <= 15:
        raise EncodingError(f"register number {reg} is not r0-r15")


def _check_cond(cond: int) -> None:
    if not 0 <= cond <= 0xE:
        raise EncodingError(f"condition {cond:#x} is not 0x0-0xe")


# --- branches ---------------------------------------------------------------

class Branch(NamedTuple):
    """A decoded immediate branch: ``kind`` is ``b``, ``bl`` or ``blx``."""

    kind: str
    target: int
    cond: int = AL

    @property
    def links(self) -> bool:
        return self.kind != "b"

    @property
    def to_thumb(self) -> bool:
        return self.kind == "blx"


def branch_in_range(pc: int, target: int) -> bool:
    """Whether an A32 ``B``/``BL`` at *pc* can reach *target*."""
    off = target - (pc + 8)
    return BRANCH_MIN <= off <= BRANCH_MAX and off % 4 == 0


def _branch_offset(pc: int, target: int, align: int, what: str) -> int:
    if pc % 4:
        raise EncodingError(f"{what} at {pc:#x}: ARM instructions are word aligned")
    off = target - (pc + 8)
    if off % align:
        raise EncodingError(f"{what} at {pc:#x} to {target:#x}: target not {align}-aligned")
    if not BRANCH_MIN <= off <= BRANCH_MAX + (2 if align == 2 else 0):
        raise EncodingError(
            f"{what} at {pc:#x} to {target:#x}: offset {off:+#x} outside ±32 MiB")
    return off


def encode_b(pc: int, target: int, cond: int = AL) -> int:
    """``B target`` at *pc*; raises outside ±32 MiB."""
    _check_cond(cond)
    off = _branch_offset(pc, target, 4, "b")
    return (cond << 28) | 0x0A000000 | ((off >> 2) & 0xFFFFFF)


def encode_bl(pc: int, target: int, cond: int = AL) -> int:
    """``BL target`` at *pc* (ARM target); raises outside ±32 MiB."""
    _check_cond(cond)
    off = _branch_offset(pc, target, 4, "bl")
    return (cond << 28) | 0x0B000000 | ((off >> 2) & 0xFFFFFF)


def encode_blx(pc: int, target: int) -> int:
    """``BLX target`` at *pc*: call a Thumb function (bit 0 of *target* ignored)."""
    off = _branch_offset(pc, target & ~1, 2, "blx")
    h = (off >> 1) & 1
    return 0xFA000000 | (h << 24) | ((off >> 2) & 0xFFFFFF)


def decode_branch(word: int, pc: int) -> Branch | None:
    """Decode ``B``/``BL``/``BLX (immediate)`` at *pc*; None for anything else."""
    if (word & 0x0E000000) != 0x0A000000:
        return None
    imm = word & 0xFFFFFF
    off = (imm ^ 0x800000) - 0x800000
    cond = word >> 28
    if cond == 0xF:
        h = (word >> 24) & 1
        return Branch("blx", (pc + 8 + (off << 2) + (h << 1)) & 0xFFFFFFFF | 1, AL)
    kind = "bl" if word & 0x01000000 else "b"
    return Branch(kind, (pc + 8 + (off << 2)) & 0xFFFFFFFF, cond)


def encode_bx(reg: int) -> int:
    _check_reg(reg)
    return 0xE12FFF10 | reg


def encode_blx_reg(reg: int) -> int:
    _check_reg(reg)
    return 0xE12FFF30 | reg


# --- literal loads and wide moves -------------------------------------------

def encode_ldr_literal(rt: int, pc: int, address: int) -> int:
    """``LDR Rt, [pc, #±imm12]`` loading the word at *address*."""
    _check_reg(rt)
    off = address - (pc + 8)
    if not -LDR_LITERAL_MAX <= off <= LDR_LITERAL_MAX:
        raise EncodingError(f"ldr literal at {pc:#x} to {address:#x}: offset {off:+d} "
                            f"outside ±{LDR_LITERAL_MAX}")
    u = 1 if off >= 0 else 0
    return 0xE51F0000 | (u << 23) | (rt << 12) | abs(off)


def decode_ldr_literal(word: int, pc: int) -> tuple[int, int] | None:
    """``(Rt, address)`` of an ``LDR Rt, [pc, #±imm12]``; None otherwise."""
    if (word & 0x0F7F0000) != 0x051F0000:
        return None
    off = word & 0xFFF
    if not word & (1 << 23):
        off = -off
    return (word >> 12) & 0xF, (pc + 8 + off) & 0xFFFFFFFF


def _check_imm16(imm: int, what: str) -> None:
    if not 0 <= imm <= 0xFFFF:
        raise EncodingError(f"{what} immediate {imm:#x} outside 0..0xffff")


def encode_movw(rd: int, imm16: int, cond: int = AL) -> int:
    """``MOVW Rd, #imm16``."""
    _check_reg(rd)
    _check_cond(cond)
    _check_imm16(imm16, "movw")
    return (cond << 28) | 0x03000000 | ((imm16 >> 12) << 16) | (rd << 12) | (imm16 & 0xFFF)


def encode_movt(rd: int, imm16: int, cond: int = AL) -> int:
    """``MOVT Rd, #imm16``."""
    _check_reg(rd)
    _check_cond(cond)
    _check_imm16(imm16, "movt")
    return (cond << 28) | 0x03400000 | ((imm16 >> 12) << 16) | (rd << 12) | (imm16 & 0xFFF)


def decode_movw_movt(word: int) -> tuple[str, int, int] | None:
    """``("movw"|"movt", Rd, imm16)``; None for anything else."""
    top = word & 0x0FF00000
    if top not in (0x03000000, 0x03400000):
        return None
    imm = ((word >> 4) & 0xF000) | (word & 0xFFF)
    return ("movt" if top == 0x03400000 else "movw", (word >> 12) & 0xF, imm)


def movw_movt_imm(word: int) -> int:
    """The 16-bit immediate field of a MOVW/MOVT word (the REL addend lives here)."""
    return ((word >> 4) & 0xF000) | (word & 0xFFF)


def with_movw_movt_imm(word: int, imm16: int) -> int:
    """*word* with its MOVW/MOVT immediate replaced by *imm16*."""
    _check_imm16(imm16, "movw/movt")
    return (word & 0xFFF0F000) | ((imm16 >> 12) << 16) | (imm16 & 0xFFF)


# --- push / pop --------------------------------------------------------------

def encode_push(mask: int) -> int:
    """``PUSH {list}``: ``STR Rt, [sp, #-4]!`` for one register, else ``STMDB sp!``."""
    if not 0 < mask <= 0xFFFF:
        raise EncodingError(f"push register list {mask:#x} is empty or not r0-r15")
    regs = reg_list(mask)
    if len(regs) == 1:
        return 0xE52D0004 | (regs[0] << 12)
    return 0xE92D0000 | mask


def encode_pop(mask: int) -> int:
    """``POP {list}``: ``LDR Rt, [sp], #4`` for one register, else ``LDMIA sp!``."""
    if not 0 < mask <= 0xFFFF:
        raise EncodingError(f"pop register list {mask:#x} is empty or not r0-r15")
    regs = reg_list(mask)
    if len(regs) == 1:
        return 0xE49D0004 | (regs[0] << 12)
    return 0xE8BD0000 | mask


def decode_push(word: int) -> int | None:
    """The register mask of an unconditional push to sp (either form); None otherwise."""
    if (word & 0xFFFF0000) == 0xE92D0000 and word & 0xFFFF:
        return word & 0xFFFF
    if (word & 0xFFFF0FFF) == 0xE52D0004:
        return 1 << ((word >> 12) & 0xF)
    return None


def decode_pop(word: int) -> int | None:
    """The register mask of an unconditional pop from sp (either form); None otherwise."""
    if (word & 0xFFFF0000) == 0xE8BD0000 and word & 0xFFFF:
        return word & 0xFFFF
    if (word & 0xFFFF0FFF) == 0xE49D0004:
        return 1 << ((word >> 12) & 0xF)
    return None


# --- data-processing immediates ---------------------------------------------

def encode_modified_imm(value: int) -> int:
    """The 12-bit ``rot:imm8`` field for *value*; raises when not representable."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise EncodingError(f"immediate {value:#x} is not a 32-bit value")
    for rot in range(16):
        v = ((value << (2 * rot)) | (value >> (32 - 2 * rot))) & 0xFFFFFFFF if rot else value
        if v <= 0xFF:
            return (rot << 8) | v
    raise EncodingError(f"immediate {value:#x} is not an 8-bit value rotated by an even amount")


def decode_modified_imm(imm12: int) -> int:
    rot = 2 * (imm12 >> 8)
    v = imm12 & 0xFF
    return ((v >> rot) | (v << (32 - rot))) & 0xFFFFFFFF if rot else v


_ADD, _SUB = 0x4, 0x2


def encode_add_imm(rd: int, rn: int, value: int) -> int:
    """``ADD Rd, Rn, #value`` (value a modified immediate)."""
    _check_reg(rd)
    _check_reg(rn)
    return 0xE2000000 | (_ADD << 21) | (rn << 16) | (rd << 12) | encode_modified_imm(value)


def encode_sub_imm(rd: int, rn: int, value: int) -> int:
    """``SUB Rd, Rn, #value`` (value a modified immediate)."""
    _check_reg(rd)
    _check_reg(rn)
    return 0xE2000000 | (_SUB << 21) | (rn << 16) | (rd << 12) | encode_modified_imm(value)


def decode_add_sub_imm(word: int) -> tuple[str, int, int, int] | None:
    """``("add"|"sub", Rd, Rn, value)`` of an unconditional, flag-less ADD/SUB
    immediate; None otherwise."""
    if (word & 0xFFE00000) == 0xE2800000:
        op = "add"
    elif (word & 0xFFE00000) == 0xE2400000:
        op = "sub"
    else:
        return None
    return op, (word >> 12) & 0xF, (word >> 16) & 0xF, decode_modified_imm(word & 0xFFF)


def encode_add_sp(value: int) -> list[int]:
    """Words adding *value* (0..2^31, a multiple of 4) to sp, as few as needed."""
    return _sp_adjust(value, encode_add_imm)


def encode_sub_sp(value: int) -> list[int]:
    """Words subtracting *value* (0..2^31, a multiple of 4) from sp."""
    return _sp_adjust(value, encode_sub_imm)


def encode_add_wide(rd: int, rn: int, value: int) -> list[int]:
    """Words computing ``Rd = Rn + value`` (0 <= value < 2 GiB, a word multiple)
    with as few modified-immediate ADDs as needed (at least one)."""
    words = _sp_adjust(value, encode_add_imm, rd, rn)
    return words or [encode_add_imm(rd, rn, 0)]


def _sp_adjust(value: int, enc: object, rd: int = SP, rn: int = SP) -> list[int]:
    if not 0 <= value < (1 << 31) or value % 4:
        raise EncodingError(f"sp adjustment {value:#x} is not a word multiple below 2 GiB")
    words: list[int] = []
    rest = value
    src = rn
    while rest:
        shift = max(0, rest.bit_length() - 8)
        shift += shift % 2
        chunk = rest & (0xFF << shift)
        words.append(enc(rd, src, chunk))  # type: ignore[operator]
        src = rd
        rest -= chunk
    return words


def encode_mov_reg(rd: int, rm: int) -> int:
    """``MOV Rd, Rm``."""
    _check_reg(rd)
    _check_reg(rm)
    return 0xE1A00000 | (rd << 12) | rm


def decode_mov_reg(word: int) -> tuple[int, int] | None:
    """``(Rd, Rm)`` of an unconditional, flag-less, unshifted ``MOV Rd, Rm``."""
    if (word & 0xFFFF0FF0) == 0xE1A00000:
        return (word >> 12) & 0xF, word & 0xF
    return None


def encode_ldr_imm(rt: int, rn: int, offset: int) -> int:
    """``LDR Rt, [Rn, #±offset]`` (offset within ±4095)."""
    _check_reg(rt)
    _check_reg(rn)
    if not -4095 <= offset <= 4095:
        raise EncodingError(f"ldr offset {offset} outside ±4095")
    u = 1 if offset >= 0 else 0
    return 0xE5100000 | (u << 23) | (rn << 16) | (rt << 12) | abs(offset)


def encode_str_imm(rt: int, rn: int, offset: int) -> int:
    """``STR Rt, [Rn, #±offset]`` (offset within ±4095)."""
    return encode_ldr_imm(rt, rn, offset) & ~(1 << 20)
