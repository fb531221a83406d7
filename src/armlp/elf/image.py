"""An ARM ELF image: validated header, sections, bytes by address, build-id.

The header and section table are checked against the file size before
pyelftools sees them, so a truncated or corrupt file gives one
:class:`~armlp.errors.ElfError` naming the file and the problem, never a
traceback from deep inside a parser.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from armlp.errors import ElfError
from armlp.inputs import read_input

if TYPE_CHECKING:
    # pyelftools is imported on first use (relocations): it takes longer to
    # import than ``armlp scan`` takes to read a 20,000-function program.
    from elftools.elf.elffile import ELFFile

    from armlp.elf.relocs import Relocation
    from armlp.elf.symbols import SymbolTable

EM_ARM = 40
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 1, 2, 3, 4, 8, 9
SHT_NOTE, SHT_DYNSYM, SHT_DYNAMIC = 7, 11, 6
DT_NULL, DT_SONAME, DT_DEBUG = 0, 14, 21
#: st_info type of a thread-local symbol, whose value is an offset, not an address.
STT_TLS = 6
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
EF_ARM_BE8 = 0x00800000

_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
_SHDR = struct.Struct("<IIIIIIIIII")
_PHDR = struct.Struct("<IIIIIIII")
PT_LOAD, PT_INTERP, PT_PHDR = 1, 3, 6
PF_X, PF_W, PF_R = 1, 2, 4
_NHDR = struct.Struct("<III")
NT_GNU_BUILD_ID = 3


class Segment(NamedTuple):
    """One program header (``PT_LOAD``, ``PT_INTERP``...), checked against the file.

    The records ``armlp scan`` reads are NamedTuples, not dataclasses: the
    command then does not import :mod:`dataclasses` (and :mod:`inspect`),
    13 ms of its start-up, a tenth of scanning a 20,000-function program."""

    type: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int
    align: int


def program_headers(raw: bytes, count: int, entsize: int) -> list[Segment]:
    """*count* program headers of *entsize* bytes each from *raw* (a file's
    table, or the one a running process maps: see AT_PHDR)."""
    if entsize < _PHDR.size or len(raw) < count * entsize:
        raise ElfError(f"program header table of {len(raw)} bytes for {count} entries of "
                       f"{entsize}")
    return [Segment(*(f for j, f in enumerate(_PHDR.unpack_from(raw, i * entsize)) if j != 3))
            for i in range(count)]


class Section(NamedTuple):
    """One section header, with its name resolved (a NamedTuple: see
    :class:`Segment`)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int
    addralign: int = 1

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def has_bytes(self) -> bool:
        return self.type != SHT_NOBITS


#: Files smaller than this are read whole: skipping their DWARF saves less
#: than looking for it costs.
SKIP_DWARF_FROM = 16 << 20


def _dwarf(fd: int, size: int) -> list[tuple[int, int]]:
    """The file ranges of the ``.debug_*`` sections of the ELF file open on
    *fd*: armlp never reads DWARF, and in a vmlinux it is 90 % of the file.
    Anything odd about the headers gives ``[]``: the file is then read whole
    and :class:`ElfImage` reports what is wrong."""
    if size < SKIP_DWARF_FROM:
        return []
    head = os.pread(fd, _EHDR.size, 0)
    if len(head) < _EHDR.size or head[:6] != b"\x7fELF\x01\x01":
        return []
    *_, shoff, _, _, _, _, shentsize, shnum, shstrndx = _EHDR.unpack(head)
    if shentsize != _SHDR.size or not shstrndx < shnum or shoff + shnum * _SHDR.size > size:
        return []
    table = os.pread(fd, shnum * _SHDR.size, shoff)
    if len(table) < shnum * _SHDR.size:
        return []
    headers = list(_SHDR.iter_unpack(table))
    names_at, names_size = headers[shstrndx][4:6]
    if names_at + names_size > size:
        return []
    names = os.pread(fd, names_size, names_at)
    return [(h[4], h[4] + h[5]) for h in headers
            if h[1] == SHT_PROGBITS and not h[2] & SHF_ALLOC and h[4] + h[5] <= size
            and names.startswith(b".debug_", h[0])]


