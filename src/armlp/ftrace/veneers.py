"""Veneers: a site out of ``bl`` range of a trampoline calls a veneer placed
within range, which jumps on with ``ldr pc, [pc, #-4]; .word target``.

Veneers are ARM code; a Thumb site reaches one with ``blx`` (±16 MiB)."""

from __future__ import annotations

import struct

from armlp.arm.a32 import branch_in_range
from armlp.arm.t32 import t32_branch_in_range
from armlp.errors import MachineError
from armlp.machine.base import CodeWrite, Machine

VENEER = struct.Struct("<II")
LDR_PC_PC_M4 = 0xE51FF004   # ldr pc, [pc, #-4]
POOL_SIZE = 4096


class VeneerPool:
    """Veneers allocated on demand in pools near the sites that need them."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.pools: list[tuple[int, int]] = []      # (base, used bytes)
        self.by_target: dict[tuple[int, int], int] = {}  # (pool base, target) -> veneer

    def get(self, site: int, target: int, thumb: bool = False) -> int:
        """A veneer to *target* that a ``bl`` (Thumb: ``blx``) at *site* can reach."""
        in_range = t32_branch_in_range if thumb else branch_in_range
        for i, (base, used) in enumerate(self.pools):
            if not in_range(site, base) or not in_range(site, base + POOL_SIZE - 8):
                continue
            hit = self.by_target.get((base, target))
            if hit is not None:
                return hit
            if used + VENEER.size <= POOL_SIZE:
                return self._emit(i, target)
        base = self.machine.alloc(POOL_SIZE, near=site)
        if not in_range(site, base):
            raise MachineError(f"cannot place a veneer within branch range of {site:#x}")
        self.pools.append((base, 0))
        return self._emit(len(self.pools) - 1, target)

    def _emit(self, index: int, target: int) -> int:
        base, used = self.pools[index]
        addr = base + used
        old = self.machine.read(addr, VENEER.size)
        # A pool's slots are used once, in order: nothing has run this one.
        self.machine.write_code([CodeWrite(addr, old, VENEER.pack(LDR_PC_PC_M4, target))],
                                unused=True)
        self.pools[index] = (base, used + VENEER.size)
        self.by_target[(base, target)] = addr
        return addr
