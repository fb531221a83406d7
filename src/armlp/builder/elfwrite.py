"""Writing a 32-bit ARM relocatable object (``ET_REL``, REL relocations).

pyelftools reads ELF and does not write it; what ``armlp build`` writes is
small (copied sections, their relocations, symbols), so this is the few
lines of the ELF format it needs and nothing more.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from armlp.elf.image import SHT_NOBITS, SHT_PROGBITS, SHT_REL, SHT_STRTAB, SHT_SYMTAB
from armlp.elf.symbols import STB_LOCAL, STT_SECTION

EM_ARM = 40
ET_REL = 1
SHF_INFO_LINK = 0x40
#: Version 5 EABI, as GCC writes it (the float ABI bits come from the sources).
EF_ARM_EABI_VER5 = 0x05000000
SHT_ARM_ATTRIBUTES = 0x70000003


@dataclass(slots=True)
class _Section:
    name: str
    type: int
    flags: int
    data: bytes
    align: int
    size: int = 0                       # NOBITS: the size
    link: int = 0                       # SHF_LINK_ORDER: the section it describes
    relocs: list[tuple[int, int, int]] = field(default_factory=list)  # offset, type, symbol


@dataclass(slots=True)
class _Symbol:
    name: str
    value: int
    size: int
    info: int
    shndx: int


class ObjectWriter:
    """Sections, symbols and relocations, then :meth:`write`."""

    def __init__(self, flags: int = EF_ARM_EABI_VER5) -> None:
        self.flags = flags
        self.sections: list[_Section] = []
        self.symbols: list[_Symbol] = [_Symbol("", 0, 0, 0, 0)]
        self._section_syms: dict[int, int] = {}

    def add_section(self, name: str, data: bytes, *, flags: int, align: int = 4,
                    type: int = SHT_PROGBITS, size: int = 0, link: int = 0) -> int:
        """A new section; its index (1-based, as the header table numbers it)."""
        self.sections.append(_Section(name, type, flags, b"" if type == SHT_NOBITS else data,
                                      max(1, align), size if type == SHT_NOBITS else len(data),
                                      link))
        return len(self.sections)

    def add_symbol(self, name: str, value: int, size: int, type: int, bind: int,
                   shndx: int) -> int:
        self.symbols.append(_Symbol(name, value, size, (bind << 4) | type, shndx))
        return len(self.symbols) - 1

    def section_symbol(self, shndx: int) -> int:
        if shndx not in self._section_syms:
            self._section_syms[shndx] = self.add_symbol("", 0, 0, STT_SECTION, STB_LOCAL, shndx)
        return self._section_syms[shndx]

    def add_reloc(self, shndx: int, offset: int, rtype: int, symbol: int) -> None:
        self.sections[shndx - 1].relocs.append((offset, rtype, symbol))

    def write(self, path: Path) -> None:
        # Locals first: the symbol table's sh_info is the first global.
        order = sorted(range(1, len(self.symbols)), key=lambda i: self.symbols[i].info >> 4 != 0)
        new_index = {0: 0, **{old: new for new, old in enumerate(order, 1)}}
        syms = [self.symbols[0], *(self.symbols[i] for i in order)]
        first_global = next((i for i, s in enumerate(syms) if i and s.info >> 4), len(syms))
        strtab = bytearray(b"\0")
        sym_blob = bytearray()
        for s in syms:
            off = 0
            if s.name:
                off = len(strtab)
                strtab += s.name.encode() + b"\0"
            sym_blob += struct.pack("<IIIBBH", off, s.value, s.size, s.info, 0, s.shndx)
        headers: list[tuple[str, int, int, bytes, int, int, int, int, int]] = []
        # (name, type, flags, data, link, info, align, entsize, size)
        for sec in self.sections:
            headers.append((sec.name, sec.type, sec.flags, sec.data, sec.link, 0, sec.align, 0,
                            sec.size))
        nsec = len(self.sections)
        symtab_index = nsec + 1 + sum(1 for s in self.sections if s.relocs)
        for i, sec in enumerate(self.sections, 1):
            if sec.relocs:
                blob = b"".join(struct.pack("<II", off, (new_index[sym] << 8) | rtype)
                                for off, rtype, sym in sorted(sec.relocs))
                headers.append((".rel" + sec.name, SHT_REL, SHF_INFO_LINK, blob, symtab_index,
                                i, 4, 8, len(blob)))
        headers.append((".symtab", SHT_SYMTAB, 0, bytes(sym_blob), symtab_index + 1,
                        first_global, 4, 16, len(sym_blob)))
        headers.append((".strtab", SHT_STRTAB, 0, bytes(strtab), 0, 0, 1, 0, len(strtab)))
        shstrtab = bytearray(b"\0")
        names = []
        for h in headers:
            names.append(len(shstrtab))
            shstrtab += h[0].encode() + b"\0"
        names.append(len(shstrtab))
        shstrtab += b".shstrtab\0"
        headers.append((".shstrtab", SHT_STRTAB, 0, bytes(shstrtab), 0, 0, 1, 0, len(shstrtab)))
        out = bytearray(52)
        table = [bytes(40)]
        for (_name, stype, flags, data, link, info, align, entsize, size), noff in \
                zip(headers, names, strict=True):
            while len(out) % max(align, 1):
                out.append(0)
            offset = len(out)
            if stype != SHT_NOBITS:
                out += data
            table.append(struct.pack("<IIIIIIIIII", noff, stype, flags, 0, offset, size, link,
                                      info, align, entsize))
        while len(out) % 4:
            out.append(0)
        shoff = len(out)
        for entry in table:
            out += entry
        ident = b"\x7fELF\x01\x01\x01" + bytes(9)
        out[:52] = ident + struct.pack("<HHIIIIIHHHHHH", ET_REL, EM_ARM, 1, 0, 0, shoff,
                                       self.flags, 52, 0, 0, 40, len(table), len(table) - 1)
        path.write_bytes(bytes(out))
