"""Finding mcount sites: the ``bl __gnu_mcount_nc`` that ``-pg`` puts after
each function's prologue.

Three sources, as DESIGN.md §3 explains:

* relocatable objects: the ``R_ARM_CALL``/``R_ARM_PC24``/``R_ARM_THM_CALL``
  relocations against ``__gnu_mcount_nc`` (the ``bl`` word itself encodes -8);
* linked images: decoding the ``bl``/``blx`` near each function's entry;
* kernel images: the ``__mcount_loc`` table recordmcount leaves, which we
  cross-check against the decoded sites and report any disagreement.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterable, Sequence
from itertools import islice
from mmap import mmap
from operator import attrgetter
from typing import NamedTuple, cast

from armlp.arm.t32 import decode_t32_branch
from armlp.elf.image import SHT_REL, SHT_RELA, ElfImage, Section
from armlp.elf.symbols import FunctionSymbol

#: Names a ``-pg`` call site may target (EABI GCC uses the first).
MCOUNT_SYMBOLS = ("__gnu_mcount_nc",)
#: How far (bytes) after the entry a site may be and still count as the
#: function's entry hook.  GCC puts it right after the prologue; the largest
#: prologue of the corpus is 7 instructions, the seed's finder looks 12-24
#: bytes in.
SITE_WINDOW = 64

#: ``R_ARM_CALL``, ``R_ARM_PC24``, ``R_ARM_THM_CALL`` (numbers fixed by the ARM
#: ELF ABI; spelled out so that reading a linked image needs no pyelftools).
_CALL_RELOCS = frozenset({28, 1, 10})
#: Top byte of an ARM word -> 1 when the word is a ``BL`` (any condition but
#: 0xF, which is ``BLX``: it enters Thumb code, never the ARM mcount).
#: BL (any condition but 0xF), and BLX (immediate): how ARM code calls a
#: Thumb mcount (armhf's libc is Thumb-2).
_BL_TOP_BYTE = bytes(int(((b & 0x0F) == 0x0B and b >> 4 != 0xF) or b in (0xFA, 0xFB))
                     for b in range(256))


class McountLocCheck(NamedTuple):
    """How the ``__mcount_loc`` table agrees with the decoded sites (a
    NamedTuple: see :class:`~armlp.elf.image.Segment`)."""

    entries: int
    only_in_table: list[int]
    only_decoded: list[int]

    @property
    def agrees(self) -> bool:
        return not self.only_in_table and not self.only_decoded


#: ``R_ARM_JUMP_SLOT``: a PLT entry's GOT slot.
R_ARM_JUMP_SLOT = 22


def _plt_entry_slot(words: Sequence[int], i: int, addr: int) -> int | None:
    """The GOT slot an ARM PLT entry at word *i* (address *addr*) jumps
    through: ``add ip, pc, #a; add ip, ip, #b; ldr pc, [ip, #c]!``."""
    from armlp.arm.a32 import IP, PC, decode_add_sub_imm

    if i + 2 >= len(words):
        return None
    first, second, load = (decode_add_sub_imm(words[i]), decode_add_sub_imm(words[i + 1]),
                           words[i + 2])
    if (first is None or second is None or first[:3] != ("add", IP, PC)
            or second[:3] != ("add", IP, IP) or load & 0xFFFFF000 != 0xE5BCF000):
        return None
    return (addr + 8 + first[3] + second[3] + (load & 0xFFF)) & 0xFFFFFFFF


def plt_entries(image: ElfImage, names: Sequence[str]) -> set[int]:
    """Addresses of the ARM PLT entries that call *names* (found from the
    ``R_ARM_JUMP_SLOT`` relocations of ``.rel.plt`` and the entries' code)."""
    rel, plt = image.section(".rel.plt"), image.section(".plt")
    if rel is None or plt is None or rel.type != SHT_REL:
        return set()
    from elftools.elf.relocation import RelocationSection
    from elftools.elf.sections import SymbolTableSection

    sec = image.elffile.get_section(rel.index)
    dynsym = image.elffile.get_section(sec["sh_link"])
    if not isinstance(sec, RelocationSection) or not isinstance(dynsym, SymbolTableSection):
        return set()
    slots = {r["r_offset"] for r in sec.iter_relocations()
             if r["r_info"] & 0xFF == R_ARM_JUMP_SLOT
             and dynsym.get_symbol(r["r_info"] >> 8).name in names}
    data = image.section_data(plt)
    words = array("I", data[: len(data) - len(data) % 4])
    return {plt.addr + 4 * i for i in range(len(words))
            if _plt_entry_slot(words, i, plt.addr + 4 * i) in slots}


def mcount_addresses(image: ElfImage) -> set[int]:
    """Where a linked image's sites call mcount: its own ``__gnu_mcount_nc``
    (bit 0 set if Thumb, as armhf's libc is), or the PLT entries a
    dynamically linked program reaches it through."""
    found = {sym.value for name in MCOUNT_SYMBOLS for sym in image.symbols.named(name)
             if sym.defined and sym.value}
    return found or plt_entries(image, MCOUNT_SYMBOLS)


