"""ARM relocations applied to one section's bytes: ``apply_relocate`` (REL,
the addend is read from the place) and ``apply_relocate_add`` (RELA).

Formulas and fields follow the ELF for the Arm Architecture (AAELF32) table;
the names are the kernel's (``arch/arm/kernel/module.c``).  S is the
symbol's address, A the addend, P the place's address, T 1 when the symbol
is a Thumb function.  Every result is range checked: an out-of-range branch
goes through a veneer, anything else that does not fit raises
:class:`~armlp.errors.LoaderError` naming the object, section, relocation
index, type and symbol.  Nothing is silently wrapped or zeroed.

``R_ARM_V4BX`` is left as the assembler wrote it (``bx rm``), as GNU ld does
without ``--fix-v4bx``: the kernel's rewrite to ``mov pc, rm`` would break
returns to Thumb callers on ARMv5.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from armlp.arm.t32 import (
    t32_branch_addend,
    t32_branch_from_offset,
    t32_movw_movt_imm,
    t32_with_movw_movt_imm,
)
from armlp.elf.relocs import Relocation, reloc_type
from armlp.errors import LoaderError
from armlp.loader.veneers import VeneerArea

R_ARM_NONE = reloc_type("NONE")
R_ARM_PC24 = reloc_type("PC24")
R_ARM_ABS32 = reloc_type("ABS32")
R_ARM_REL32 = reloc_type("REL32")
R_ARM_THM_CALL = reloc_type("THM_CALL")
R_ARM_CALL = reloc_type("CALL")
R_ARM_JUMP24 = reloc_type("JUMP24")
R_ARM_THM_JUMP24 = reloc_type("THM_JUMP24")
R_ARM_TARGET1 = reloc_type("TARGET1")
R_ARM_V4BX = reloc_type("V4BX")
R_ARM_PREL31 = reloc_type("PREL31")
R_ARM_MOVW_ABS_NC = reloc_type("MOVW_ABS_NC")
R_ARM_MOVT_ABS = reloc_type("MOVT_ABS")
R_ARM_MOVW_PREL_NC = reloc_type("MOVW_PREL_NC")
R_ARM_MOVT_PREL = reloc_type("MOVT_PREL")
R_ARM_THM_MOVW_ABS_NC = reloc_type("THM_MOVW_ABS_NC")
R_ARM_THM_MOVT_ABS = reloc_type("THM_MOVT_ABS")
R_ARM_THM_MOVW_PREL_NC = reloc_type("THM_MOVW_PREL_NC")
R_ARM_THM_MOVT_PREL = reloc_type("THM_MOVT_PREL")

#: Branch relocations: the ones that may need a veneer.
ARM_BRANCH_TYPES = frozenset({R_ARM_PC24, R_ARM_CALL, R_ARM_JUMP24})
THUMB_BRANCH_TYPES = frozenset({R_ARM_THM_CALL, R_ARM_THM_JUMP24})
BRANCH_TYPES = ARM_BRANCH_TYPES | THUMB_BRANCH_TYPES

_ARM_MOV = {R_ARM_MOVW_ABS_NC, R_ARM_MOVT_ABS, R_ARM_MOVW_PREL_NC, R_ARM_MOVT_PREL}
_THM_MOV = {R_ARM_THM_MOVW_ABS_NC, R_ARM_THM_MOVT_ABS, R_ARM_THM_MOVW_PREL_NC,
            R_ARM_THM_MOVT_PREL}
_MOVT = {R_ARM_MOVT_ABS, R_ARM_MOVT_PREL, R_ARM_THM_MOVT_ABS, R_ARM_THM_MOVT_PREL}
_PREL_MOV = {R_ARM_MOVW_PREL_NC, R_ARM_MOVT_PREL, R_ARM_THM_MOVW_PREL_NC, R_ARM_THM_MOVT_PREL}

#: Relocations that change nothing (``R_ARM_NONE`` marks a dependency, e.g.
#: of ``.ARM.exidx`` on ``__aeabi_unwind_cpp_pr1``): their symbols need no definition.
MARKER_TYPES = frozenset({R_ARM_NONE, R_ARM_V4BX})

#: Every relocation type the loader applies.
SUPPORTED_TYPES = frozenset({R_ARM_NONE, R_ARM_ABS32, R_ARM_TARGET1, R_ARM_REL32,
                             R_ARM_PREL31, R_ARM_V4BX} | BRANCH_TYPES | _ARM_MOV | _THM_MOV)

ARM_BRANCH_RANGE = (-(1 << 25), (1 << 25) - 4)
THUMB2_BRANCH_RANGE = (-(1 << 24), (1 << 24) - 2)
#: Thumb-1 (ARMv4T-v6) BL/BLX pairs: J1 = J2 = 1, so ±4 MiB.
THUMB1_BRANCH_RANGE = (-(1 << 22), (1 << 22) - 2)


@dataclass(frozen=True, slots=True)
class ArchInfo:
    """What an object's code may use (from its ``.ARM.attributes``)."""

    #: ``BLX (immediate)`` exists (ARMv5T and later).
    blx: bool = True
    #: Thumb BL/B.W reach ±16 MiB (Thumb-2); otherwise ±4 MiB.
    thumb2: bool = False


