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
import operator
import struct
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cached_property
from itertools import compress, repeat
from mmap import mmap
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from armlp.elf.image import cstr
from armlp.errors import ElfError, SymbolError

if TYPE_CHECKING:
    from armlp.elf.image import ElfImage

STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
_BINDS = {STB_LOCAL: "local", STB_GLOBAL: "global", STB_WEAK: "weak"}
_SYM = struct.Struct("<IIIBBH")
_T = TypeVar("_T")


class Symbol(NamedTuple):
    """One raw symbol-table entry (``value`` keeps the Thumb bit)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
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


class FunctionSymbol(NamedTuple):
    """A function: address without the Thumb bit, its mode and its sympos
    (a NamedTuple: see :class:`~armlp.elf.image.Segment`)."""

    name: str
    sympos: int
    address: int
    size: int
    mode: str
    section: int
    section_name: str
    binding: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose

    @property
    def label(self) -> str:
        """``name`` or ``name,sympos`` as users write it."""
        return f"{self.name},{self.sympos}" if self.sympos else self.name

    @property
    def pc(self) -> int:
        """Where a call enters it: the address, bit 0 set for Thumb code."""
        return self.address | int(self.mode == "thumb")


def is_mapping_symbol(name: str) -> bool:
    return len(name) >= 2 and name[0] == "$" and name[1] in "atd" and (
        len(name) == 2 or name[2] == ".")


def _symbol_names(strtab: bytes | memoryview, offsets: Sequence[int]) -> list[str]:
    """The name at each string-table offset (offsets already checked).

    A find and a slice per symbol, mapped at C speed: cheaper than splitting
    the table and looking the offsets up, and right for offsets into the
    middle of a string (shared suffixes: 15,000 of a vmlinux's symbols)."""
    try:
        text = str(strtab, "ascii")     # the usual table: one copy, decoded
    except UnicodeDecodeError:
        table = bytes(strtab)
        if not table.endswith(b"\0"):
            table += b"\0"
        names = map(table.__getitem__, map(slice, offsets, map(table.find, repeat(b"\0"),
                                                               offsets)))
        return list(map(bytes.decode, names, repeat("utf-8"), repeat("replace")))
    if not text.endswith("\0"):
        text += "\0"
    ends = map(text.find, repeat("\0"), offsets)
    return list(map(text.__getitem__, map(slice, offsets, ends)))


def _raise_first_bad_symbol(image: ElfImage, strtab: bytes, offsets: Sequence[int],
                            shndx: Sequence[int]) -> None:
    """Raise the error for the first symbol whose name or section is out of range."""
    nsec = len(image.sections)
    for i, (off, sec) in enumerate(zip(offsets, shndx, strict=True)):
        if off >= len(strtab) and off:
            raise ElfError(f"{image.path}: symbol {i} name offset {off:#x} "
                           f"outside the string table")
        if nsec <= sec < 0xFF00:
            raise ElfError(f"{image.path}: symbol {i} ({cstr(strtab, off)}) in section "
                           f"{sec}, which does not exist")


class _RawTables(NamedTuple):
    """Where a symbol table and its string table lie in an image's bytes."""

    data: bytes | mmap
    strtab: memoryview
    strtab_at: int
    symtab_at: int
    entries: int
    st_names: Sequence[int]


class _Columns:
    """The symbol table as parallel columns, one entry per symbol (numbers
    as arrays: no int object per symbol until one is asked for).

    The names are decoded on first use, all of them (38 ms on a vmlinux's
    221,000), or only a few symbols' (:meth:`names_of`); :meth:`find_name`
    finds a name's symbols in the raw tables without decoding any.  A
    process scanning part of a vmlinux (:mod:`armlp.analysis.split`) needs
    no more."""

    def __init__(self, values: Sequence[int], sizes: Sequence[int], infos: bytes,
                 shndx: Sequence[int], *, names: list[str] | None = None,
                 raw: _RawTables | None = None) -> None:
        self.values = values
        self.sizes = sizes
        self.infos = infos          # st_info: type in the low nibble, binding in the high one
        self.shndx = shndx
        self._raw = raw
        if names is not None:
            self.__dict__["names"] = names

    @cached_property
    def names(self) -> list[str]:
        assert self._raw is not None
        return _symbol_names(self._raw.strtab, self._raw.st_names)

    @classmethod
    def of(cls, symbols: Sequence[Symbol]) -> _Columns:
        return cls([s.value for s in symbols], [s.size for s in symbols],
                   bytes(s.type | s.bind << 4 for s in symbols), [s.shndx for s in symbols],
                   names=[s.name for s in symbols])

    def names_of(self, index: list[int]) -> list[str]:
        """The names of the symbols at *index*: decoded for these alone if
        the names are not decoded yet."""
        if self._raw is None or "names" in self.__dict__:
            return _pick(self.names, index)
        return _symbol_names(self._raw.strtab, _pick(self._raw.st_names, index))

    def positions(self, name: str) -> list[int]:
        """The indices of the symbols named *name*: in the raw tables, or
        in the decoded names where that is needed (see :meth:`find_name`)."""
        found = self.find_name(name)
        return _positions(self.names, name) if found is None else found

    def find_name(self, name: str) -> list[int] | None:
        """The indices of the symbols named *name*, in table order, found in
        the raw tables: each place the string table holds the name and a NUL
        (a name may end another string), then the symbols whose ``st_name``
        points there.  None where that would not be exact or not needed:
        the names already decoded, a name that is not ASCII, a string table
        that does not end its last name."""
        raw = self._raw
        if raw is None or "names" in self.__dict__ or not name.isascii() or "\0" in name:
            return None
        data, at, end = raw.data, raw.strtab_at, raw.strtab_at + len(raw.strtab)
        if end == at or data[end - 1] != 0:
            return None
        key = name.encode() + b"\0"
        symtab_end = raw.symtab_at + _SYM.size * raw.entries
        found = []
        p = data.find(key, at, end)
        while p >= 0:
            word = struct.pack("<I", p - at)
            q = data.find(word, raw.symtab_at, symtab_end)
            while q >= 0:
                if not (q - raw.symtab_at) % _SYM.size:      # an st_name, not another field
                    found.append((q - raw.symtab_at) // _SYM.size)
                q = data.find(word, q + 1, symtab_end)
            p = data.find(key, p + 1, end)
        return sorted(found)


#: st_info byte -> 1 for STT_FUNC symbols (for :func:`itertools.compress`).
_IS_FUNC = bytes(int(i & 0xF == STT_FUNC) for i in range(256))
#: st_info byte -> 1 for every other symbol.
_NOT_FUNC = bytes(1 - f for f in _IS_FUNC)
#: A function symbol's value & 1 -> its mode.
_MODE_OF_BIT0 = ("arm", "thumb")
#: :meth:`SymbolTable.named` lookups made without an index of the names.
SCANNED_LOOKUPS = 4
#: st_info byte -> the binding's name.
_BIND_OF_INFO = tuple(_BINDS.get(i >> 4) or str(i >> 4) for i in range(256))


def _positions(column: list[str], value: str) -> list[int]:
    """Every *i* with ``column[i] == value``, found by :meth:`list.index`
    (C speed; few hits expected)."""
    out: list[int] = []
    i = -1
    while True:
        try:
            i = column.index(value, i + 1)
        except ValueError:
            return out
        out.append(i)


def _pick(column: Sequence[_T], index: list[int]) -> list[_T]:
    """``[column[i] for i in index]``, at C speed."""
    return list(map(column.__getitem__, index))


class SymbolTable:
    """The symbol table of one image, indexed for the lookups armlp needs.

    Kept as columns (:class:`_Columns`); the per-symbol views ``symbols`` and
    ``by_name`` are built on first use, since ``armlp scan`` needs neither.
    """

    def __init__(self, symbols: Sequence[Symbol], section_names: list[str], *,
                 columns: _Columns | None = None, maybe_thumb: bool = True,
                 dotted_t: bool = True) -> None:
        self._section_names = section_names
        self._cols = columns if columns is not None else _Columns.of(symbols)
        # False when no name can be a ``$t`` mapping symbol: then functions()
        # needs no mapping-symbol index (ARM-only programs, the common case).
        self._maybe_thumb = maybe_thumb
        self._dotted_t = dotted_t
        self._lookups = 0
        if columns is None:
            self.__dict__["symbols"] = list(symbols)

    @cached_property
    def symbols(self) -> list[Symbol]:
        """Every entry, in symbol-table order."""
        c = self._cols
        return [Symbol(i, name, value, size, info & 0xF, info >> 4, shndx)
                for i, (name, value, size, info, shndx)
                in enumerate(zip(c.names, c.values, c.sizes, c.infos, c.shndx,
                                     strict=True))]

    @cached_property
    def by_name(self) -> dict[str, list[Symbol]]:
        """Defined symbols by name (no mapping, section or file symbols)."""
        by_name: dict[str, list[Symbol]] = {}
        for sym in self.symbols:
            if (sym.name and sym.type not in (STT_SECTION, STT_FILE)
                    and not is_mapping_symbol(sym.name) and sym.defined):
                by_name.setdefault(sym.name, []).append(sym)
        return by_name

    @cached_property
    def _thumb_sections(self) -> frozenset[int]:
        """Sections holding a ``$t`` mapping symbol: the only ones where a
        function symbol without the Thumb bit can still be Thumb code.  A
        vmlinux has 81,000 mapping symbols and four ``$t`` (in .rodata), so
        the mapping index is built for these sections alone."""
        c = self._cols
        if not self._maybe_thumb:
            return frozenset()
        # "$t" itself in the raw tables or by list.index (C speed, no result
        # per symbol); the "$t.<suffix>" form only if the string table has one.
        if self._dotted_t:
            found: Iterable[int] = compress(range(len(c.names)),
                                            map(str.startswith, c.names, repeat("$t")))
        else:
            return frozenset(c.shndx[i] for i in c.positions("$t") if self._is_entry(i))
        return frozenset(c.shndx[i] for i in found if self._is_mapping(i))

    def _is_mapping(self, i: int) -> bool:
        return is_mapping_symbol(self._cols.names[i]) and self._is_entry(i)

    def _is_entry(self, i: int) -> bool:
        """Whether symbol *i* names something: defined, not a section or file."""
        c = self._cols
        return c.shndx[i] != SHN_UNDEF and c.infos[i] & 0xF not in (STT_SECTION, STT_FILE)

    @cached_property
    def _mapping(self) -> dict[int, tuple[list[int], list[str]]]:
        """Section -> (addresses, classes) of its mapping symbols, sorted by
        address, for the sections in :attr:`_thumb_sections`."""
        c = self._cols
        wanted = self._thumb_sections
        mapping: dict[int, tuple[list[int], list[str]]] = {}
        for i in compress(range(len(c.names)), map(str.startswith, c.names, repeat("$"))):
            if c.shndx[i] not in wanted or not self._is_mapping(i):
                continue
            addrs, kinds = mapping.setdefault(c.shndx[i], ([], []))
            addrs.append(c.values[i])
            kinds.append(c.names[i][1])
        for addrs, kinds in mapping.values():
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs[:] = [addrs[i] for i in order]
            kinds[:] = [kinds[i] for i in order]
        return mapping

    @cached_property
    def _name_set(self) -> frozenset[str]:
        """Every name, for :meth:`named`'s later lookups (a lookup that
        finds nothing then costs nothing)."""
        return frozenset(self._cols.names)

    @classmethod
    def from_image(cls, image: ElfImage, *, dynamic: bool = False) -> SymbolTable:
        """The image's ``.symtab``, or with *dynamic* its ``.dynsym`` (what a
        stripped shared library still has: the symbols it exports)."""
        from armlp.elf.image import SHT_DYNSYM, SHT_STRTAB, SHT_SYMTAB
        kind = SHT_DYNSYM if dynamic else SHT_SYMTAB
        symtab = next((s for s in image.sections if s.type == kind), None)
        if symtab is None:
            raise ElfError(f"{image.path}: no {'dynamic ' if dynamic else ''}symbol table"
                           f"{'' if dynamic else ' (stripped?)'}")
        if symtab.entsize not in (0, _SYM.size):
            raise ElfError(f"{image.path}: symbol entry size {symtab.entsize}, "
                           f"expected {_SYM.size}")
        if not 0 < symtab.link < len(image.sections) or \
                image.sections[symtab.link].type != SHT_STRTAB:
            raise ElfError(f"{image.path}: symbol table has no string table")
        strsec = image.sections[symtab.link]
        # Views of the image's bytes, not copies (a vmlinux's tables are 6 MB)
        data = memoryview(image.data)
        strtab = data[strsec.offset:strsec.offset + strsec.size]
        raw = data[symtab.offset:symtab.offset + symtab.size - symtab.size % _SYM.size]
        names = [s.name for s in image.sections]
        words: Sequence[int] = raw.cast("I")
        halves: Sequence[int] = raw.cast("H")
        if sys.byteorder == "big":
            words, halves = array("I", raw), array("H", raw)
            words.byteswap()
            halves.byteswap()
        st_names = words[0::4]
        shndx = halves[7::8]
        if (st_names and max(st_names) >= len(strtab) and max(st_names)) or \
                any(len(names) <= s < 0xFF00 for s in set(shndx)):
            _raise_first_bad_symbol(image, bytes(strtab), st_names, shndx)
        cols = _Columns(words[1::4], words[2::4], bytes(raw[12::16]), shndx,
                        raw=_RawTables(image.data, strtab, strsec.offset, symtab.offset,
                                       len(raw) // _SYM.size, st_names))
        end = strsec.offset + strsec.size
        return cls((), names, columns=cols,
                   maybe_thumb=image.data.find(b"$t", strsec.offset, end) >= 0,
                   dotted_t=image.data.find(b"$t.", strsec.offset, end) >= 0)

    def mapping_at(self, shndx: int, value: int) -> str | None:
        """The mapping-symbol class (``a``, ``t`` or ``d``) in force at *value*
        (None outside :attr:`_thumb_sections`, where every function is ARM)."""
        entry = self._mapping.get(shndx)
        if entry is None:
            return None
        addrs, kinds = entry
        i = bisect.bisect_right(addrs, value) - 1
        return kinds[i] if i >= 0 else None

    def _sympos_table(self, wanted: set[str]) -> dict[int, int]:
        """Symbol index -> sympos for the symbols named in *wanted* (names
        that occur more than once), counted as :attr:`by_name` counts."""
        c = self._cols
        seen: dict[str, list[int]] = {}
        for i in compress(range(len(c.names)), map(wanted.__contains__, c.names)):
            name = c.names[i]
            if self._is_entry(i) and not is_mapping_symbol(name):
                seen.setdefault(name, []).append(i)
        return {i: pos for same in seen.values() if len(same) > 1
                for pos, i in enumerate(same, 1)}

    @cached_property
    def _function_index(self) -> tuple[list[int], list[int]]:
        """The defined function symbols, in symbol-table order: their
        indices, and their sections."""
        c = self._cols
        nsec = len(self._section_names)
        # Column by column (map runs at C speed).
        index = list(compress(range(len(c.infos)), c.infos.translate(_IS_FUNC)))
        shndx = _pick(c.shndx, index)
        defined = list(map(operator.and_, map(bool, shndx), map(nsec.__gt__, shndx)))
        if not all(defined):       # undefined, absolute or a special section
            index, shndx = list(compress(index, defined)), list(compress(shndx, defined))
        return index, shndx

    @cached_property
    def sympos(self) -> dict[int, int]:
        """Symbol index -> sympos of the function symbols whose sympos is
        not 0 (the names they share need every symbol's name)."""
        c = self._cols
        index, _ = self._function_index
        # A name no other symbol carries has sympos 0; only the names that
        # repeat among the functions or that another symbol also carries
        # need counting among the symbols by_name would hold.
        counts = Counter(_pick(c.names, index))
        repeated = {name for name, n in counts.items() if n > 1}
        repeated.update(set(counts).intersection(compress(c.names,
                                                          c.infos.translate(_NOT_FUNC))))
        return self._sympos_table(repeated) if repeated else {}

    def function_layout(self, *, by_address: bool = False) -> tuple[list[int], list[int]]:
        """The indices and sections of :meth:`functions`' symbols, in its
        order, without a name decoded."""
        index, shndx = self._function_index
        if not by_address:
            return list(index), list(shndx)
        key = _pick(self._cols.values, index)
        if sum(map((1).__and__, key)):
            key = list(map((~1).__and__, key))      # Thumb bits off
        order = sorted(range(len(index)), key=key.__getitem__)
        order.sort(key=shndx.__getitem__)
        return _pick(index, order), _pick(shndx, order)

    def functions(self, *, by_address: bool = False) -> list[FunctionSymbol]:
        """Every defined function symbol with its sympos, in symbol-table
        order, or with *by_address* by section and address (ties in
        symbol-table order).  Sorted before the records are made, so that
        they lie in memory in the order a scan walks them: a vmlinux's 45,000
        functions, visited out of the order they were made in, miss the
        processor's caches on each."""
        sympos = self.sympos
        return self.function_records(*self.function_layout(by_address=by_address), sympos)

    def function_records(self, index: list[int], shndx: list[int],
                         sympos: dict[int, int] | None) -> list[FunctionSymbol]:
        """The records of the function symbols at *index* (in *shndx*), with
        their sympos from *sympos*, or 0 with None (a part's records before
        the whole table's sympos is known: only these names are decoded)."""
        c = self._cols
        secnames = self._section_names
        names, values, sizes = c.names_of(index), _pick(c.values, index), \
            _pick(c.sizes, index)
        infos = _pick(c.infos, index)
        positions = list(map(sympos.get, index, repeat(0))) if sympos else [0] * len(index)
        thumb_bits = sum(map((1).__and__, values))
        addresses = list(map((~1).__and__, values)) if thumb_bits else values
        modes = list(map(_MODE_OF_BIT0.__getitem__, map((1).__and__, values))) \
            if thumb_bits else ["arm"] * len(index)
        thumb_secs = self._thumb_sections
        # Where a $t is, a function without the Thumb bit may still be Thumb.
        for k in compress(range(len(index)), map(thumb_secs.__contains__, shndx)) \
                if thumb_secs else ():
            if self.mapping_at(shndx[k], addresses[k]) == "t":
                modes[k] = "thumb"
        # tuple.__new__ makes each record at C speed (the class's own __new__
        # is a Python function: a fifth of this method on 20,000 functions).
        return list(map(tuple.__new__, repeat(FunctionSymbol), zip(
            names, positions, addresses, sizes, modes, shndx,
            map(secnames.__getitem__, shndx), map(_BIND_OF_INFO.__getitem__, infos), index,
            strict=True)))

    def named(self, name: str) -> list[Symbol]:
        """``by_name.get(name, [])``, without building :attr:`by_name` for a
        few lookups (``armlp scan`` makes four)."""
        if "by_name" in self.__dict__:
            return self.by_name.get(name, [])
        if not name or is_mapping_symbol(name):
            return []
        c = self._cols
        # The first few lookups search the raw tables (before the names are
        # decoded) or scan the names (list.index, C speed: 2 ms on a
        # vmlinux's 221,000); a set of the names costs four such scans, so
        # it is built for the fifth.
        self._lookups += 1
        if self._lookups <= SCANNED_LOOKUPS:
            found = c.positions(name)
        elif name in self._name_set:
            found = _positions(c.names, name)
        else:
            return []
        return [Symbol(i, name, c.values[i], c.sizes[i], c.infos[i] & 0xF, c.infos[i] >> 4,
                       c.shndx[i])
                for i in found if self._is_entry(i)]

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
