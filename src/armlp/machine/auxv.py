"""A process's auxiliary vector, through a GDB stub: where the program's
headers are, its entry point, its interpreter's base, and so its load bias.

The kernel (or qemu-user) hands these to a new process; ``qXfer:auxv:read``
hands them to armlp.  A position-independent program is mapped wherever the
loader chose: its bias is where its program headers are (``AT_PHDR``) less
where it says they are (``PT_PHDR``).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from armlp.elf.image import PF_R, PF_W, PF_X, PT_LOAD, PT_PHDR, Segment, program_headers
from armlp.errors import MachineError
from armlp.machine.base import Region

if TYPE_CHECKING:
    from armlp.machine.rsp import RspConnection

#: Auxiliary vector keys: the ones armlp reads through a stub, and the ones
#: the emulator's loader writes for a new program (armlp.machine.exec_loader).
AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_ENTRY = 3, 4, 5, 6, 7, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP = 11, 12, 13, 14, 15, 16
AT_CLKTCK, AT_SECURE, AT_RANDOM = 17, 23, 25


def read_auxv(conn: RspConnection) -> dict[int, int]:
    """The program's auxiliary vector (``qXfer:auxv:read``), with the
    program headers' address, entry size and count checked present."""
    if conn.features.get("qXfer:auxv:read") != "+":
        raise MachineError("the stub does not serve the auxiliary vector "
                           "(qXfer:auxv:read): pass the program's segments")
    auxv = conn.read_xfer("auxv", "")
    vals: dict[int, int] = {}
    for i in range(0, len(auxv) - 7, 8):
        k, v = struct.unpack_from("<II", auxv, i)
        if k == 0:
            break
        vals[k] = v
    vals.setdefault(AT_PHENT, 32)
    if AT_PHDR not in vals or AT_PHNUM not in vals or vals[AT_PHENT] < 32:
        raise MachineError("the auxiliary vector has no program headers (AT_PHDR)")
    return vals


def program_bias(conn: RspConnection, auxv: dict[int, int]) -> int:
    """The program's load bias: where its program headers are (``AT_PHDR``)
    less where it says they are (``PT_PHDR``), as the dynamic linker
    computes it.  0 for a program without ``PT_PHDR`` (static, not PIE)."""
    for p in program_headers_at(conn, auxv[AT_PHDR], auxv[AT_PHNUM], auxv[AT_PHENT]):
        if p.type == PT_PHDR:
            return (auxv[AT_PHDR] - p.vaddr) & 0xFFFFFFFF
    return 0


def program_headers_at(conn: RspConnection, phdr: int, phnum: int, phent: int) -> list[Segment]:
    return program_headers(conn.read_memory(phdr, phent * phnum), phnum, phent)


def loaded_segments(conn: RspConnection) -> tuple[int, list[Region], list[Region]]:
    """The stopped program's entry point, its ``PT_LOAD`` segments where
    they are mapped (a PIE's moved by its load bias), and its interpreter's
    (ld.so, empty for a static program), read through its auxiliary vector."""
    vals = read_auxv(conn)
    bias = program_bias(conn, vals)
    segs = _loads(conn, vals[AT_PHDR], vals[AT_PHNUM], vals[AT_PHENT], bias)
    if not segs:
        raise MachineError("the program has no PT_LOAD segment")
    interp: list[Region] = []
    base = vals.get(AT_BASE, 0)
    if base:
        ehdr = conn.read_memory(base, 52)
        phoff, = struct.unpack_from("<I", ehdr, 28)
        i_phent, i_phnum = struct.unpack_from("<HH", ehdr, 42)
        if ehdr[:4] == b"\x7fELF" and i_phent >= 32:
            interp = _loads(conn, base + phoff, i_phnum, i_phent, base)
    return vals.get(AT_ENTRY, 0), segs, interp


def _loads(conn: RspConnection, phdr: int, phnum: int, phent: int,
           bias: int) -> list[Region]:
    """The PT_LOAD segments of the program headers at *phdr*, moved by *bias*."""
    return [Region(bias + p.vaddr, bias + p.vaddr + p.memsz, bool(p.flags & PF_R),
                   bool(p.flags & PF_W), bool(p.flags & PF_X))
            for p in program_headers_at(conn, phdr, phnum, phent)
            if p.type == PT_LOAD and p.memsz]
