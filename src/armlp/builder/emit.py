"""Writing the patch object: the functions a diff changes, what they need
that the program lacks, and a descriptor per function they replace.

The code comes from a third compile of each changed C file, with the
program's flags plus ``-ffunction-sections -fdata-sections
-fno-section-anchors -fno-pie -fno-pic -fno-common``: one section per
function and per datum, every datum reached through its own symbol (an
anchor would reach the program's data by offsets from the patch's own
layout) and nothing a GOT would have to serve.  Which functions are in the
patch was decided on the program's own code (:mod:`armlp.builder.compare`);
this build only supplies equivalent code for them.

Each relocation of a copied section is sent, by what it points at, to the
copied function or datum, to the program's symbol of that name
(``.klp.sym.program.<name>,<sympos>``, the kernel's naming, so a static
is the one of the right file; ``.klp.sym.<soname>...`` in a library), to a
copied read-only section (string literals) or, when undefined, to the same
name, for the loader to resolve against the program and its libraries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from armlp.builder.base import ProgramIndex
from armlp.builder.elfwrite import SHT_ARM_ATTRIBUTES, ObjectWriter
from armlp.builder.pieces import ObjectPieces, Piece, start_of
from armlp.elf.image import SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS, Section
from armlp.elf.relocs import Relocation, reloc_type
from armlp.elf.symbols import (
    SHN_UNDEF,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_NOTYPE,
    STT_SECTION,
    is_mapping_symbol,
)
from armlp.errors import BuildError
from armlp.livepatch.module import DESC
from armlp.loader.relocate import rel_addend, with_addend
from armlp.objects import PROGRAM

SHF_TLS = 0x400

#: Flags of the compile that supplies the patch's code.
EMIT_FLAGS = ("-ffunction-sections", "-fdata-sections", "-fno-section-anchors", "-fno-pie",
              "-fno-pic", "-fno-common")
R_ARM_ABS32 = reloc_type("ABS32")
SHT_ARM_EXIDX = 0x70000001
#: A kernel object's tables whose entries point into its functions, by entry
#: size (ARM's: ``.long insn, fixup``; BUG's ``.word addr, file; .hword line,
#: flags``; ``.word code, target, key``; mcount sites).  The entries of the
#: functions a kernel patch copies travel with them: the module loader
#: registers each (fixups, BUG sites, static keys, ftrace sites), as for the
#: code they came with in vmlinux.
KERNEL_TABLES = {"__ex_table": 8, "__bug_table": 12, "__jump_table": 12, "__mcount_loc": 4}
#: What a kernel patch calls its replacements, for the module's tables.
KERNEL_NEW = "armlp_new_{}"


@dataclass(slots=True)
class Included:
    """A function (or datum) the patch carries, and why."""

    file: str
    name: str
    kind: str                   # "func" or "data"
    reason: str
    replaces: tuple[str, int] | None = None     # (name, sympos) in the program


class PatchEmitter:
    """Collects sections from the changed files' builds, then writes the patch."""

    def __init__(self, index: ProgramIndex, shared: set[str] | None = None, *,
                 kernel: bool = False) -> None:
        self.index = index
        #: A kernel patch: every symbol the patch's code needs from vmlinux is
        #: reached by address (most are not exported), and the kernel's tables
        #: of the copied code come along.
        self.kernel = kernel
        self.writer = ObjectWriter()
        self.included: list[Included] = []
        self._externs: dict[str, int] = {}
        #: Changed global constants: the patch's copy of each, once emitted;
        #: other files' references to the name bind to it when the patch is
        #: written (files may read each other's: no order serves them all).
        self.shared: dict[str, int | None] = dict.fromkeys(shared or ())
        self._descs: list[tuple[str, int, int, int]] = []   # old, sympos, shndx, value
        self._attributes: bytes | None = None

    # -- one C file ----------------------------------------------------------

    def add_object(self, emission: ObjectPieces, orig: ObjectPieces | None,
                   funcs: dict[str, str], copies: dict[str, str],
                   renames: dict[str, str] | None = None) -> None:
        """Copy *funcs* (name -> reason) of *emission* and what they need;
        *copies* is the data (name -> reason) that travels rather than being
        the program's."""
        _ObjectCopy(self, emission, orig, dict(funcs), dict(copies), renames or {}).run()
        if self._attributes is None:
            attrs = next((s for s in emission.image.sections if s.type == SHT_ARM_ATTRIBUTES),
                         None)
            if attrs is not None:
                self._attributes = emission.image.section_data(attrs)
                self.writer.flags = emission.image.flags

    def extern(self, name: str, weak: bool = False) -> int:
        if name not in self._externs:
            self._externs[name] = self.writer.add_symbol(
                name, 0, 0, STT_NOTYPE, STB_WEAK if weak else STB_GLOBAL, SHN_UNDEF)
        return self._externs[name]

    def undefined(self, name: str, weak: bool) -> int:
        """A symbol the copied code uses but its file does not define: by
        name, for the loader to resolve against the program and its
        libraries; in a kernel patch, vmlinux's symbol by address (checked
        against kallsyms when the module loads)."""
        if self.kernel and name not in self.shared:
            found = self.program_global(name)
            if found is None:
                raise BuildError(f"{name}: the patch's code uses it, and "
                                 f"{self.index.image.path.name} has no global of that name")
            return self.program_extern(found)
        return self.extern(name, weak)

    def program_extern(self, sym: tuple[str, int]) -> int:
        """The program's symbol (name, sympos) as the patch names it:
        ``.klp.sym.<object>.<name>,<sympos>`` (the kernel's naming)."""
        return self.extern(f".klp.sym.{self.index.object}.{sym[0]},{sym[1]}")

    def program_global(self, name: str) -> tuple[str, int] | None:
        sym = self.index.globals.get(name)
        return None if sym is None else (sym.name, self.index.sympos(sym))

    def program_symbol(self, file: str, piece: Piece) -> tuple[str, int] | None:
        sym = self.index.find(file, piece)
        return None if sym is None else (sym.name, self.index.sympos(sym))

    def describe(self, old: tuple[str, int], shndx: int, value: int) -> None:
        self._descs.append((old[0], old[1], shndx, value))

    # -- the whole patch -----------------------------------------------------

    def write(self, path: Path, name: str, build_id: str | None) -> None:
        w = self.writer
        copies = {self._externs[n]: at for n, at in self.shared.items()
                  if at is not None and n in self._externs}
        for sec in w.sections:
            sec.relocs = [(off, rtype, copies.get(sym, sym)) for off, rtype, sym in sec.relocs]
        if self.kernel:
            # The module's tables, written in C, name each replacement by a
            # global of its own; nothing else of armlp's goes into a kernel.
            for i, (_, _, shndx, value) in enumerate(self._descs):
                w.add_symbol(KERNEL_NEW.format(i), value, 0, STT_FUNC, STB_GLOBAL, shndx)
            w.write(path)
            return
        strings = bytearray()

        def string(text: str) -> int:
            at = len(strings)
            strings.extend(text.encode() + b"\0")
            return at
        obj = None if self.index.object == PROGRAM else string(self.index.object)
        offsets = [string(old) for old, _, _, _ in self._descs]
        str_sec = w.add_section(".armlp.strtab", bytes(strings), flags=SHF_ALLOC, align=1)
        table = b"".join(DESC.pack(0, pos, 0, 0, 0, 0) for _, pos, _, _ in self._descs)
        funcs_sec = w.add_section(".armlp.funcs", table, flags=SHF_ALLOC, align=4)
        blob = bytearray(table)
        strsym = w.section_symbol(str_sec)
        for i, ((_, _, shndx, value), off) in enumerate(zip(self._descs, offsets, strict=True)):
            at = i * DESC.size
            struct.pack_into("<I", blob, at, off)             # old_name: in .armlp.strtab
            w.add_reloc(funcs_sec, at, R_ARM_ABS32, strsym)
            if obj is not None:                               # object: a library's soname
                struct.pack_into("<I", blob, at + 8, obj)
                w.add_reloc(funcs_sec, at + 8, R_ARM_ABS32, strsym)
            struct.pack_into("<I", blob, at + 12, value)      # new_func: in its section
            w.add_reloc(funcs_sec, at + 12, R_ARM_ABS32, w.section_symbol(shndx))
        w.sections[funcs_sec - 1].data = bytes(blob)
        w.add_section(".armlp.name", name.encode() + b"\0", flags=SHF_ALLOC, align=1)
        if build_id:
            w.add_section(".armlp.target", build_id.encode() + b"\0", flags=SHF_ALLOC, align=1)
        if self._attributes is not None:
            w.add_section(".ARM.attributes", self._attributes, flags=0, align=1,
                          type=SHT_ARM_ATTRIBUTES)
        w.write(path)


