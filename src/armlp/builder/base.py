"""The base proof: the tree rebuilt as it is reproduces the running binary.

kpatch-build trusts that the source it is given built the kernel it patches;
``armlp build`` checks it.  Every function of every recorded object that the
binary contains (a static found under its own file's ``STT_FILE`` symbol, a
global by name) must have the binary's size and bytes, relocated words
aside.  Otherwise the tree, its flags or the compiler are not the ones the
program came from, and a patch built from them could be wrong in ways no
later check would see.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from armlp.builder.pieces import ObjectPieces, Piece
from armlp.elf.image import ElfImage
from armlp.elf.relocs import reloc_type
from armlp.elf.symbols import (
    SHN_UNDEF,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_OBJECT,
    Symbol,
)
from armlp.errors import ArmlpError, BuildError
from armlp.loader.relocate import ARM_BRANCH_TYPES, rel_addend
from armlp.objects import PROGRAM


class ProgramIndex:
    """The binary's functions and data by (file, name) for statics and by
    name for globals, with the sympos a patch names them by."""

    def __init__(self, image: ElfImage) -> None:
        self.image = image
        #: The patch object it is: the program, or a library by soname.
        self.object = (image.soname or image.path.name) if image.kind == "shared" \
            else PROGRAM
        syms = image.symbols.symbols
        if not any(s.type == STT_FUNC for s in syms):
            raise BuildError(f"{image.path}: has no symbol table (stripped?): armlp build "
                             f"needs the program's symbols")
        self.files: set[str] = set()
        self.locals: dict[tuple[str, str], list[Symbol]] = {}
        self.local_names: dict[str, list[Symbol]] = {}
        self.globals: dict[str, Symbol] = {}
        current = ""
        for s in syms:
            if s.type == STT_FILE:
                current = s.name
                self.files.add(s.name)
            elif s.type in (STT_FUNC, STT_OBJECT) and s.name and s.shndx != SHN_UNDEF:
                if s.bind == STB_LOCAL:
                    self.locals.setdefault((current, s.name), []).append(s)
                    self.local_names.setdefault(s.name, []).append(s)
                else:
                    self.globals.setdefault(s.name, s)

    def candidates(self, file: str, piece: Piece) -> list[Symbol]:
        """The binary's symbols *piece* of the object built from *file* may
        be (none: the program does not have it)."""
        if piece.local:
            return self.locals.get((file, piece.name), [])
        glob = self.globals.get(piece.name)
        if glob is not None:
            # A weak definition another file's strong one overrode is not
            # the program's.
            weak_lost = piece.sym.bind == STB_WEAK and glob.bind == STB_GLOBAL
            return [] if weak_lost else [glob]
        # A library's hidden global is a local of the linked file.
        return self.local_names.get(piece.name, [])

    def find(self, file: str, piece: Piece) -> Symbol | None:
        """The binary's symbol for *piece* of the object built from *file*
        (None when it is not there or cannot be told apart)."""
        same = self.candidates(file, piece)
        if len(same) == 1:
            return same[0]
        if len(same) > 1 and piece.kind == "func":
            # Two files of one name (x/util.c, y/util.c): the one whose
            # bytes these are.
            match = [s for s in same if s.size == piece.size and
                     _masked(self.image, s, piece) == piece.code]
            if len(match) == 1:
                return match[0]
        return None

    def sympos(self, sym: Symbol) -> int:
        return self.image.symbols.sympos_of(sym)

    def belongs(self, obj: ObjectPieces) -> bool:
        """Whether *obj* was linked into the binary: its file is among the
        binary's, and some function or datum of it is there."""
        return obj.file in self.files and any(self.find(obj.file, p) is not None
                                              for p in obj.pieces.values())


#: The relocations whose target the base proof follows into the binary.
_CHECKED = ARM_BRANCH_TYPES | {reloc_type("ABS32"), reloc_type("TARGET1")}


@dataclass(slots=True)
class Mismatch:
    """A function the rebuilt original does not reproduce."""

    name: str
    file: str
    why: str


def _masked(image: ElfImage, sym: Symbol, piece: Piece) -> bytes:
    got = bytearray(image.read(sym.value & ~1, sym.size))
    for at, _, _ in piece.refs:
        got[at:at + 4] = bytes(min(4, len(got) - at))
    return bytes(got)


def _refs_disagree(index: ProgramIndex, obj: ObjectPieces, p: Piece, sym: Symbol) -> str:
    """Why the binary's relocated words do not point where the object's
    relocations do ('' if they agree): the same bytes calling another
    function or printing another string are not the same function.  Checked
    for branches and absolute words whose target is a static of the same
    file (a function, a datum) or a string; globals may be reached through
    aliases and PLTs and are left to the bytes around them."""
    image = index.image
    start = sym.value & ~1
    for at, rtype, key in p.refs:
        if rtype not in _CHECKED or at + 4 > p.size:
            continue
        word = int.from_bytes(image.read(start + at, 4), "little")
        # A branch's "addend" in the linked word is its offset from pc.
        dest = start + at + 8 + rel_addend(rtype, word) if rtype in ARM_BRANCH_TYPES else word
        if key[0] == "sym" and isinstance(key[1], str):
            target = obj.pieces.get(key[1])
            if target is None or not target.local:
                continue            # a global: a shared object calls it through its PLT
            tsym = index.find(obj.file, target)
            if tsym is None:
                continue
            func = tsym.type == STT_FUNC
            if (dest & ~1 if func else dest) != (tsym.value & ~1 if func else tsym.value) \
                    + key[2]:
                return f"its word at +{at:#x} points at {dest:#x}, not at {key[1]}+{key[2]:#x}"
        elif key[0] == "str" and isinstance(key[1], bytes) and rtype not in ARM_BRANCH_TYPES:
            try:
                there = image.read(dest, len(key[1]) + 1)
            except ArmlpError:
                return f"its word at +{at:#x} points at {dest:#x}, outside the binary"
            if there != key[1] + b"\0":
                return f"its word at +{at:#x} points at another string ({there[:24]!r})"
    return ""


def prove_base(index: ProgramIndex, objects: Iterable[ObjectPieces]) -> tuple[int, list[Mismatch]]:
    """``(functions proven, mismatches)`` of the original build against the binary."""
    proven = 0
    bad: list[Mismatch] = []
    for obj in objects:
        for p in obj.functions():
            sym = index.find(obj.file, p)
            if sym is None:
                continue
            if sym.size != p.size:
                bad.append(Mismatch(p.name, obj.file, f"{p.size} bytes rebuilt, {sym.size} in "
                                                      f"the binary"))
                continue
            try:
                got = _masked(index.image, sym, p)
            except ArmlpError:          # not in the binary's loaded image
                bad.append(Mismatch(p.name, obj.file, "its bytes are not in the binary"))
                continue
            if got == p.code:
                why = _refs_disagree(index, obj, p, sym)
                if why:
                    bad.append(Mismatch(p.name, obj.file, why))
                    continue
            if got != p.code:
                at = next(i for i in range(0, len(got), 4) if got[i:i + 4] != p.code[i:i + 4])
                word = struct.unpack_from("<I", got.ljust(at + 4, b"\0"), at)[0]
                mine = struct.unpack_from("<I", p.code.ljust(at + 4, b"\0"), at)[0]
                bad.append(Mismatch(p.name, obj.file, f"differs at +{at:#x} (binary "
                                                      f"{word:08x}, rebuilt {mine:08x})"))
                continue
            proven += 1
    return proven, bad