class SiteFinder:
    """Locates the mcount site of each function of one image."""

    def __init__(self, image: ElfImage) -> None:
        self.image = image
        self._reloc_sites: dict[int, set[int]] | None = None
        self.targets: set[int] = set()
        if image.is_relocatable:
            self._reloc_sites = self._sites_from_relocations()
        else:
            self.targets = {a & ~1 for a in mcount_addresses(image)}
        self._zeros: dict[int, bytes] = {}
        self._words: dict[int, memoryview] = {}
        self._bl_words: dict[int, bytes] = {}
        self._sorted_sites: dict[int, list[int]] = {}

    @property
    def has_mcount(self) -> bool:
        """Whether the image can have sites at all (defines or references mcount)."""
        if self._reloc_sites is not None:
            return any(self._reloc_sites.values())
        return bool(self.targets)

    def _sites_from_relocations(self) -> dict[int, set[int]]:
        sites: dict[int, set[int]] = {}
        img = self.image
        for rsec in img.sections:
            if rsec.type not in (SHT_REL, SHT_RELA) or not 0 < rsec.info < len(img.sections):
                continue
            target = img.sections[rsec.info]
            if not target.is_exec:
                continue
            from armlp.elf.relocs import read_relocations
            for rel in read_relocations(img, rsec):
                if rel.type in _CALL_RELOCS and rel.symbol.name in MCOUNT_SYMBOLS:
                    sites.setdefault(target.index, set()).add(rel.offset)
        return sites

    def raw(self, sec: Section) -> tuple[bytes | mmap, int]:
        """The buffer holding the section's bytes and where they start in it:
        the image's own bytes, not a copy (a vmlinux's ``.text`` is 10 MB)."""
        if sec.has_bytes:
            return self.image.data, sec.offset
        zeros = self._zeros.get(sec.index)
        if zeros is None:
            zeros = self._zeros[sec.index] = bytes(sec.size)
        return zeros, 0

    def words(self, sec: Section) -> memoryview:
        """The section's whole words, little-endian, as a view (cached)."""
        w = self._words.get(sec.index)
        if w is None:
            buf, start = self.raw(sec)
            w = memoryview(buf)[start:start + (sec.size & ~3)].cast("I")
            self._words[sec.index] = w
        return w

    def bl_words(self, sec: Section) -> bytes:
        """One byte per word of the section: 1 where the word is a ``BL``.

        ``bytes.find`` on it jumps from call to call at C speed, so a function
        costs one step per ``bl`` before its site (usually none), not one per
        instruction.
        """
        m = self._bl_words.get(sec.index)
        if m is None:
            buf, start = self.raw(sec)
            m = buf[start + 3:start + (sec.size & ~3):4].translate(_BL_TOP_BYTE)
            self._bl_words[sec.index] = m
        return m

    def _sites_in(self, shndx: int) -> list[int]:
        """The relocation sites of one section of a ``.o``, sorted."""
        offs = self._sorted_sites.get(shndx)
        if offs is None:
            assert self._reloc_sites is not None
            offs = sorted(self._reloc_sites.get(shndx, ()))
            self._sorted_sites[shndx] = offs
        return offs

    def find(self, fn: FunctionSymbol) -> int | None:
        """The site's address (section offset in a ``.o``), or None if the
        function has none anywhere in its body.  A function of size 0 is
        searched up to the image's next function, as :meth:`find_all` does."""
        if fn.size:
            return self.find_all([fn])[0]
        later = [f for f in self.image.symbols.functions()
                 if f.section == fn.section and f.address > fn.address]
        nearest = min(later, key=attrgetter("address"), default=None)
        return self.find_all([fn] if nearest is None else [fn, nearest])[0]

    def find_all(self, funcs: Sequence[FunctionSymbol], start: int = 0,
                 stop: int | None = None) -> list[int | None]:
        """:meth:`find` for each of ``funcs[start:stop]``, in one loop: the
        hot path of ``armlp scan``, so the common case (ARM code of a linked
        image) is written out here, with each section's arrays fetched once.

        A function of size 0 (an assembly label typed as a function) is
        searched up to the next function of the list, when that one starts
        later in the same section (*funcs* sorted by section and address, as
        scan sorts them): a site past it is the next function's, not its own
        (``__error_p`` of a vmlinux: a ``b .`` loop, then the next function).
        So a part of the list is given as a range, not a slice: the next
        function may lie past *stop*.
        """
        stop = len(funcs) if stop is None else stop
        if self._reloc_sites is not None:
            return [self._find_by_relocation(funcs[k], _window_end(funcs, k))
                    for k in range(start, stop)]
        out: list[int | None] = []
        append = out.append
        sections = self.image.sections
        targets = self.targets
        if not targets:
            return [None] * len(range(start, stop))
        cur = -1
        base = limit = 0
        key = -1
        words = memoryview(b"").cast("I")
        next_bl = b"".find
        # (records unpacked, not read field by field: 45,000 in a vmlinux)
        todo = islice(funcs, start, stop)
        for k, (_, _, addr, size, mode, section, _, _, _) in enumerate(todo, start):
            if section != cur:
                cur = section
                sec = sections[cur]
                base, limit = sec.addr, sec.addr + sec.size
                if not sec.has_bytes:
                    # NOBITS: zeros, so no call anywhere in it, and nothing
                    # to build to find that out (limit = base: all None below)
                    limit = base
                else:
                    words, next_bl = self.words(sec), self.bl_words(sec).find
                key = _bl_key(targets, base, limit)
            end = addr + size if size else _window_end(funcs, k)
            if end > limit:
                end = limit
            if not base <= addr < end:     # symbol outside its section (corrupt file)
                append(None)
                continue
            if mode != "arm":
                append(self._find_thumb(sections[cur], addr, end))
                continue
            site = None
            i = next_bl(1, (addr - base) >> 2, (end - base) >> 2)
            while i >= 0:
                w = words[i]
                if (w + i) & 0xFFFFFF == key and w >> 24 == 0xEB:
                    site = base + 4 * i
                    break
                # decode_branch inlined for a BL: the target of the word at i
                # (a BLX's H bit adds a halfword: bit 24 of 0xFB......)
                off = ((w & 0xFFFFFF) ^ 0x800000) - 0x800000
                h = 2 if w >> 24 == 0xFB else 0
                if ((base + 4 * i + 8 + (off << 2) + h) & 0xFFFFFFFF) in targets:
                    site = base + 4 * i
                    break
                i = next_bl(1, i + 1, (end - base) >> 2)
            append(site)
        return out

    def _find_by_relocation(self, fn: FunctionSymbol, end: int) -> int | None:
        """The first relocation site against mcount in *fn* (a ``.o``),
        before *end*."""
        offs = self._sites_in(fn.section)
        start = fn.address
        k = bisect.bisect_left(offs, start)
        return offs[k] if k < len(offs) and offs[k] < end else None

    def _find_thumb(self, sec: Section, start: int, end: int) -> int | None:
        """The first Thumb ``bl``/``blx`` to mcount in ``[start, end)``."""
        buf, at = self.raw(sec)
        base = sec.addr
        pos = start - base + at
        last = end - base + at - 4
        while pos <= last:
            hw1 = buf[pos] | buf[pos + 1] << 8
            if (hw1 & 0xF800) == 0xF000:
                br = decode_t32_branch(struct.unpack_from("<I", buf, pos)[0], base + pos - at)
                if br is not None and br.links and (br.target & ~1) in self.targets:
                    return base + pos - at
                pos += 4
            elif (hw1 >> 11) in (0b11101, 0b11111):
                pos += 4
            else:
                pos += 2
        return None


