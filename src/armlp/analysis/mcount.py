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

import struct
from array import array
from dataclasses import dataclass, field

from armlp.arm.a32 import decode_branch
from armlp.arm.t32 import decode_t32_branch
from armlp.elf.image import SHT_REL, SHT_RELA, ElfImage, Section
from armlp.elf.relocs import reloc_type
from armlp.elf.symbols import FunctionSymbol

#: Names a ``-pg`` call site may target (EABI GCC uses the first).
MCOUNT_SYMBOLS = ("__gnu_mcount_nc",)
#: How far (bytes) after the entry a site may be and still count as the
#: function's entry hook.  GCC puts it right after the prologue; the largest
#: prologue of the corpus is 7 instructions, the seed's finder looks 12-24
#: bytes in.
SITE_WINDOW = 64

_CALL_RELOCS = frozenset(reloc_type(n) for n in ("CALL", "PC24", "THM_CALL"))


@dataclass
class McountLocCheck:
    """How the ``__mcount_loc`` table agrees with the decoded sites."""

    entries: int
    only_in_table: list[int] = field(default_factory=list)
    only_decoded: list[int] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.only_in_table and not self.only_decoded


class SiteFinder:
    """Locates the mcount site of each function of one image."""

    def __init__(self, image: ElfImage) -> None:
        self.image = image
        self._reloc_sites: dict[int, set[int]] | None = None
        self.targets: set[int] = set()
        if image.is_relocatable:
            self._reloc_sites = self._sites_from_relocations()
        else:
            for name in MCOUNT_SYMBOLS:
                for sym in image.symbols.by_name.get(name, []):
                    self.targets.add(sym.value & ~1)
        self._words: dict[int, array[int]] = {}

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

    def words(self, sec: Section) -> array[int]:
        """The section's bytes as little-endian words (cached)."""
        w = self._words.get(sec.index)
        if w is None:
            raw = self.image.section_data(sec)
            w = array("I", raw[: len(raw) - len(raw) % 4])
            self._words[sec.index] = w
        return w

    def find(self, fn: FunctionSymbol) -> int | None:
        """The site's address (section offset in a ``.o``), or None if the
        function has none anywhere in its body."""
        sec = self.image.sections[fn.section]
        start = fn.address
        end = start + fn.size if fn.size else start + SITE_WINDOW
        if self._reloc_sites is not None:
            offs = self._reloc_sites.get(fn.section, ())
            found = [o for o in offs if start <= o < end]
            return min(found) if found else None
        base = sec.addr
        end = min(end, base + sec.size)
        if fn.mode == "arm":
            words = self.words(sec)
            targets = self.targets
            i = (start - base) >> 2
            stop = (end - base) >> 2
            while i < stop:
                w = words[i]
                if (w & 0x0F000000) == 0x0B000000:
                    br = decode_branch(w, base + 4 * i)
                    if br is not None and br.target in targets:
                        return base + 4 * i
                i += 1
            return None
        data = self.image.section_data(sec)
        pos = start - base
        last = end - base - 4
        while pos <= last:
            hw1 = data[pos] | data[pos + 1] << 8
            if (hw1 & 0xF800) == 0xF000:
                br = decode_t32_branch(struct.unpack_from("<I", data, pos)[0], base + pos)
                if br is not None and br.links and (br.target & ~1) in self.targets:
                    return base + pos
                pos += 4
            elif (hw1 >> 11) in (0b11101, 0b11111):
                pos += 4
            else:
                pos += 2
        return None


def check_mcount_loc(image: ElfImage, decoded: set[int]) -> McountLocCheck | None:
    """Compare the ``__mcount_loc`` table (if the image has one) with *decoded*."""
    rng = image.mcount_loc_range()
    if rng is None:
        return None
    addr, size = rng
    raw = image.read(addr, size) if size else b""
    table = set(array("I", raw[: len(raw) - len(raw) % 4]))
    return McountLocCheck(len(table), sorted(table - decoded), sorted(decoded - table))
