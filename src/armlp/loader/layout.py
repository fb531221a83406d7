"""Input objects and the layout of their allocated sections.

Like the kernel's ``layout_sections``, sections are grouped by what they
hold — code, read-only data, writable data, zero-filled data — in object and
section order, each at its ``sh_addralign``.  The veneer area follows the
code so veneers stay near their callers.  Sections given fixed addresses by
the caller are kept out of the contiguous region; every pair of sections is
checked for overlap.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from armlp.elf.image import SHF_WRITE, SHT_NOBITS, ElfImage, Section
from armlp.errors import ArmlpError, LoaderError
from armlp.loader.relocate import ArchInfo

SHT_ARM_ATTRIBUTES = 0x70000003
CODE, RODATA, DATA, BSS = 0, 2, 3, 4
VENEER_ALIGN = 8

#: ``allocator(size, align) -> address`` of fresh memory for the module.
Allocator = Callable[[int, int], int]


class ObjectFile:
    """One relocatable object of a load, with the name used in messages."""

    def __init__(self, source: str | Path | ElfImage) -> None:
        if isinstance(source, ElfImage):
            image = source
        else:
            try:
                image = ElfImage(source)
            except ArmlpError as exc:
                raise LoaderError(f"cannot load {source}: {exc}") from exc
        if not image.is_relocatable:
            raise LoaderError(f"cannot load {image.path}: {image.kind} file, "
                              f"not a relocatable object (.o)")
        self.image = image
        self.name = str(image.path)
        self.arch = read_arch(image)

    def __repr__(self) -> str:
        return f"ObjectFile({self.name!r})"

    def matches(self, name: str) -> bool:
        return name in (self.name, self.image.path.name)


@dataclass(frozen=True, slots=True)
class InputSection:
    obj: int
    section: Section
    kind: int
    align: int

    @property
    def key(self) -> tuple[int, int]:
        return self.obj, self.section.index


@dataclass(frozen=True, slots=True)
class Layout:
    addresses: dict[tuple[int, int], int]
    veneer_address: int
    region: tuple[int, int]


#: The most memory the sections of one load may take, ``.bss`` included.
#: A patch replaces a few functions (the kernel's ARM module area is
#: 16 MiB in all); a larger size in a section header is a corrupt file, and
#: refusing it here spares building gigabytes of zeros for its ``.bss``.
MAX_LOAD_SIZE = 64 << 20


def collect_sections(objects: Sequence[ObjectFile]) -> list[InputSection]:
    """Every allocated section of every object, classified."""
    out = []
    total = 0
    for i, obj in enumerate(objects):
        for sec in obj.image.sections:
            if not sec.is_alloc:
                continue
            total += sec.size
            if total > MAX_LOAD_SIZE:
                raise LoaderError(f"{obj.name}: section {sec.name} ({sec.size:#x} bytes) takes "
                                  f"the load past {MAX_LOAD_SIZE >> 20} MiB, more than a "
                                  f"patch may take")
            if sec.is_exec:
                kind = CODE
            elif sec.type == SHT_NOBITS:
                kind = BSS
            elif sec.flags & SHF_WRITE:
                kind = DATA
            else:
                kind = RODATA
            align = _section_align(obj, sec)
            out.append(InputSection(i, sec, kind, align))
    return out


def _section_align(obj: ObjectFile, sec: Section) -> int:
    align = sec.addralign or 1
    if align & (align - 1):
        raise LoaderError(f"{obj.name}: section {sec.name}: alignment {align} is not a "
                          f"power of two")
    return align


def _align(value: int, align: int) -> int:
    return (value + align - 1) & -align


def layout_sections(objects: Sequence[ObjectFile], inputs: Sequence[InputSection], *,
                    veneer_size: int, base: int | None, allocator: Allocator | None,
                    fixed: Mapping[tuple[int, int], int],
                    veneer_address: int | None) -> Layout:
    """Choose every section's address and the veneer area's."""
    addresses: dict[tuple[int, int], int] = {}
    offsets: dict[tuple[int, int], int] = {}
    cursor, region_align = 0, VENEER_ALIGN
    ven_off: int | None = None
    for kind in (CODE, RODATA, DATA, BSS):
        for inp in inputs:
            if inp.kind != kind:
                continue
            if inp.key in fixed:
                addr = fixed[inp.key]
                if addr % inp.align:
                    raise LoaderError(f"{objects[inp.obj].name}: section {inp.section.name}: "
                                      f"address {addr:#x} is not {inp.align}-aligned")
                addresses[inp.key] = addr
                continue
            cursor = _align(cursor, inp.align)
            region_align = max(region_align, inp.align)
            offsets[inp.key] = cursor
            cursor += inp.section.size
        if kind == CODE and veneer_size and veneer_address is None and offsets:
            cursor = _align(cursor, VENEER_ALIGN)
            ven_off = cursor
            cursor += veneer_size
    if veneer_size and veneer_address is None and ven_off is None:
        if base is not None or allocator is not None:   # only the veneers are laid out
            ven_off = 0
            cursor = veneer_size
        else:
            ends = [addresses[i.key] + i.section.size for i in inputs]
            veneer_address = _align(max(ends, default=0), VENEER_ALIGN)
    size = cursor
    start = 0
    if size:
        if base is not None:
            start = base
        elif allocator is not None:
            start = allocator(size, region_align)
        else:
            raise LoaderError("no address for the module: give a base address or an "
                              "allocator (or fixed addresses for every section)")
        if start % region_align:
            raise LoaderError(f"module base {start:#x} is not {region_align}-aligned")
        if start + size > 1 << 32 or start < 0:
            raise LoaderError(f"module of {size:#x} bytes at {start:#x} exceeds 32-bit memory")
    for key, off in offsets.items():
        addresses[key] = start + off
    if veneer_address is None:
        veneer_address = start + (ven_off or 0)
    check_overlaps(objects, inputs, addresses, veneer_address, veneer_size)
    return Layout(addresses, veneer_address, (start, size))


def check_overlaps(objects: Sequence[ObjectFile], inputs: Sequence[InputSection],
                   addresses: Mapping[tuple[int, int], int], veneer_address: int,
                   veneer_size: int) -> None:
    """Raise LoaderError naming the first two sections that overlap."""
    spans = [(addresses[i.key], addresses[i.key] + i.section.size,
              f"{objects[i.obj].name}:{i.section.name}") for i in inputs if i.section.size]
    if veneer_size:
        spans.append((veneer_address, veneer_address + veneer_size, "veneer area"))
    for start, end, label in spans:
        if end > 1 << 32:
            raise LoaderError(f"section {label} at {start:#x}+{end - start:#x} exceeds "
                              f"32-bit memory")
    spans.sort()
    for (s1, e1, l1), (s2, e2, l2) in itertools.pairwise(spans):
        if s2 < e1:
            raise LoaderError(f"sections overlap: {l1} at {s1:#x}-{e1:#x} and {l2} at "
                              f"{s2:#x}-{e2:#x}")


def read_arch(image: ElfImage) -> ArchInfo:
    """BLX and Thumb-2 availability from ``.ARM.attributes`` (Tag_CPU_arch,
    Tag_THUMB_ISA_use); ARMv5TE (Debian armel) when the section is missing."""
    sec = next((s for s in image.sections if s.type == SHT_ARM_ATTRIBUTES), None)
    if sec is None:
        return ArchInfo(blx=True, thumb2=False)
    tags = _file_attributes(image.section_data(sec))
    arch = tags.get(6, 4)
    thumb_isa = tags.get(9, 1)
    thumb2 = thumb_isa >= 2 or arch == 8 or arch >= 10
    return ArchInfo(blx=arch >= 3, thumb2=thumb2)


def _uleb(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf):
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return value, pos


def _file_attributes(buf: bytes) -> dict[int, int]:
    """Integer file-scope attributes of the ``aeabi`` subsection."""
    out: dict[int, int] = {}
    if not buf or buf[0] != 0x41:
        return out
    pos = 1
    while pos + 4 <= len(buf):
        (length,) = struct.unpack_from("<I", buf, pos)
        end = min(pos + max(length, 4), len(buf))
        name_end = buf.find(b"\0", pos + 4, end)
        if name_end < 0:
            break
        if buf[pos + 4:name_end] == b"aeabi":
            p = name_end + 1
            while p < end:
                tag, p2 = _uleb(buf, p)
                if p2 + 4 > end:
                    break
                (size,) = struct.unpack_from("<I", buf, p2)
                sub_end = min(p + size, end)
                if tag == 1:
                    q = p2 + 4
                    while q < sub_end:
                        attr, q = _uleb(buf, q)
                        if attr in (4, 5, 65, 67) or (attr > 32 and attr % 2):
                            z = buf.find(b"\0", q, sub_end)
                            q = sub_end if z < 0 else z + 1
                        elif attr == 32:
                            _, q = _uleb(buf, q)
                            z = buf.find(b"\0", q, sub_end)
                            q = sub_end if z < 0 else z + 1
                        else:
                            out[attr], q = _uleb(buf, q)
                p = max(sub_end, p + 1)
        pos = end
    return out