@dataclass(frozen=True, slots=True)
class Resolved:
    """A relocation's symbol: address (no Thumb bit), Thumb-function flag, name."""

    address: int
    thumb: bool
    name: str

    @property
    def value(self) -> int:
        return self.address | int(self.thumb)


def describe(where: str, section: str, rel: Relocation, symbol: str) -> str:
    """``obj: section S: relocation N (R_ARM_X) against SYM`` for messages."""
    return (f"{where}: section {section}: relocation {rel.index} ({rel.type_name}) "
            f"against {symbol or '(no symbol)'}")


def apply_relocate(data: bytearray, address: int, relocs: Sequence[Relocation],
                   resolve: Callable[[Relocation], Resolved], veneers: VeneerArea, *,
                   where: str, arch: ArchInfo = ArchInfo()) -> None:
    """Apply REL relocations to *data*, a section loaded at *address*."""
    for rel in relocs:
        if rel.addend is not None:
            raise LoaderError(describe(where, rel.section, rel, rel.symbol.name) +
                              ": RELA entry passed to apply_relocate")
        relocate_one(data, address, rel, resolve(rel), veneers, where=where, arch=arch)


def apply_relocate_add(data: bytearray, address: int, relocs: Sequence[Relocation],
                       resolve: Callable[[Relocation], Resolved], veneers: VeneerArea, *,
                       where: str, arch: ArchInfo = ArchInfo()) -> None:
    """Apply RELA relocations (explicit addends) to *data*, loaded at *address*."""
    for rel in relocs:
        if rel.addend is None:
            raise LoaderError(describe(where, rel.section, rel, rel.symbol.name) +
                              ": REL entry passed to apply_relocate_add")
        relocate_one(data, address, rel, resolve(rel), veneers, where=where, arch=arch)


