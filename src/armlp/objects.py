"""The objects of a running program a patch can change: the program itself
and the shared libraries mapped in it — the kernel's ``klp_object``s, where
vmlinux is the program and modules are the libraries.

A library is found where qemu mapped its file (``/proc/PID/maps`` of a
local qemu, translated to guest addresses): the mapping of its first page
gives its load bias, and its file, read and moved by that bias
(:meth:`~armlp.elf.image.ElfImage.rebased`), gives its functions at the
addresses the program runs them.  The file is the one qemu opened (the
sysroot's, or ``LD_LIBRARY_PATH``'s), so there is no path to translate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from armlp.elf.image import ET_DYN, PT_LOAD, ElfImage
from armlp.errors import ArmlpError
from armlp.machine.base import Machine

#: The name of the main program's object (the kernel's NULL object name:
#: vmlinux); libraries go by their soname.
PROGRAM = "program"


@dataclass(frozen=True)
class LoadedLibrary:
    """A shared library mapped in the program."""

    soname: str
    path: str
    #: Its ELF image at the addresses it is mapped at.
    image: ElfImage


def loaded_libraries(machine: Machine, program: ElfImage) -> list[LoadedLibrary]:
    """Every shared library mapped in the program behind *machine*, by
    address, each once (a library whose file is gone, or changed since it was
    mapped, is left out: its code is not the file's)."""
    own = os.path.realpath(program.path)
    out: list[LoadedLibrary] = []
    seen: set[str] = set()
    for region in sorted(machine.regions(), key=lambda r: r.start):
        path = region.path
        if region.offset or not path.startswith("/") or path in seen or \
                os.path.realpath(path) == own:
            continue
        seen.add(path)
        try:
            image = ElfImage(path)
            if image.type != ET_DYN:
                continue
            head = image.data[:52]
            if machine.read(region.start, len(head)) != head:
                continue
            first = min(s.vaddr for s in image.segments if s.type == PT_LOAD) & ~0xFFF
            image = image.rebased((region.start - first) & 0xFFFFFFFF)
        except (ArmlpError, ValueError):
            continue            # not an ELF library (a locale file, a font...)
        out.append(LoadedLibrary(image.soname or os.path.basename(path), path, image))
    return out
