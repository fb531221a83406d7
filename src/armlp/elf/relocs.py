"""Relocation entries, REL and RELA alike, read with pyelftools.

ARM objects carry REL relocations (the addend is inside the instruction);
the kernel's livepatch relocation sections are RELA.  A :class:`Relocation`
keeps ``addend`` as ``None`` for REL so the loader knows to read it from the
place being relocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.enums import ENUM_RELOC_TYPE_ARM
from elftools.elf.relocation import RelocationSection

from armlp.elf.symbols import Symbol
from armlp.errors import ElfError

if TYPE_CHECKING:
    from armlp.elf.image import ElfImage, Section

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
    """Decode relocation section *rsec* of *image*."""
    syms = image.symbols.symbols
    target = image.sections[rsec.info].name if rsec.info < len(image.sections) else "?"
    try:
        sec = image.elffile.get_section(rsec.index)
        if not isinstance(sec, RelocationSection):
            raise ElfError(f"{image.path}: {rsec.name} is not a relocation section")
        is_rela = sec.is_RELA()
        out = []
        for i, rel in enumerate(sec.iter_relocations()):
            info = rel["r_info"]
            symidx, rtype = info >> 8, info & 0xFF
            if symidx >= len(syms):
                raise ElfError(f"{image.path}: {rsec.name} relocation {i}: symbol index "
                               f"{symidx} out of range")
            out.append(Relocation(i, rel["r_offset"], rtype, syms[symidx],
                                  rel["r_addend"] if is_rela else None, target, rsec.name))
        return out
    except (ELFError, ConstructError, ValueError) as exc:
        raise ElfError(f"{image.path}: {rsec.name}: {exc}") from None
