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
from armlp.errors import ArmlpError, MachineError
from armlp.inputs import InputError
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


#: The libraries one call found, by file (path, inode, mtime, size) and
#: where it is mapped: the file's ELF header and its image moved there;
#: None for a file that is no library.
ImageCache = dict[tuple[str, int, int, int, int], tuple[bytes, ElfImage] | None]


def loaded_libraries(machine: Machine, program: ElfImage,
                     cache: ImageCache | None = None) -> list[LoadedLibrary]:
    """Every shared library mapped in the program behind *machine*, by
    address, each once (a library whose file is gone, or changed since it was
    mapped, is left out: its code is not the file's).

    *cache*, kept by a caller that asks again and again (armlp follows
    ld.so, armlp.control.libraries), keeps the images of the last call: a
    program that loads and unloads a plugin has libc and ld.so where they
    were, and reading and moving libc's tables at every change was most of
    the time ld.so waited for armlp.  It keeps only what this call found."""
    own = os.path.realpath(program.path)
    out: list[LoadedLibrary] = []
    seen: set[str] = set()
    found: ImageCache = {}
    for region in sorted(machine.regions(), key=lambda r: r.start):
        path = region.path
        if region.offset or not path.startswith("/") or path in seen or \
                os.path.realpath(path) == own:
            continue
        seen.add(path)
        try:
            st = os.stat(path)
        except OSError:
            continue
        key = (path, st.st_ino, st.st_mtime_ns, st.st_size, region.start)
        if cache is not None and key in cache:
            lib = found[key] = cache[key]
        else:
            try:
                lib = found[key] = _library_image(path, region.start)
            except InputError:
                continue        # not readable now: asked again next time
        if lib is None:
            continue
        head, image = lib
        try:
            if machine.read(region.start, len(head)) != head:
                continue
        except MachineError:
            continue            # unmapped meanwhile (the program's threads run)
        out.append(LoadedLibrary(image.soname or os.path.basename(path), path, image))
    if cache is not None:
        cache.clear()
        cache.update(found)
    return out


def _library_image(path: str, start: int) -> tuple[bytes, ElfImage] | None:
    """The ELF header of the library in file *path*, and the library moved
    to *start*; None if it is none (a locale file, a font...)."""
    try:
        image = ElfImage(path)
        if image.type != ET_DYN:
            return None
        first = min(s.vaddr for s in image.segments if s.type == PT_LOAD) & ~0xFFF
        return image.data[:52], image.rebased((start - first) & 0xFFFFFFFF)
    except InputError:
        raise
    except (ArmlpError, ValueError):
        return None
