"""Symbol resolution for loaded objects (the kernel's ``simplify_symbols``).

A relocation's symbol is found, in order:

1. defined in its own object: locals (and section symbols) within the
   object, globals through the set's global table (a strong definition beats
   a weak one; two strong ones are an error);
2. ``.klp.sym.<object>.<name>,<sympos>``: the target program's symbol
   *name* at *sympos* (kernel rules: 0 means the name must be unique), or
   the symbol of a shared library when *object* is its soname (dots and
   all: known sonames are matched first);
3. a global of another object of the set;
4. the extra exports (``name -> address``, bit 0 set for Thumb functions);
5. the target program's symbols: its unique global *name*, else its unique
   local (static) *name* — several statics of that name are ambiguous and
   need the ``.klp.sym`` form with a sympos.

An undefined weak symbol with no definition resolves to 0, as in GNU ld.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from armlp.elf.image import ElfImage
from armlp.elf.symbols import (
    SHN_ABS,
    SHN_UNDEF,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_SECTION,
    Symbol,
    is_mapping_symbol,
)
from armlp.errors import LoaderError, SymbolError
from armlp.loader.layout import ObjectFile
from armlp.loader.module import ModuleSymbol
from armlp.loader.relocate import Resolved

SHN_COMMON = 0xFFF2
KLP_PREFIX = ".klp.sym."


class UndefinedSymbol(LoaderError):
    """No definition anywhere for a symbol (collected, then reported together)."""


def parse_klp_name(name: str) -> tuple[str, str, int]:
    """``(object, name, sympos)`` of ``.klp.sym.<object>.<name>,<sympos>``."""
    rest = name[len(KLP_PREFIX):]
    obj, dot, tail = rest.partition(".")
    sym, comma, pos = tail.rpartition(",")
    if not (obj and dot and sym and comma and pos.isdigit()):
        raise LoaderError(f"malformed livepatch symbol name {name!r} "
                          f"(expected .klp.sym.<object>.<name>,<sympos>)")
    return obj, sym, int(pos)


def _thumb_func(sym: Symbol) -> bool:
    return sym.type == STT_FUNC and bool(sym.value & 1)


class SymbolResolver:
    """Resolves the symbols of a set of objects once their sections have addresses."""

    def __init__(self, objects: Sequence[ObjectFile],
                 addresses: Mapping[tuple[int, int], int], *,
                 target: ElfImage | None = None, target_name: str | None = None,
                 exports: Mapping[str, int] | None = None,
                 libraries: Mapping[str, ElfImage] | None = None) -> None:
        self.objects = objects
        self.libraries = dict(libraries or {})
        self.addresses = addresses
        self.target = target
        self.target_name = target_name
        self.exports = dict(exports or {})
        self.globals: dict[str, tuple[int, Symbol]] = {}
        for i, obj in enumerate(objects):
            for sym in obj.image.symbols.symbols:
                if sym.bind not in (STB_GLOBAL, STB_WEAK) or not sym.defined:
                    continue
                if sym.shndx == SHN_COMMON:
                    raise LoaderError(f"{obj.name}: symbol {sym.name} is a COMMON symbol; "
                                      f"compile with -fno-common")
                prev = self.globals.get(sym.name)
                if prev is None or (self._bind(prev) == STB_WEAK and sym.bind == STB_GLOBAL):
                    self.globals[sym.name] = (i, sym)
                elif sym.bind == STB_GLOBAL and self._bind(prev) == STB_GLOBAL:
                    raise LoaderError(f"{obj.name}: symbol {sym.name} is also defined in "
                                      f"{objects[prev[0]].name}")

    @staticmethod
    def _bind(entry: tuple[int, Symbol]) -> int:
        return entry[1].bind

    def _defined(self, obj: int, sym: Symbol) -> Resolved:
        if sym.shndx == SHN_ABS:
            return Resolved(sym.value & ~1 if _thumb_func(sym) else sym.value,
                            _thumb_func(sym), sym.name)
        if sym.shndx == SHN_COMMON:
            raise LoaderError(f"symbol {sym.name} is a COMMON symbol; compile with -fno-common")
        secs = self.objects[obj].image.sections
        if sym.shndx >= len(secs):
            raise LoaderError(f"symbol {sym.name or '?'} in special section {sym.shndx:#x}")
        base = self.addresses.get((obj, sym.shndx))
        if base is None:
            raise LoaderError(f"symbol {sym.name or secs[sym.shndx].name} is in section "
                              f"{secs[sym.shndx].name}, which is not allocated")
        name = sym.name or secs[sym.shndx].name
        if _thumb_func(sym):
            return Resolved(base + (sym.value & ~1), True, name)
        return Resolved(base + sym.value, False, name)

    def resolve(self, obj: int, sym: Symbol) -> Resolved:
        """The address of *sym*, a symbol of object number *obj*."""
        if sym.index == 0:
            return Resolved(0, False, "")
        if sym.defined:
            if sym.bind != STB_LOCAL and sym.type != STT_SECTION:
                owner, gsym = self.globals.get(sym.name, (obj, sym))
                return self._defined(owner, gsym)
            return self._defined(obj, sym)
        name = sym.name
        if name.startswith(KLP_PREFIX):
            return self._klp(name)
        found = self.globals.get(name)
        if found is not None:
            return self._defined(*found)
        if name in self.exports:
            value = self.exports[name]
            return Resolved(value & ~1, bool(value & 1), name)
        if self.target is not None:
            tsym = self._target_lookup(name)
            if tsym is not None:
                return self._target_value(tsym)
        if sym.bind == STB_WEAK:
            return Resolved(0, False, name)
        where = f" (not in the objects, the exports or {self.target.path})" \
            if self.target is not None else " (not in the objects or the exports; no target)"
        raise UndefinedSymbol(f"undefined symbol {name}{where}")

    def _klp(self, name: str) -> Resolved:
        rest = name[len(KLP_PREFIX):]
        for soname in sorted(self.libraries, key=len, reverse=True):
            if rest.startswith(soname + "."):
                lname, comma, lpos = rest[len(soname) + 1:].rpartition(",")
                if not (lname and comma and lpos.isdigit()):
                    break
                try:
                    lsym = self.libraries[soname].symbols.lookup(lname, int(lpos),
                                                                 where=soname)
                except SymbolError as exc:
                    raise LoaderError(str(exc)) from exc
                return self._target_value(lsym)
        obj, tname, pos = parse_klp_name(name)
        if self.target is None:
            raise LoaderError(f"{name}: no target program to resolve it in")
        if self.target_name is not None and obj != self.target_name:
            raise LoaderError(f"{name}: object {obj!r} is not the target "
                              f"({self.target_name!r})")
        try:
            tsym = self.target.symbols.lookup(tname, pos, where=str(self.target.path))
        except SymbolError as exc:
            raise LoaderError(str(exc)) from exc
        return self._target_value(tsym)

    def _target_lookup(self, name: str) -> Symbol | None:
        assert self.target is not None
        found = [s for s in self.target.symbols.by_name.get(name, [])
                 if s.type not in (STT_SECTION, STT_FILE)]
        glob = [s for s in found if s.bind in (STB_GLOBAL, STB_WEAK)]
        if len(glob) == 1:
            return glob[0]
        if len(glob) > 1:
            strong = [s for s in glob if s.bind == STB_GLOBAL]
            if len(strong) == 1:
                return strong[0]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise LoaderError(f"symbol {name!r} is ambiguous in {self.target.path}: "
                              f"{len(found)} symbols share the name; refer to it as "
                              f"{KLP_PREFIX}<object>.{name},<sympos> with sympos "
                              f"1..{len(found)}")
        return None

    @staticmethod
    def _target_value(sym: Symbol) -> Resolved:
        thumb = _thumb_func(sym)
        return Resolved(sym.value & ~1 if thumb else sym.value, thumb, sym.name)

    def module_symbols(self) -> list[ModuleSymbol]:
        """Every named symbol the objects define in loaded sections."""
        out = []
        for i, obj in enumerate(self.objects):
            for sym in obj.image.symbols.symbols:
                if (not sym.name or sym.type in (STT_SECTION, STT_FILE) or
                        sym.shndx == SHN_UNDEF or is_mapping_symbol(sym.name)):
                    continue
                if sym.shndx != SHN_ABS and (i, sym.shndx) not in self.addresses:
                    continue
                if sym.bind != STB_LOCAL and self.globals.get(sym.name, (i, sym))[1] is not sym:
                    continue   # a weak definition overridden by a strong one
                res = self._defined(i, sym)
                out.append(ModuleSymbol(sym.name, obj.name, res.address, res.thumb, sym.size,
                                        sym.type == STT_FUNC, sym.bind != STB_LOCAL))
        return out