class _ObjectCopy:
    """One C file's share of the patch: a worklist over sections."""

    def __init__(self, out: PatchEmitter, emission: ObjectPieces, orig: ObjectPieces | None,
                 funcs: dict[str, str], copies: dict[str, str],
                 renames: dict[str, str]) -> None:
        self.out = out
        #: Function-local statics this build numbers differently (its name ->
        #: the original's).
        self.renames = renames
        self.obj = emission
        self.orig = orig
        self.funcs = funcs
        self.copies = copies
        self.sections: dict[int, int] = {}      # emission index -> patch index
        self.pending: list[Section] = []

    def run(self) -> None:
        for name in list(self.funcs):
            self._piece_section(self._piece(name, "function"))
        # New global data: another file of the patch may use it.
        for name in list(self.copies):
            if not self.obj.pieces[name].local:
                self._piece_section(self._piece(name, "datum"))
        tabled: set[int] = set()
        while self.pending:
            while self.pending:
                self._relocate(self.pending.pop())
            if self.out.kernel:
                tabled |= self._kernel_tables(tabled)
        for name, reason in self.funcs.items():
            p = self.obj.pieces[name]
            old = self._in_program(name)
            if old is None and ".cold" not in name and self.orig is not None and \
                    name in self.orig.pieces and not reason.startswith(("new", "used by")):
                raise BuildError(f"{self.obj.file}: {name} changed, but armlp cannot tell "
                                 f"which function of the program it is (not there, or "
                                 f"several of that name and file)")
            replaces = None if old is None or ".cold" in name else old
            if replaces is not None and reason == "new":
                reason = "new in this file, replaces the program's function of its name"
            self.out.included.append(Included(self.obj.file, name, "func", reason, replaces))
            if replaces is not None:
                # The symbol's value: a Thumb function's keeps its interworking bit.
                self.out.describe(replaces, self.sections[p.section.index], p.sym.value)
        for name, reason in self.copies.items():
            if self.obj.pieces[name].section.index in self.sections:
                self.out.included.append(Included(self.obj.file, name, "data", reason))

    def _kernel_tables(self, done: set[int]) -> set[int]:
        """Copy the table entries and unwind sections of the code sections
        copied since the last call (not in *done*); returns those sections."""
        code = {i for i in self.sections
                if self.obj.image.sections[i].flags & SHF_EXECINSTR} - done
        if not code:
            return code
        w = self.out.writer
        for sec in self.obj.image.sections:
            if sec.type == SHT_ARM_EXIDX and sec.link in code:
                self._section(sec)
                w.sections[self.sections[sec.index] - 1].link = self.sections[sec.link]
            size = KERNEL_TABLES.get(sec.name)
            if size is None:
                continue
            relocs = sorted(self.obj.image.relocations_for(sec), key=lambda r: r.offset)
            wanted = sorted({r.offset - r.offset % size for r in relocs
                             if r.offset % size == 0 and r.symbol.shndx in code})
            if not wanted:
                continue
            raw = self.obj.image.section_data(sec)
            data = bytearray(b"".join(raw[at:at + size] for at in wanted))
            moved: list[tuple[int, int, int]] = []
            for n, at in enumerate(wanted):
                for rel in relocs:
                    if not at <= rel.offset < at + size:
                        continue
                    off = n * size + rel.offset - at
                    moved.append((off, rel.type, self._moved(sec, rel, data, off)))
            out_idx = w.add_section(sec.name, bytes(data), flags=sec.flags, align=sec.addralign)
            for off, rtype, symidx in moved:
                w.add_reloc(out_idx, off, rtype, symidx)
        return code

    def _piece(self, name: str, what: str) -> Piece:
        p = self.obj.pieces.get(name)
        if p is None:
            raise BuildError(f"{self.obj.file}: {what} {name} is not in the patch's build of "
                             f"the file (inlined or renamed there)")
        return p

    def _in_program(self, name: str) -> tuple[str, int] | None:
        """The program's symbol for *name* of this file: the original
        build's, or, for a global the original file did not define as such
        (a common symbol, a function or variable moved from another file),
        the program's global of that name."""
        old = self.orig.pieces.get(self.renames.get(name, name)) \
            if self.orig is not None else None
        if old is not None:
            return self.out.program_symbol(self.obj.file, old)
        p = self.obj.pieces.get(name)
        if p is not None and not p.local:
            return self.out.program_global(name)
        return None

    def _piece_section(self, p: Piece) -> int:
        return self._section(p.section)

    def _section(self, sec: Section) -> int:
        done = self.sections.get(sec.index)
        if done is not None:
            return done
        w = self.out.writer
        data = b"" if sec.type == SHT_NOBITS else self.obj.image.section_data(sec)
        idx = w.add_section(sec.name, data, flags=sec.flags, align=sec.addralign,
                            type=sec.type, size=sec.size)
        self.sections[sec.index] = idx
        for s in self.obj.image.symbols.symbols:
            if s.shndx == sec.index and s.name and s.type != STT_SECTION and \
                    (s.name in self.obj.pieces or is_mapping_symbol(s.name)):
                # New globals stay global: another file of the patch may call them.
                new = self.orig is None or \
                    self.renames.get(s.name, s.name) not in self.orig.pieces
                bind = s.bind if new and s.bind != STB_LOCAL and not \
                    is_mapping_symbol(s.name) else STB_LOCAL
                at = w.add_symbol(s.name, s.value, s.size, s.type, bind, idx)
                if s.name in self.out.shared and s.name in self.copies:
                    self.out.shared[s.name] = at
        self.pending.append(sec)
        return idx

    def _relocate(self, sec: Section) -> None:
        out_idx = self.sections[sec.index]
        target = self.out.writer.sections[out_idx - 1]
        data = bytearray(target.data)
        for rel in self.obj.image.relocations_for(sec):
            self.out.writer.add_reloc(out_idx, rel.offset, rel.type,
                                      self._moved(sec, rel, data, rel.offset))
        target.data = bytes(data)

    def _moved(self, sec: Section, rel: Relocation, data: bytearray, at: int) -> int:
        """The patch symbol of relocation *rel* of *sec*, whose word is at
        *at* of *data*: the word's addend changed there if the symbol did."""
        word = struct.unpack_from("<I", data, at)[0] if at + 4 <= len(data) else 0
        symidx, delta = self._target(sec, rel, word)
        if delta:
            new = with_addend(rel.type, word, rel_addend(rel.type, word) + delta)
            if new is None:
                raise BuildError(f"{self.obj.file}: {sec.name}: relocation {rel.type_name} "
                                 f"at +{rel.offset:#x} cannot be moved to another symbol")
            struct.pack_into("<I", data, at, new)
        return symidx

    def _target(self, sec: Section, rel: Relocation, word: int) -> tuple[int, int]:
        """``(patch symbol, addend change)`` for one relocation."""
        sym = rel.symbol
        sections = self.obj.image.sections
        holder = self.obj.covering(sec.index, rel.offset)
        user = holder.name if holder else sec.name
        if rel.type_name.startswith("R_ARM_TLS") or (
                SHN_UNDEF < sym.shndx < len(sections) and sections[sym.shndx].flags & SHF_TLS):
            raise BuildError(f"{self.obj.file}: {user} uses a thread-local variable "
                             f"({sym.name or sections[sym.shndx].name}): armlp's loader does "
                             f"not place TLS")
        if sym.shndx == SHN_UNDEF:
            return self.out.undefined(sym.name, sym.bind == STB_WEAK), 0
        if sym.shndx >= len(sections):
            raise BuildError(f"{self.obj.file}: {sec.name} refers to {sym.name or '?'}, a "
                             f"special (absolute or common) symbol")
        base = start_of(sym) if sym.type != STT_SECTION else 0
        _, off = self.obj.target(rel, word)
        p = self.obj.covering(sym.shndx, off)
        if p is None:
            tsec = sections[sym.shndx]
            if tsec.flags & SHF_WRITE:
                raise BuildError(f"{self.obj.file}: {sec.name} refers to writable data with "
                                 f"no symbol in {tsec.name}")
            return self.out.writer.section_symbol(self._section(tsec)), base
        start = start_of(p.sym)
        if ".cold" in p.name and p.name not in self.funcs:
            # A cold part jumps back into the middle of its function: it goes
            # wherever the function goes.
            self.funcs[p.name] = "cold part of a function in the patch"
        if p.name in self.funcs or p.name in self.copies:
            return self.out.writer.section_symbol(self._piece_section(p)), base
        old = self._in_program(p.name)
        if old is not None:
            return self.out.program_extern(old), \
                base - start
        # Not in the program (never linked, or inlined everywhere there).
        if p.kind == "data" and p.writable and self.orig is not None and \
                self.renames.get(p.name, p.name) in self.orig.pieces:
            raise BuildError(f"{self.obj.file}: {user} uses {p.name}, which the original "
                             f"build has but armlp cannot find in the program (its state "
                             f"cannot be copied into the patch)")
        why = f"new, used by {user}" if self.orig is None or \
            self.renames.get(p.name, p.name) not in self.orig.pieces \
            else f"used by {user}, not in the program"
        (self.funcs if p.kind == "func" else self.copies)[p.name] = why
        return self.out.writer.section_symbol(self._piece_section(p)), base