def _sext(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return ((value & ((1 << bits) - 1)) ^ sign) - sign


def relocate_one(data: bytearray, address: int, rel: Relocation, sym: Resolved,
                 veneers: VeneerArea, *, where: str, arch: ArchInfo = ArchInfo()) -> None:
    """Apply one relocation (REL when ``rel.addend`` is None) to *data*."""
    rtype = rel.type

    def fail(problem: str) -> LoaderError:
        return LoaderError(f"{describe(where, rel.section, rel, sym.name)}: {problem}")

    if rtype not in SUPPORTED_TYPES:
        raise fail("unsupported relocation type")
    if rtype in (R_ARM_NONE, R_ARM_V4BX):
        return
    off = rel.offset
    if off % 2 or off + 4 > len(data) or (rtype not in THUMB_BRANCH_TYPES | _THM_MOV and off % 4):
        raise fail(f"place {off:#x} is misaligned or outside the section "
                   f"({len(data):#x} bytes)")
    (word,) = struct.unpack_from("<I", data, off)
    place = address + off
    S, T = sym.address, int(sym.thumb)

    def put(value: int) -> None:
        struct.pack_into("<I", data, off, value & 0xFFFFFFFF)

    A = rel_addend(rtype, word) if rel.addend is None else rel.addend
    if rtype in (R_ARM_ABS32, R_ARM_TARGET1, R_ARM_REL32):
        value = (S + A) | T
        if rtype == R_ARM_REL32:
            value -= place
        if not -(1 << 31) <= value < (1 << 32):
            raise fail(f"value {value:#x} does not fit 32 bits")
        put(value)
    elif rtype == R_ARM_PREL31:
        value = ((S + A) | T) - place
        if not -(1 << 30) <= value < (1 << 30):
            raise fail(f"offset {value:+#x} outside the 31-bit range (±1 GiB)")
        put((word & 0x80000000) | (value & 0x7FFFFFFF))
    elif rtype in _ARM_MOV:
        if (word & 0x0FF00000) not in (0x03000000, 0x03400000):
            raise fail(f"place {place:#x} holds {word:#010x}, not a MOVW/MOVT")
        v = _mov_value(rtype, A, S, T, place)
        put((word & 0xFFF0F000) | ((v >> 12) << 16) | (v & 0xFFF))
    elif rtype in _THM_MOV:
        hw1, hw2 = word & 0xFFFF, word >> 16
        if (hw1 & 0xFBF0) not in (0xF240, 0xF2C0) or hw2 & 0x8000:
            raise fail(f"place {place:#x} holds {hw1:04x} {hw2:04x}, not a Thumb MOVW/MOVT")
        put(t32_with_movw_movt_imm(word, _mov_value(rtype, A, S, T, place)))
    elif rtype in ARM_BRANCH_TYPES:
        put(_arm_branch(word, rel, A, sym, place, veneers, arch, fail))
    else:
        put(_thumb_branch(word, rel, A, sym, place, veneers, arch, fail))


def rel_addend(rtype: int, word: int) -> int:
    """The addend a REL relocation of type *rtype* keeps in the place *word*
    (for Thumb instructions: ``hw1 | hw2 << 16``)."""
    if rtype in (R_ARM_ABS32, R_ARM_TARGET1, R_ARM_REL32):
        return _sext(word, 32)
    if rtype == R_ARM_PREL31:
        return _sext(word, 31)
    if rtype in _ARM_MOV:
        return _sext(((word >> 4) & 0xF000) | (word & 0xFFF), 16)
    if rtype in _THM_MOV:
        return _sext(t32_movw_movt_imm(word), 16)
    if rtype in ARM_BRANCH_TYPES:
        is_blx = word >> 28 == 0xF
        return (_sext(word & 0xFFFFFF, 24) << 2) | (((word >> 24) & 1) << 1 if is_blx else 0)
    if rtype in THUMB_BRANCH_TYPES:
        return t32_branch_addend(word)
    return 0


def with_addend(rtype: int, word: int, addend: int) -> int | None:
    """*word* holding *addend* in place of its own (the inverse of
    :func:`rel_addend` for the ARM and Thumb types armlp build moves between
    symbols); None for a type it cannot, or an addend that does not fit."""
    if rtype in (R_ARM_ABS32, R_ARM_TARGET1, R_ARM_REL32):
        return addend & 0xFFFFFFFF
    if rtype in _ARM_MOV and -0x8000 <= addend < 0x8000:
        v = addend & 0xFFFF
        return (word & 0xFFF0F000) | ((v >> 12) << 16) | (v & 0xFFF)
    if rtype in ARM_BRANCH_TYPES and word >> 28 != 0xF and addend % 4 == 0 \
            and -(1 << 25) <= addend < (1 << 25):
        return (word & 0xFF000000) | ((addend >> 2) & 0xFFFFFF)
    if rtype in _THM_MOV and -0x8000 <= addend < 0x8000:
        return t32_with_movw_movt_imm(word, addend & 0xFFFF)
    kind = {0xD000: "bl", 0x9000: "b"}.get((word >> 16) & 0xD000)
    if rtype in THUMB_BRANCH_TYPES and kind is not None and addend % 2 == 0 \
            and THUMB2_BRANCH_RANGE[0] <= addend <= THUMB2_BRANCH_RANGE[1]:
        return t32_branch_from_offset(kind, addend)
    return None


def _mov_value(rtype: int, A: int, S: int, T: int, place: int) -> int:
    if rtype in _MOVT:
        value = S + A - place if rtype in _PREL_MOV else S + A
        return (value >> 16) & 0xFFFF
    value = (S + A) | T
    if rtype in _PREL_MOV:
        value -= place
    return value & 0xFFFF


def _arm_branch(word: int, rel: Relocation, A: int, sym: Resolved, place: int,
                veneers: VeneerArea, arch: ArchInfo,
                fail: Callable[[str], LoaderError]) -> int:
    if (word & 0x0E000000) != 0x0A000000:
        raise fail(f"place {place:#x} holds {word:#010x}, not a B/BL/BLX")
    cond = word >> 28
    is_blx = cond == 0xF
    # The destination the instruction means: the offset minus its pc bias.
    dest = sym.address + A + 8
    is_call = is_blx or (cond == 0xE and word & 0x01000000 and rel.type != R_ARM_JUMP24)
    lo, hi = ARM_BRANCH_RANGE
    if sym.thumb:
        if is_call and arch.blx:
            off = dest - (place + 8)
            if lo <= off <= hi + 2 and off % 2 == 0:
                return 0xFA000000 | (((off >> 1) & 1) << 24) | ((off >> 2) & 0xFFFFFF)
    else:
        off = dest - (place + 8)
        if off % 4:
            raise fail(f"ARM destination {dest:#x} is not word aligned")
        if lo <= off <= hi:
            base = 0xEB000000 if is_blx else word & 0xFF000000
            return base | ((off >> 2) & 0xFFFFFF)
    if is_blx:
        cond, link = 0xE, True
    else:
        link = bool(word & 0x01000000)
    ven = veneers.get("arm", dest | int(sym.thumb))
    off = ven.address - (place + 8)
    if not lo <= off <= hi:
        raise fail(f"destination {dest:#x} out of branch range of {place:#x} and the "
                   f"veneer area at {veneers.address:#x} is out of range too")
    return (cond << 28) | 0x0A000000 | (int(link) << 24) | ((off >> 2) & 0xFFFFFF)


def _thumb_branch(word: int, rel: Relocation, A: int, sym: Resolved, place: int,
                  veneers: VeneerArea, arch: ArchInfo,
                  fail: Callable[[str], LoaderError]) -> int:
    hw1, hw2 = word & 0xFFFF, word >> 16
    op = hw2 & 0xD000
    if (hw1 & 0xF800) != 0xF000 or op not in (0xD000, 0xC000, 0x9000):
        raise fail(f"place {place:#x} holds {hw1:04x} {hw2:04x}, not a Thumb BL/BLX/B.W")
    if op == 0x9000 and rel.type == R_ARM_THM_CALL:
        raise fail("R_ARM_THM_CALL on a B.W instruction")
    if op != 0x9000 and rel.type == R_ARM_THM_JUMP24:
        raise fail("R_ARM_THM_JUMP24 on a BL/BLX instruction")
    dest = sym.address + A + 4
    lo, hi = THUMB2_BRANCH_RANGE if arch.thumb2 else THUMB1_BRANCH_RANGE
    if op == 0x9000 and not arch.thumb2:
        raise fail("B.W needs Thumb-2, which the object's attributes do not declare")
    is_call = op != 0x9000
    if sym.thumb:
        off = dest - (place + 4)
        if lo <= off <= hi:
            return t32_branch_from_offset("bl" if is_call else "b", off)
    elif is_call and arch.blx:
        off = (dest & ~3) - ((place + 4) & ~3)
        if dest % 4:
            raise fail(f"ARM destination {dest:#x} is not word aligned")
        if lo <= off <= hi:
            return t32_branch_from_offset("blx", off)
    ven = veneers.get("thumb", dest | int(sym.thumb))
    off = ven.address - (place + 4)
    if not lo <= off <= hi:
        raise fail(f"destination {dest:#x} out of branch range of {place:#x} and the "
                   f"veneer area at {veneers.address:#x} is out of range too")
    return t32_branch_from_offset("bl" if is_call else "b", off)