def _bl_key(targets: set[int], base: int, limit: int) -> int:
    """The key of a call to mcount in the section ``[base, limit)``: an
    unconditional ``BL`` (``0xEB......``) at word *i* of the section, word
    *w*, calls the one target exactly when ``(w + i) & 0xFFFFFF`` is the key
    (its offset field counts down as the word's address counts up), which
    spares decoding it; other calls to the target are decoded as usual.
    -1, which no word gives, when there are several targets, the target is
    not word-aligned, or some word of the section cannot reach it (a ``BL``
    reaches 32 MB each way): the offset field would then also match a call
    64 MB away."""
    if len(targets) != 1:
        return -1
    (target,) = targets
    if target & 3 or not limit + 4 - (1 << 25) <= target <= base + 4 + (1 << 25):
        return -1
    return ((target - base - 8) >> 2) & 0xFF_FFFF


#: How many functions after a function of size 0 :func:`_window_end` looks
#: at (aliases at its address included).
LOOKAHEAD = 7


def _window_end(funcs: Sequence[FunctionSymbol], k: int) -> int:
    """Where the search for the site of ``funcs[k]`` ends: its end, or for a
    function of size 0 :data:`SITE_WINDOW` bytes in, or the start of the
    first function after it in *funcs* that begins above it in the same
    section, if that is nearer (aliases at the same address are skipped)."""
    fn = funcs[k]
    if fn.size:
        return fn.address + fn.size
    end = fn.address + SITE_WINDOW
    for nxt in funcs[k + 1:k + 1 + LOOKAHEAD]:
        if nxt.section != fn.section or nxt.address >= end:
            break
        if nxt.address > fn.address:
            return nxt.address
    return end


def check_mcount_loc(image: ElfImage, sites: Iterable[int | None]) -> McountLocCheck | None:
    """Compare the ``__mcount_loc`` table (if the image has one) with the
    decoded *sites* (None: a function without one)."""
    rng = image.mcount_loc_range()
    if rng is None:
        return None
    addr, size = rng
    sec = image.section_at(addr)
    if sec is not None and not sec.has_bytes:
        # zeros (a corrupt image): one entry, 0, however many; not built
        table: set[int] = {0} if size >= 4 else set()
    else:
        raw = image.read(addr, size) if size else b""
        table = set(array("I", raw[: len(raw) - len(raw) % 4]))
    found = set(sites)              # at C speed, then without the None
    found.discard(None)
    decoded = cast("set[int]", found)
    return McountLocCheck(len(table), sorted(table - decoded), sorted(decoded - table))
