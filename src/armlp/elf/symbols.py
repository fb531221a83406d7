"""Symbols of an ARM ELF: functions with the kernel's ``sympos``, ARM vs Thumb.

The symbol table is decoded with :mod:`struct` in one pass instead of through
pyelftools' per-symbol parser: a 20,000-function program has 35,000 symbols,
which pyelftools takes 0.7 s to walk, twenty times the budget of a scan.

``sympos`` follows ``klp_find_object_symbol``: 0 when a name is unique in the
object, otherwise the 1-based position among the symbols with that name in
symbol-table order (the link order of the files, for static functions).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from armlp.errors import ElfError, SymbolError

if TYPE_CHECKING:
    from armlp.elf.image import ElfImage

STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
_BINDS = {STB_LOCAL: "local", STB_GLOBAL: "global", STB_WEAK: "weak"}
_SYM = struct.Struct("<IIIBBH")


class Symbol(NamedTuple):
    """One raw symbol-table entry (``value`` keeps the Thumb bit)."""

    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int

    @property
    def defined(self) -> bool:
        return self.shndx != SHN_UNDEF

    @property
    def binding(self) -> str:
        return _BINDS.get(self.bind, str(self.bind))


@dataclass(slots=True)
class FunctionSymbol:
    """A function: address without the Thumb bit, its mode and its sympos."""

    name: str
    sympos: int
    address: int
    size: int
    mode: str
    section: int
    section_name: str
    binding: str
    index: int

    @property
    def label(self) -> str:
        """``name`` or ``name,sympos`` as users write it."""
        return f"{self.name},{self.sympos}" if self.sympos else self.name


def is_mapping_symbol(name: str) -> bool:
    return len(name) >= 2 and name[0] == "$" and name[1] in "atd" and (
        len(name) == 2 or name[2] == ".")


class SymbolTable:
    """The symbol table of one image, indexed for the lookups armlp needs."""

    def __init__(self, symbols: list[Symbol], section_names: list[str]) -> None:
        self.symbols = symbols
        self._section_names = section_names
        self.by_name: dict[str, list[Symbol]] = {}
        self._mapping: dict[int, tuple[list[int], list[str]]] = {}
        for sym in symbols:
            if not sym.name or sym.type in (STT_SECTION, STT_FILE):
                continue
            if is_mapping_symbol(sym.name):
                if sym.defined:
                    addrs, kinds = self._mapping.setdefault(sym.shndx, ([], []))
                    addrs.append(sym.value)
                    kinds.append(sym.name[1])
                continue
            if sym.defined:
                self.by_name.setdefault(sym.name, []).append(sym)
        for addrs, kinds in self._mapping.values():
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs[:] = [addrs[i] for i in order]
            kinds[:] = [kinds[i] for i in order]

    @classmethod
    def from_image(cls, image: ElfImage) -> SymbolTable:
        from armlp.elf.image import SHT_STRTAB, SHT_SYMTAB
        symtab = next((s for s in image.sections if s.type == SHT_SYMTAB), None)
        if symtab is None:
            raise ElfError(f"{image.path}: no symbol table (stripped?)")
        if symtab.entsize not in (0, _SYM.size):
            raise ElfError(f"{image.path}: symbol entry size {symtab.entsize}, "
                           f"expected {_SYM.size}")
        if not 0 < symtab.link < len(image.sections) or \
                image.sections[symtab.link].type != SHT_STRTAB:
            raise ElfError(f"{image.path}: symbol table has no string table")
        strsec = image.sections[symtab.link]
        strtab = image.data[strsec.offset:strsec.offset + strsec.size]
        raw = image.data[symtab.offset:symtab.offset + symtab.size - symtab.size % _SYM.size]
        nsec = len(image.sections)
        out: list[Symbol] = []
        cache: dict[int, str] = {}
        find = strtab.find
        for i, (st_name, value, size, info, _other, shndx) in enumerate(_SYM.iter_unpack(raw)):
            name = cache.get(st_name)
            if name is None:
                if st_name >= len(strtab) and st_name:
                    raise ElfError(f"{image.path}: symbol {i} name offset {st_name:#x} "
                                   f"outside the string table")
                end = find(b"\0", st_name)
                name = strtab[st_name:end if end >= 0 else len(strtab)].decode("utf-8", "replace")
                cache[st_name] = name
            if shndx >= nsec and shndx < 0xFF00:
                raise ElfError(f"{image.path}: symbol {i} ({name}) in section {shndx}, "
                               f"which does not exist")
            out.append(Symbol(i, name, value, size, info & 0xF, info >> 4, shndx))
        return cls(out, [s.name for s in image.sections])

    def mapping_at(self, shndx: int, value: int) -> str | None:
        """The mapping-symbol class (``a``, ``t`` or ``d``) in force at *value*."""
        entry = self._mapping.get(shndx)
        if entry is None:
            return None
        addrs, kinds = entry
        i = bisect.bisect_right(addrs, value) - 1
        return kinds[i] if i >= 0 else None

    def functions(self) -> list[FunctionSymbol]:
        """Every defined function symbol in symbol-table order, with sympos."""
        funcs: list[FunctionSymbol] = []
        names = self._section_names
        by_name = self.by_name
        for sym in self.symbols:
            if sym.type != STT_FUNC or sym.shndx == SHN_UNDEF or sym.shndx >= len(names):
                continue
            same = by_name[sym.name]
            sympos = 0 if len(same) == 1 else same.index(sym) + 1
            addr = sym.value & ~1
            if sym.value & 1:
                mode = "thumb"
            else:
                mode = "thumb" if self.mapping_at(sym.shndx, addr) == "t" else "arm"
            funcs.append(FunctionSymbol(sym.name, sympos, addr, sym.size, mode, sym.shndx,
                                        names[sym.shndx], sym.binding, sym.index))
        return funcs

    def sympos_of(self, sym: Symbol) -> int:
        same = self.by_name.get(sym.name, [])
        return 0 if len(same) <= 1 else same.index(sym) + 1

    def lookup(self, name: str, sympos: int = 0, *, where: str = "") -> Symbol:
        """The symbol *name* at position *sympos* (kernel rules: 0 = must be unique)."""
        found = self.by_name.get(name)
        where = f" in {where}" if where else ""
        if not found:
            raise SymbolError(f"symbol {name!r} not found{where}")
        if sympos == 0:
            if len(found) > 1:
                raise SymbolError(f"symbol {name!r} is ambiguous{where}: {len(found)} symbols "
                                  f"share the name; give sympos 1..{len(found)}")
            return found[0]
        if not 1 <= sympos <= len(found):
            raise SymbolError(f"symbol {name!r}{where} has no sympos {sympos} "
                              f"({len(found)} with that name)")
        return found[sympos - 1]
