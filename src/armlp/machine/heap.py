"""Small blocks of target memory for armlp's own structures.

Machines allocate whole pages (mmap in a real process); livepatch needs
many 4-16 byte structures (func-stack nodes, ops).  A TargetHeap carves
them out of larger chunks and reuses freed blocks of the same size.
"""

from __future__ import annotations

from armlp.errors import MachineError
from armlp.machine.base import Machine

CHUNK = 64 * 1024


class TargetHeap:
    """A bump allocator with per-size free lists over machine chunks."""

    def __init__(self, machine: Machine, *, near: int | None = None,
                 quarantine: bool = False) -> None:
        self.machine = machine
        self.near = near
        #: Never reuse a freed block: for targets whose threads keep running
        #: while armlp works (no all-stop), a thread may still read a block
        #: it found a pointer to just before the free.
        self.quarantine = quarantine
        self._chunk = 0
        self._used = CHUNK
        self._free: dict[int, list[int]] = {}
        self._sizes: dict[int, int] = {}

    def alloc(self, size: int) -> int:
        """*size* bytes, 8-byte aligned, zero-filled."""
        size = max(8, (size + 7) & ~7)
        if size > CHUNK:
            raise MachineError(f"heap block of {size} bytes is larger than a chunk")
        free = self._free.get(size)
        if free:
            addr = free.pop()
        else:
            if self._used + size > CHUNK:
                self._chunk = self.machine.alloc(CHUNK, near=self.near)
                self._used = 0
            addr = self._chunk + self._used
            self._used += size
        self.machine.write(addr, bytes(size))
        self._sizes[addr] = size
        return addr

    def free(self, addr: int) -> None:
        size = self._sizes.pop(addr, None)
        if size is None:
            raise MachineError(f"heap free({addr:#x}): not an allocated block")
        if not self.quarantine:
            self._free.setdefault(size, []).append(addr)
