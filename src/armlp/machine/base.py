"""The Machine protocol: what the control plane needs from a target.

A machine is a stopped-or-running ARM process (an emulator instance, a
qemu-user process behind the GDB stub, a device behind gdbserver).  The
control plane only ever touches it through this protocol, so the livepatch
core runs unchanged on every backend.

Rules every backend keeps:

* code writes are compare-and-swap: :meth:`Machine.write_code` checks every
  expected word first and writes nothing if one differs, then performs the
  flush the machine needs (Unicorn: drop translated blocks; Linux: cacheflush);
* memory the target allocates for armlp (:meth:`Machine.alloc`) is
  readable, writable and executable;
* :meth:`Machine.call` runs a function in the target with the other threads
  stopped and restores the borrowed thread exactly.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from armlp.errors import CodeModificationError, MachineError

#: Register order of :class:`Regs` and of the runtime's ``struct pt_regs``.
REG_ORDER = ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12",
             "sp", "lr", "pc", "cpsr")


@dataclass
class Regs:
    """A thread's integer registers (r0-r12, sp, lr, pc, cpsr)."""

    r: list[int]          # r0..r12
    sp: int
    lr: int
    pc: int
    cpsr: int = 0x10      # user mode, ARM state

    def as_list(self) -> list[int]:
        return [*self.r, self.sp, self.lr, self.pc, self.cpsr]

    @classmethod
    def from_list(cls, vals: Sequence[int]) -> Regs:
        return cls(list(vals[:13]), vals[13], vals[14], vals[15], vals[16])


@dataclass(frozen=True)
class CodeWrite:
    """One compare-and-swap code write: *expected* must be at *address*."""

    address: int
    expected: bytes
    new: bytes


def code_images(writes: Sequence[CodeWrite], read: Callable[[int, int], bytes],
                gap: int = 0) -> list[tuple[int, bytearray]]:
    """The compare-and-swap half of :meth:`Machine.write_code`, for every
    backend: the writes as ``(start, new bytes)`` images, writes at most
    *gap* bytes apart joined (with what lies between), each range read once
    through *read*.  Raises, before anything is written, on a write whose
    sizes differ, writes that overlap, or an expected word that is not there
    (CodeModificationError)."""
    for w in writes:
        if len(w.new) != len(w.expected):
            raise MachineError(f"code write at {w.address:#010x}: {len(w.new)} new bytes "
                               f"for {len(w.expected)} expected")
    ordered = sorted((w for w in writes if w.new), key=lambda w: w.address)
    for a, b in itertools.pairwise(ordered):
        if a.address + len(a.new) > b.address:
            raise MachineError(f"code writes at {a.address:#010x} and {b.address:#010x} "
                               f"overlap")
    runs: list[list[CodeWrite]] = []
    for w in ordered:
        if runs and w.address - (runs[-1][-1].address + len(runs[-1][-1].new)) <= gap:
            runs[-1].append(w)
        else:
            runs.append([w])
    images: list[tuple[int, bytearray]] = []
    for ws in runs:
        start = ws[0].address
        image = bytearray(read(start, ws[-1].address + len(ws[-1].new) - start))
        for w in ws:
            off = w.address - start
            cur = bytes(image[off:off + len(w.expected)])
            if cur != w.expected:
                raise CodeModificationError(
                    f"code at {w.address:#010x} is {cur.hex()}, expected "
                    f"{w.expected.hex()}: refusing to write {w.new.hex()}")
        for w in ws:
            off = w.address - start
            image[off:off + len(w.new)] = w.new
        images.append((start, image))
    return images


@dataclass(frozen=True)
class Region:
    """A mapped range of target memory, ``[start, end)``, and its access."""

    start: int
    end: int
    readable: bool = True
    writable: bool = False
    executable: bool = False
    #: The file mapped there and the offset in it ("" for anonymous memory).
    path: str = ""
    offset: int = 0

    @classmethod
    def from_perms(cls, start: int, end: int, perms: str, path: str = "",
                   offset: int = 0) -> Region:
        """From ``/proc/PID/maps`` permissions (``rwxp``)."""
        return cls(start, end, perms[:1] == "r", perms[1:2] == "w", perms[2:3] == "x",
                   path, offset)


