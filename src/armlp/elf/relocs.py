"""Relocation entries, REL and RELA alike, read with pyelftools.

ARM objects carry REL relocations (the addend is inside the instruction);
the kernel's livepatch relocation sections are RELA.  A :class:`Relocation`
keeps ``addend`` as ``None`` for REL so the loader knows to read it from the
place being relocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from elftools.elf.enums import ENUM_RELOC_TYPE_ARM

from armlp.elf.symbols import Symbol
from armlp.errors import ElfError

if TYPE_CHECKING:
    from armlp.elf.image import ElfImage, Section

_REL = struct.Struct("<II")
_RELA = struct.Struct("<IIi")

RELOC_NAMES: dict[int, str] = {v: k for k, v in ENUM_RELOC_TYPE_ARM.items()
                               if isinstance(v, int)}


def reloc_type(name: str) -> int:
    """The number of relocation type ``R_ARM_<name>`` (prefix optional)."""
    full = name if name.startswith("R_ARM_") else f"R_ARM_{name}"
    return int(ENUM_RELOC_TYPE_ARM[full])


@dataclass(frozen=True, slots=True)
class Relocation:
    """One relocation against ``section`` (the relocated section's name)."""

    index: int
    offset: int
    type: int
    symbol: Symbol
    addend: int | None
    section: str
    reloc_section: str

    @property
    def type_name(self) -> str:
        return RELOC_NAMES.get(self.type, f"type {self.type}")


def read_relocations(image: ElfImage, rsec: Section) -> list[Relocation]:
    """Decode relocation section *rsec* of *image* (entries unpacked with
    struct: an object built with -ffunction-sections has tens of thousands)."""
    from armlp.elf.image import SHT_RELA
    syms = image.symbols.symbols
    target = image.sections[rsec.info].name if rsec.info < len(image.sections) else "?"
    is_rela = rsec.type == SHT_RELA
    entry = _RELA if is_rela else _REL
    data = image.section_data(rsec)
    if len(data) % entry.size:
        raise ElfError(f"{image.path}: {rsec.name}: {len(data)} bytes, not a whole number of "
                       f"{entry.size}-byte entries")
    out = []
    for i, fields in enumerate(entry.iter_unpack(data)):
        info = fields[1]
        symidx, rtype = info >> 8, info & 0xFF
        if symidx >= len(syms):
            raise ElfError(f"{image.path}: {rsec.name} relocation {i}: symbol index "
                           f"{symidx} out of range")
        out.append(Relocation(i, fields[0], rtype, syms[symidx],
                              fields[2] if is_rela else None, target, rsec.name))
    return out
