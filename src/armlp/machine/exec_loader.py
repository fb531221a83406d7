"""Loading a static ARM Linux executable into the emulator, as the kernel's
``execve`` does: its ``PT_LOAD`` segments with their permissions, the
initial stack (argv, envp, the auxiliary vector) and the registers."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import unicorn as _unicorn

from armlp.arm.a32 import BX_LR, CPSR_MODE_USR, CPSR_T
from armlp.elf.image import ET_DYN, ET_EXEC, PF_R, PF_W, PF_X, PT_LOAD, ElfImage, Segment
from armlp.errors import MachineError
from armlp.machine.auxv import (
    AT_CLKTCK,
    AT_EGID,
    AT_ENTRY,
    AT_EUID,
    AT_GID,
    AT_HWCAP,
    AT_PAGESZ,
    AT_PHDR,
    AT_PHENT,
    AT_PHNUM,
    AT_PLATFORM,
    AT_RANDOM,
    AT_SECURE,
    AT_UID,
)
from armlp.machine.base import Regs

if TYPE_CHECKING:
    from armlp.machine.emulator import Emulator

#: The binding's stubs are incomplete: use it untyped.
uc: Any = _unicorn

PAGE = 0x1000
#: Lowest address armlp maps (Linux's mmap_min_addr).
MIN_ADDR = 0x10000
#: The initial stack: [STACK_TOP - STACK_SIZE, STACK_TOP).
STACK_TOP = 0xBF000000
STACK_SIZE = 8 << 20


def _align_up(v: int, a: int = PAGE) -> int:
    return (v + a - 1) & ~(a - 1)


def _align_down(v: int, a: int = PAGE) -> int:
    return v & ~(a - 1)


#: AT_HWCAP: half, thumb, fast_mult, vfp, edsp, tls, vfpv3, idiva (what a Cortex-A15 has).
_HWCAP = 0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x8000 | 0x2000 | 0x20000


#: Where a position-independent program's code is put when only its code
#: is wanted (see load_program).
PIE_BIAS = 0x00400000


def load_program(emu: Emulator, path: str | Path, argv: Sequence[str] | None,
                 envp: Sequence[str] | Mapping[str, str], *,
                 code_only: bool = False) -> tuple[int, int, ElfImage]:
    """Map *path* into *emu* and set up its first thread; returns the entry
    point, the end of the image (where the heap starts) and the image as
    mapped.  A dynamically linked or position-independent program cannot
    run here (no dynamic linker); with *code_only* its code is mapped all
    the same (a PIE at :data:`PIE_BIAS`), for callers that run single
    functions of it (``armlp verify``)."""
    image = ElfImage(path)
    dynamic = image.type != ET_EXEC or image.interpreter is not None
    if image.type == ET_DYN and code_only:
        image = image.rebased(PIE_BIAS)
    elif image.type != ET_EXEC and code_only:
        raise MachineError(f"{path}: not a static executable, PIE or shared library "
                           f"(ELF type {image.type})")
    elif image.type != ET_EXEC:
        raise MachineError(f"{path}: not a static executable (ELF type {image.type}); "
                           f"the emulator runs static, non-PIE ARM programs")
    segs = [s for s in image.segments if s.type == PT_LOAD]
    if not segs:
        raise MachineError(f"{path}: no PT_LOAD segment")
    if dynamic and not code_only:
        raise MachineError(f"{path}: dynamically linked; build it -static")
    end_of_image = map_segments(emu, image, segs, MIN_ADDR, STACK_TOP - STACK_SIZE)
    entry = image.entry
    phdr = 0
    for s in segs:
        if s.offset <= image.phoff < s.offset + s.filesz:
            phdr = s.vaddr + image.phoff - s.offset
    aux = [(AT_PHDR, phdr), (AT_PHENT, image.phentsize), (AT_PHNUM, image.phnum),
           (AT_PAGESZ, PAGE), (AT_ENTRY, entry), (AT_UID, 0), (AT_EUID, 0),
           (AT_GID, 0), (AT_EGID, 0), (AT_HWCAP, _HWCAP), (AT_CLKTCK, 100),
           (AT_SECURE, 0)]
    env = [f"{k}={v}" for k, v in envp.items()] if isinstance(envp, Mapping) else list(envp)
    sp = _build_stack(emu, list(argv) if argv is not None else [str(path)], env, aux)
    regs = Regs([0] * 13, sp, 0, entry & ~1, CPSR_MODE_USR | (CPSR_T if entry & 1
                                                                else 0))
    emu.set_regs(regs)
    return entry, end_of_image, image


#: Where a 32-bit ARM kernel's image lives (PAGE_OFFSET up; the vectors page
#: and fixmaps above KERNEL_LIMIT are left out).
KERNEL_BASE = 0xC0000000
KERNEL_LIMIT = 0xFF000000


def load_kernel_image(emu: Emulator, image: ElfImage, scratch: int) -> int:
    """Map a ``vmlinux``'s ``PT_LOAD`` segments at their addresses and
    *scratch* RWX bytes right after the image (within branch range of its
    text, as modules are; room for code and a stack); returns the scratch
    address.  The emulator stays in user mode: only unprivileged kernel code
    runs, which is all a prologue and ftrace_regs_caller are."""
    segs = [s for s in image.segments
            if s.type == PT_LOAD and KERNEL_BASE <= s.vaddr < KERNEL_LIMIT]
    if not segs:
        raise MachineError(f"{image.path}: no segment at kernel addresses")
    base = _align_up(map_segments(emu, image, segs, KERNEL_BASE, KERNEL_LIMIT))
    emu.uc.mem_map(base, _align_up(scratch), uc.UC_PROT_ALL)
    return base


#: The kernel's user helpers page, as ARM Linux maps it into every process
#: (Documentation/arch/arm/kernel_user_helpers.rst): static glibc and armlp's
#: runtime call them.  The emulator runs one thread, so the uniprocessor
#: versions are exact.
KUSER_PAGE = 0xFFFF0000
KUSER_HELPERS: dict[int, tuple[int, ...]] = {
    0xFA0: (BX_LR,),                                # __kuser_memory_barrier: bx lr
    0xFC0: (0xE5923000, 0xE0533000, 0x05821000,     # __kuser_cmpxchg: ldr r3, [r2];
            0xE2730000, BX_LR),                     # subs; streq r1, [r2]; rsbs r0; bx lr
    0xFE0: (0xEE1D0F70, BX_LR),                     # __kuser_get_tls: mrc TPIDRURO; bx lr
    0xFFC: (2,),                                    # __kuser_helper_version
}

def map_kuser_page(emu: Emulator) -> None:
    """Map the user helpers page, read and execute only, as the kernel does."""
    emu.uc.mem_map(KUSER_PAGE, PAGE, uc.UC_PROT_READ | uc.UC_PROT_EXEC)
    for offset, words in KUSER_HELPERS.items():
        emu.uc.mem_write(KUSER_PAGE + offset, struct.pack(f"<{len(words)}I", *words))


def map_segments(emu: Emulator, image: ElfImage, segs: Sequence[Segment], lo_limit: int,
                 hi_limit: int) -> int:
    """Map *segs* of *image* with their permissions (refusing any outside
    [lo_limit, hi_limit)) and copy their bytes; returns the end of the image."""
    perms: dict[int, int] = {}
    for s in segs:
        lo, hi = s.vaddr, s.vaddr + s.memsz
        if s.memsz == 0:
            continue
        if lo < lo_limit or hi > hi_limit:
            raise MachineError(f"{image.path}: segment {lo:#x}-{hi:#x} outside the range "
                               f"{lo_limit:#x}-{hi_limit:#x}")
        prot = ((uc.UC_PROT_READ if s.flags & PF_R else 0)
                | (uc.UC_PROT_WRITE if s.flags & PF_W else 0)
                | (uc.UC_PROT_EXEC if s.flags & PF_X else 0))
        for page in range(_align_down(lo), _align_up(hi), PAGE):
            perms[page] = perms.get(page, 0) | prot
    for start, end, prot in _runs(perms):
        emu.uc.mem_map(start, end - start, prot)
    end_of_image = 0
    for s in segs:
        data = image.segment_data(s)
        if data:
            emu.uc.mem_write(s.vaddr, data[: s.memsz])
        end_of_image = max(end_of_image, s.vaddr + s.memsz)
    return end_of_image


def _build_stack(emu: Emulator, argv: list[str], envp: list[str],
                 aux: list[tuple[int, int]]) -> int:

    base = STACK_TOP - STACK_SIZE
    emu.uc.mem_map(base, STACK_SIZE, uc.UC_PROT_READ | uc.UC_PROT_WRITE)
    top = STACK_TOP - 16
    blobs: list[int] = []

    def put(data: bytes) -> int:
        nonlocal top
        top -= len(data)
        emu.uc.mem_write(top, data)
        return top

    put(b"\0" * 4)
    argv_ptrs = [put(a.encode() + b"\0") for a in argv]
    env_ptrs = [put(e.encode() + b"\0") for e in envp]
    platform = put(b"v7l\0")
    random = put(bytes(range(0xA0, 0xB0)))     # AT_RANDOM: fixed, for reproducibility
    blobs.extend([platform, random])
    aux = [*aux, (AT_PLATFORM, platform), (AT_RANDOM, random), (0, 0)]
    words = [len(argv), *argv_ptrs, 0, *env_ptrs, 0]
    for k, v in aux:
        words.extend((k, v))
    sp = _align_down(top - 4 * len(words), 16)
    emu.uc.mem_write(sp, struct.pack(f"<{len(words)}I", *words))
    return sp


def _runs(perms: Mapping[int, int]) -> list[tuple[int, int, int]]:
    """Pages with permissions -> maximal [start, end) runs of equal permissions."""
    out: list[tuple[int, int, int]] = []
    for page in sorted(perms):
        prot = perms[page]
        if out and out[-1][1] == page and out[-1][2] == prot:
            out[-1] = (out[-1][0], page + PAGE, prot)
        else:
            out.append((page, page + PAGE, prot))
    return out