@runtime_checkable
class Machine(Protocol):
    """A target armlp can inspect and modify."""

    def read(self, address: int, size: int) -> bytes:
        """Read target memory; raises MachineError if unmapped."""
        ...

    def write(self, address: int, data: bytes) -> None:
        """Write data memory (no icache flush, no comparison)."""
        ...

    def write_code(self, writes: Sequence[CodeWrite], *, unused: bool = False,
                   stale_ok: bool = False) -> None:
        """Compare-and-swap code writes, all or nothing, then flush.

        Raises CodeModificationError naming the first address whose current
        bytes are not the expected ones; nothing is written in that case.
        *unused*: no thread can be running, or have translated, that code
        yet (memory armlp has just mapped, a heap block never used before),
        so the target need not be stopped for the writes.  *stale_ok*: the
        code replaced stays correct (a fast path taking over from the
        generic one), so a backend whose flush is costly may run it later,
        with its next code update or :meth:`flush_stale`.
        """
        ...

    @property
    def stale(self) -> bool:
        """Whether ``write_code(stale_ok=True)`` left code to flush."""
        ...

    def flush_stale(self) -> None:
        """Flush what ``write_code(stale_ok=True)`` left (the target stopped)."""
        ...

    def alloc(self, size: int, *, near: int | None = None) -> int:
        """Allocate RWX memory for armlp (module memory, runtime, buffers).

        *near* asks for an address within branch range (±32 MiB) of it;
        backends that cannot honour it return any address.
        """
        ...

    def free(self, address: int, size: int) -> None:
        """Release memory from :meth:`alloc`."""
        ...

    def call(self, address: int, args: Sequence[int] = (), *,
             max_instructions: int = 10_000_000) -> int:
        """Run the function at *address* with AAPCS arguments *args* (at most
        four words) in the target and return r0."""
        ...

    def threads(self) -> list[int]:
        """Thread ids of the target."""
        ...

    def get_regs(self, thread: int | None = None) -> Regs:
        ...

    def set_regs(self, regs: Regs, thread: int | None = None) -> None:
        ...

    def threads_settled(self) -> bool:
        """Inside :meth:`all_stopped`: whether the program has no thread
        that the last :meth:`threads` did not list (one created in
        between was never looked at)."""
        ...

    def exact_registers(self, thread: int) -> bool:
        """Whether *thread*'s registers, read inside :meth:`all_stopped`,
        are its exact state (what a stack walk needs): qemu-user keeps a
        thread's registers in host registers while it runs translated code,
        so only one stopped in a system call, or parked in the stub, is
        exact there."""
        ...

    def cpu_times(self) -> dict[int, int] | None:
        """Inside :meth:`all_stopped`: how long each thread has run so far
        (ns), where :meth:`exact_registers` can be false (None elsewhere):
        a thread that ran since the code writes took effect has left any
        translation made before them."""
        ...

    @property
    def stops_all(self) -> bool:
        """Whether :meth:`all_stopped` can hold every thread still (a
        machine that cannot is written word by word, and never frees)."""
        ...

    @property
    def quarantine_heap(self) -> bool:
        """Whether freed heap blocks must never be reused (threads may still
        hold a pointer to one while armlp works)."""
        ...

    def all_stopped(self, *, registers: bool = False) -> AbstractContextManager[bool]:
        """``with machine.all_stopped() as stopped:`` every thread of the
        target held still inside the block when *stopped*.  *registers*: the
        block reads the threads' registers (a machine behind a stub makes the
        stub ready for that before it holds them)."""
        ...

    def regions(self) -> list[Region]:
        """The target's mapped memory."""
        ...

    def armlp_memory(self) -> list[tuple[int, int]]:
        """Every range armlp mapped in the target (``[start, end)``)."""
        ...

    def flush_icache(self, address: int, size: int) -> None:
        """Make every thread execute what is now in ``[address, address +
        size)`` (the machine's ``flush_icache_range``)."""
        ...


def read_word(machine: Machine, address: int) -> int:
    return int(struct.unpack("<I", machine.read(address, 4))[0])


def write_word(machine: Machine, address: int, value: int) -> None:
    machine.write(address, struct.pack("<I", value & 0xFFFFFFFF))