class ElfImage:
    """A 32-bit little-endian ARM ELF file, read whole into memory.

    ``kind`` is ``relocatable`` (``.o``), ``executable``, ``pie`` (a
    position-independent executable), ``shared`` (a library) or
    ``vmlinux`` (an executable with the kernel's ``__mcount_loc`` table or
    ``linux_banner``).
    """

    def __init__(self, path: str | Path, data: bytes | mmap.mmap | None = None) -> None:
        self.path = Path(path)
        if data is None:
            data = read_input(self.path, "ELF file", skip=_dwarf)
        self.data = data
        self._parse_header()
        self.sections = self._parse_sections()
        self._by_name: dict[str, Section] = {}
        for s in self.sections:
            self._by_name.setdefault(s.name, s)

    # -- validation ---------------------------------------------------------

    def _fail(self, problem: str) -> ElfError:
        return ElfError(f"{self.path}: {problem}")

    def _parse_header(self) -> None:
        d = self.data
        if len(d) < 4 or d[:4] != b"\x7fELF":
            raise self._fail("not an ELF file (bad magic)")
        if len(d) < 6:
            raise self._fail(f"truncated ELF header ({len(d)} of 52 bytes)")
        if d[4] == 2:
            raise self._fail("64-bit ELF; armlp reads 32-bit ARM only")
        if d[4] != 1:
            raise self._fail(f"unknown ELF class {d[4]}")
        if d[5] == 2:
            raise self._fail("big-endian ELF; armlp reads little-endian ARM only")
        if d[5] != 1:
            raise self._fail(f"unknown ELF data encoding {d[5]}")
        if len(d) < _EHDR.size:
            raise self._fail(f"truncated ELF header ({len(d)} of {_EHDR.size} bytes)")
        (_, e_type, e_machine, _, e_entry, _, e_shoff, e_flags, _, _, _,
         e_shentsize, e_shnum, e_shstrndx) = _EHDR.unpack_from(d)
        if e_machine != EM_ARM:
            raise self._fail(f"machine {e_machine} ({_machine_name(e_machine)}), not ARM")
        if e_flags & EF_ARM_BE8:
            raise self._fail("BE8 (big-endian code) ELF; armlp reads little-endian ARM only")
        if e_type not in (ET_REL, ET_EXEC, ET_DYN):
            raise self._fail(f"ELF type {e_type} is not a relocatable, executable or shared file")
        if e_shoff == 0 or e_shnum == 0:
            raise self._fail("no section header table")
        if e_shentsize != _SHDR.size:
            raise self._fail(f"section header size {e_shentsize}, expected {_SHDR.size}")
        end = e_shoff + e_shnum * e_shentsize
        if end > len(d):
            raise self._fail(f"truncated section header table (needs {end} bytes, "
                             f"file has {len(d)})")
        if e_shstrndx >= e_shnum:
            raise self._fail(f"section name table index {e_shstrndx} out of range")
        self.type: int = e_type
        self.entry: int = e_entry
        self.phoff, self.phentsize, self.phnum = struct.unpack_from("<I", d, 28)[0], \
            *struct.unpack_from("<HH", d, 42)
        self.flags: int = e_flags
        self._shoff, self._shnum, self._shstrndx = e_shoff, e_shnum, e_shstrndx

    def _parse_sections(self) -> list[Section]:
        d = self.data
        raw = [_SHDR.unpack_from(d, self._shoff + i * _SHDR.size) for i in range(self._shnum)]
        for i, h in enumerate(raw):
            if h[1] != SHT_NOBITS and h[1] != 0 and h[4] + h[5] > len(d):
                raise self._fail(f"section {i} extends past the end of the file "
                                 f"({h[4]:#x}+{h[5]:#x} > {len(d):#x})")
        shstr = raw[self._shstrndx]
        if shstr[1] != SHT_STRTAB:
            raise self._fail(f"section name table (section {self._shstrndx}) is not a string table")
        names = d[shstr[4]:shstr[4] + shstr[5]]
        out = []
        for i, h in enumerate(raw):
            if h[0] >= max(len(names), 1) and i:
                raise self._fail(f"section {i} name offset {h[0]:#x} outside the name table")
            out.append(Section(i, cstr(names, h[0]), h[1], h[2], h[3], h[4], h[5], h[6], h[7],
                               h[9], h[8]))
        return out

    @cached_property
    def segments(self) -> list[Segment]:
        """The program headers, each checked against the file (ElfError)."""
        d = self.data
        if self.phnum == 0:
            return []
        if self.phentsize != _PHDR.size:
            raise self._fail(f"program header size {self.phentsize}, expected {_PHDR.size}")
        if self.phoff + self.phnum * _PHDR.size > len(d):
            raise self._fail(f"truncated program header table ({self.phnum} entries at "
                             f"{self.phoff:#x}, file has {len(d)} bytes)")
        out = program_headers(d[self.phoff:self.phoff + self.phnum * _PHDR.size],
                              self.phnum, _PHDR.size)
        for i, s in enumerate(out):
            if s.type in (PT_LOAD, PT_INTERP) and (s.offset + s.filesz > len(d)
                                                   or s.filesz > s.memsz
                                                   or s.vaddr + s.memsz > 1 << 32):
                raise self._fail(f"program header {i}: {s.filesz:#x} bytes at {s.offset:#x} "
                                 f"for {s.memsz:#x} at {s.vaddr:#x} do not fit the file or "
                                 f"32 bits")
        return out

    def segment_data(self, seg: Segment) -> bytes:
        return self.data[seg.offset:seg.offset + seg.filesz]

    @cached_property
    def interpreter(self) -> str | None:
        """The dynamic linker a dynamically linked program names
        (``PT_INTERP``: ``/lib/ld-linux.so.3``); None for a static one."""
        seg = next((s for s in self.segments if s.type == PT_INTERP), None)
        if seg is None:
            return None
        return self.segment_data(seg).split(b"\0", 1)[0].decode("ascii", "replace")

    # -- queries ------------------------------------------------------------

    @property
    def kind(self) -> str:
        if self.type == ET_REL:
            return "relocatable"
        if self.type == ET_DYN:
            # A position-independent executable names its dynamic linker.
            return "pie" if self.interpreter is not None else "shared"
        if self.mcount_loc_range() is not None or self.symbols.named("linux_banner"):
            return "vmlinux"
        return "executable"

    @property
    def is_relocatable(self) -> bool:
        return self.type == ET_REL

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def section_data(self, sec: Section) -> bytes:
        if not sec.has_bytes:
            return bytes(sec.size)
        return self.data[sec.offset:sec.offset + sec.size]

    def rebased(self, bias: int) -> ElfImage:
        """This position-independent image as loaded *bias* bytes from its
        link addresses: the same file with every address of its headers and
        tables moved (the entry, the program headers, the allocated
        sections, the symbols defined in them, the relocations' offsets), so
        that all of armlp, pyelftools' view included, sees the addresses the
        running program has.  Code and data bytes are unchanged: a PIE's
        code is position independent, and the words ld.so relocates in its
        data are not read by armlp."""
        if not bias:
            return self
        if self.type != ET_DYN:
            raise self._fail("not position independent: it cannot be moved")
        d = bytearray(self.data)
        word = struct.Struct("<I")

        def move(off: int) -> None:
            word.pack_into(d, off, (word.unpack_from(d, off)[0] + bias) & 0xFFFFFFFF)

        move(24)                                        # e_entry
        for i in range(len(self.segments)):
            move(self.phoff + i * _PHDR.size + 8)       # p_vaddr
            move(self.phoff + i * _PHDR.size + 12)      # p_paddr
        alloc = {s.index for s in self.sections if s.is_alloc}
        for sec in self.sections:
            if sec.index in alloc:
                move(self._shoff + sec.index * _SHDR.size + 12)     # sh_addr
            if sec.type in (SHT_SYMTAB, SHT_DYNSYM):
                for off in range(sec.offset, sec.offset + sec.size - 15, 16):
                    if d[off + 12] & 0xF != STT_TLS and \
                            int.from_bytes(d[off + 14:off + 16], "little") in alloc:
                        move(off + 4)                   # st_value
            elif sec.type in (SHT_REL, SHT_RELA):
                step = 8 if sec.type == SHT_REL else 12
                for off in range(sec.offset, sec.offset + sec.size - step + 1, step):
                    move(off)                           # r_offset
        return ElfImage(self.path, bytes(d))

    def read(self, address: int, size: int) -> bytes:
        """Bytes at a virtual address of a linked image (from an allocated section)."""
        for sec in self._alloc_sections:
            if sec.addr <= address and address + size <= sec.addr + sec.size:
                off = address - sec.addr
                if not sec.has_bytes:
                    return bytes(size)
                return self.data[sec.offset + off:sec.offset + off + size]
        raise self._fail(f"address {address:#x}+{size} is not inside one allocated section")

    def section_at(self, address: int) -> Section | None:
        for sec in self._alloc_sections:
            if sec.addr <= address < sec.addr + sec.size:
                return sec
        return None

    @cached_property
    def _alloc_sections(self) -> list[Section]:
        return [s for s in self.sections if s.is_alloc and s.size]

    @cached_property
    def symbols(self) -> SymbolTable:
        from armlp.elf.symbols import SymbolTable
        return SymbolTable.from_image(self)

    @cached_property
    def exported(self) -> dict[str, int]:
        """What a shared object gives other objects: its defined, global or
        weak functions and data by name (``.dynsym``; bit 0 set for Thumb
        functions), as the dynamic linker resolves them."""
        from armlp.elf.symbols import STB_LOCAL, STT_FUNC, STT_OBJECT, SymbolTable
        table = SymbolTable.from_image(self, dynamic=True)
        return {s.name: s.value for s in table.symbols
                if s.defined and s.bind != STB_LOCAL and s.type in (STT_FUNC, STT_OBJECT)}

    @cached_property
    def elffile(self) -> ELFFile:
        """The pyelftools view of the same bytes (relocations)."""
        from elftools.elf.elffile import ELFFile
        return ELFFile(io.BytesIO(self.data))

    @cached_property
    def build_id(self) -> str | None:
        """The GNU build-id (hex) from the first note that carries one.

        Notes are walked as pyelftools walks them (name and descriptor padded
        to 4 bytes; type 3 is ``NT_GNU_BUILD_ID``), without importing it.
        """
        for sec in self.sections:
            if sec.type != SHT_NOTE:
                continue
            data = self.section_data(sec)
            pos = 0
            while pos < len(data):
                if pos + _NHDR.size > len(data):
                    raise self._fail(f"section {sec.name}: bad note: header at {pos:#x} "
                                     f"runs past the section end")
                namesz, descsz, ntype = _NHDR.unpack_from(data, pos)
                desc = pos + _NHDR.size + _align4(namesz)
                if desc + descsz > len(data):
                    raise self._fail(f"section {sec.name}: bad note: note at {pos:#x} "
                                     f"runs past the section end")
                if ntype == NT_GNU_BUILD_ID:
                    return data[desc:desc + descsz].hex()
                pos = desc + _align4(descsz)
        return None

    @cached_property
    def soname(self) -> str | None:
        """A shared object's ``DT_SONAME`` (``libz.so.1``): the name a patch
        gives the object it changes (``ARMLP_OBJECT``), as ld.so knows it."""
        dyn = next((s for s in self.sections if s.type == SHT_DYNAMIC), None)
        if dyn is None or not 0 < dyn.link < len(self.sections):
            return None
        strtab = self.section_data(self.sections[dyn.link])
        value = dynamic_entries(self.section_data(dyn)).get(DT_SONAME)
        return cstr(strtab, value) if value is not None and value < len(strtab) else None

    def relocations_for(self, target: Section) -> list[Relocation]:
        """All relocations (REL and RELA) applying to section *target*."""
        from armlp.elf.relocs import read_relocations
        out: list[Relocation] = []
        for sec in self._relocation_sections.get(target.index, ()):
            out.extend(read_relocations(self, sec))
        return out

    @cached_property
    def _relocation_sections(self) -> dict[int, list[Section]]:
        """Relocation sections by the section they apply to (an object built
        with -ffunction-sections has one per function)."""
        out: dict[int, list[Section]] = {}
        for sec in self.sections:
            if sec.type in (SHT_REL, SHT_RELA):
                out.setdefault(sec.info, []).append(sec)
        return out

    def mcount_loc_range(self) -> tuple[int, int] | None:
        """``(address, size)`` of the kernel's ``__mcount_loc`` table in a linked image."""
        return self._mcount_loc_range

    @cached_property
    def _mcount_loc_range(self) -> tuple[int, int] | None:
        sec = self.section("__mcount_loc")
        if sec is not None and not self.is_relocatable:
            return sec.addr, sec.size
        start = self.symbols.named("__start_mcount_loc")
        stop = self.symbols.named("__stop_mcount_loc")
        if start and stop:
            return start[0].value, stop[0].value - start[0].value
        return None


def _align4(n: int) -> int:
    return (n + 3) & ~3


def dynamic_entries(raw: bytes) -> dict[int, int]:
    """Tag -> value of a dynamic section's entries (the first of each tag),
    up to ``DT_NULL``: from the file, or as a running program holds them."""
    out: dict[int, int] = {}
    for tag, value in struct.iter_unpack("<II", raw[:len(raw) & ~7]):
        if tag == DT_NULL:
            break
        out.setdefault(tag, value)
    return out


def cstr(buf: bytes, off: int) -> str:
    """The NUL-terminated string at *off* of *buf* (a string table), decoded
    as UTF-8 with bad bytes replaced."""
    end = buf.find(b"\0", off)
    if end < 0:
        end = len(buf)
    return buf[off:end].decode("utf-8", "replace")


_MACHINES = {3: "x86", 62: "x86-64", 183: "AArch64", 8: "MIPS", 20: "PowerPC", 243: "RISC-V",
             21: "PowerPC64", 22: "S/390", 2: "SPARC"}


def _machine_name(m: int) -> str:
    return _MACHINES.get(m, "unknown")
