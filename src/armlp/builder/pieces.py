"""An object file cut into the pieces ``armlp build`` compares: each
function and each data object, its bytes with every relocated word zeroed,
and what each relocation refers to, named so two builds can be compared
(kpatch's ``create-diff-object`` correlation, for ARM objects).

A relocation's target is named by the symbol that covers the place it
points to (a section symbol plus offset becomes ``name + offset``: GCC's
section anchors and literal pools refer to data that way), by its name when
it is undefined, and by its bytes when no symbol covers it (a string
literal's text, so a moved string is not a change but a changed one is).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from pathlib import Path

from armlp.elf.image import SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS, ElfImage, Section
from armlp.elf.relocs import Relocation, reloc_type
from armlp.elf.symbols import SHN_UNDEF, STB_LOCAL, STT_FILE, STT_FUNC, STT_OBJECT, Symbol
from armlp.loader.relocate import ARM_BRANCH_TYPES, THUMB_BRANCH_TYPES, rel_addend

SHF_STRINGS = 0x20

#: Place-relative data references (PIC code's literal pools): the addend
#: holds the distance to the instruction that adds the pc, not an offset in
#: the target, so the target is only known as a section.
PC_RELATIVE = frozenset(reloc_type(n) for n in (
    "REL32", "MOVW_PREL_NC", "MOVT_PREL", "THM_MOVW_PREL_NC", "THM_MOVT_PREL"))

#: What a relocation refers to, comparable across builds.
RefKey = tuple[str, str | bytes, int]


def target_offset(rtype: int, addend: int) -> int:
    """Where a REL relocation with in-place *addend* points, relative to its
    symbol: a branch's addend holds the pc bias."""
    if rtype in ARM_BRANCH_TYPES:
        return addend + 8
    if rtype in THUMB_BRANCH_TYPES:
        return addend + 4
    return addend


def start_of(sym: Symbol) -> int:
    """Where *sym* starts in its section (bit 0 of a function is Thumb's)."""
    return sym.value & ~1 if sym.type == STT_FUNC else sym.value


@dataclass(slots=True)
class Piece:
    """One function or data object of an object file."""

    name: str
    kind: str                  # "func" or "data"
    sym: Symbol
    section: Section
    raw: bytes                 # its bytes (empty for .bss)
    code: bytes                # the same with every relocated word zeroed
    refs: tuple[tuple[int, int, RefKey], ...]   # (offset in piece, type, target)

    @property
    def local(self) -> bool:
        return self.sym.bind == STB_LOCAL

    @property
    def writable(self) -> bool:
        """Whether the program may write it (RELRO data, written only by
        the dynamic linker's relocations, is read-only to the program)."""
        return bool(self.section.flags & SHF_WRITE) and \
            not self.section.name.startswith(".data.rel.ro")

    @property
    def size(self) -> int:
        return self.sym.size

    def same(self, other: Piece) -> bool:
        return (self.size == other.size and self.code == other.code
                and self.refs == other.refs and self.writable == other.writable)


class ObjectPieces:
    """The functions and data of one relocatable object (one C file)."""

    def __init__(self, path: Path, image: ElfImage | None = None) -> None:
        self.path = path
        self.image = image if image is not None else ElfImage(path)
        syms = self.image.symbols.symbols
        self.file = next((s.name for s in syms if s.type == STT_FILE), path.stem + ".c")
        self.pieces: dict[str, Piece] = {}
        spans: dict[int, list[tuple[int, int, str]]] = {}
        chosen = [s for s in syms if s.type in (STT_FUNC, STT_OBJECT) and s.name
                  and s.shndx != SHN_UNDEF and s.shndx < len(self.image.sections)]
        for s in chosen:
            spans.setdefault(s.shndx, []).append((start_of(s), start_of(s) + s.size, s.name))
        self._spans = {k: sorted(v) for k, v in spans.items()}
        self._starts = {k: [a for a, _, _ in v] for k, v in self._spans.items()}
        relocs: dict[int, list[Relocation]] = {}
        for sec in self.image.sections:
            if sec.index in self._spans:
                relocs[sec.index] = sorted(self.image.relocations_for(sec),
                                           key=lambda r: r.offset)
        self.relocs = relocs
        offsets = {k: [r.offset for r in v] for k, v in relocs.items()}
        data = {k: self.image.section_data(self.image.sections[k])
                if self.image.sections[k].type != SHT_NOBITS else b"" for k in self._spans}
        for s in chosen:
            sec = self.image.sections[s.shndx]
            self.pieces[s.name] = self._piece(s, sec, data[s.shndx], relocs[s.shndx],
                                              offsets[s.shndx])

    def _span(self, shndx: int, offset: int) -> tuple[int, str] | None:
        starts = self._starts.get(shndx)
        if not starts:
            return None
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return None
        start, end, name = self._spans[shndx][i]
        return (start, name) if offset < max(end, start + 1) else None

    def covering(self, shndx: int, offset: int) -> Piece | None:
        """The function or data object of section *shndx* at *offset*."""
        span = self._span(shndx, offset)
        return self.pieces[span[1]] if span else None

    def target(self, rel: Relocation, word: int) -> tuple[Symbol, int]:
        """``(symbol, offset in its section)`` a relocation points at."""
        sym = rel.symbol
        return sym, start_of(sym) + target_offset(rel.type, rel_addend(rel.type, word))

    def key(self, rel: Relocation, word: int) -> RefKey:
        sym, off = self.target(rel, word)
        if sym.shndx == SHN_UNDEF:
            return ("ext", sym.name, off)
        if sym.shndx >= len(self.image.sections):
            return ("abs", sym.name, off)
        if rel.type in PC_RELATIVE:
            return ("prel", self.image.sections[sym.shndx].name, off)
        span = self._span(sym.shndx, off)
        if span is not None:
            return ("sym", span[1], off - span[0])
        sec = self.image.sections[sym.shndx]
        if sec.type == SHT_NOBITS:
            return ("anon", sec.name, off)
        blob = self.image.section_data(sec)
        if sec.flags & SHF_STRINGS:
            end = blob.find(b"\0", off)
            return ("str", blob[off:end if end >= 0 else len(blob)], 0)
        # Up to the next symbol of the section, or its end.
        starts = self._starts.get(sym.shndx, [])
        i = bisect.bisect_right(starts, off)
        end = starts[i] if i < len(starts) else len(blob)
        return ("anon", blob[off:end], 0)

    def _piece(self, sym: Symbol, sec: Section, blob: bytes,
               relocs: list[Relocation], offsets: list[int]) -> Piece:
        lo = start_of(sym)
        hi = lo + sym.size
        raw = blob[lo:hi] if blob else b""
        code = bytearray(raw)
        refs = []
        i = bisect.bisect_left(offsets, lo)
        for rel in relocs[i:]:
            if rel.offset >= hi:
                break
            word = struct.unpack_from("<I", blob, rel.offset)[0] \
                if blob and rel.offset + 4 <= len(blob) else 0
            at = rel.offset - lo
            code[at:at + 4] = bytes(min(4, len(code) - at))
            refs.append((at, rel.type, self.key(rel, word)))
        kind = "func" if sym.type == STT_FUNC or sec.flags & SHF_EXECINSTR else "data"
        return Piece(sym.name, kind, sym, sec, raw, bytes(code), tuple(refs))

    def functions(self) -> list[Piece]:
        return [p for p in self.pieces.values() if p.kind == "func"]
