"""Veneers: the loader's long-branch stubs, and the area that holds them.

A branch whose destination is out of its instruction's range, or a plain
jump (``B``/``B.W``) that would have to change instruction set, goes through
a veneer: 8 bytes, word aligned, that load the destination into pc.  A load
to pc interworks on ARMv5T and later, so the destination's bit 0 selects
the instruction set:

* ARM veneer at V:   ``ldr pc, [pc, #-4]`` (reads V+4), then the word.
* Thumb veneer at V: ``ldr.w pc, [pc, #0]`` (reads Align(V+4, 4) = V+4), then the word.

The kernel calls these PLT entries (``arch/arm/kernel/module-plts.c``); like
it, the loader reserves the area before relocating (an upper bound counted
from the relocations) and fills unused slots with ``udf`` so a stray jump
into them traps instead of running zeros.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from armlp.errors import LoaderError

VENEER_SIZE = 8
#: ``ldr pc, [pc, #-4]``
ARM_VENEER_LDR = 0xE51FF004
#: ``ldr.w pc, [pc, #0]`` as hw1 | hw2 << 16 (memory order)
THUMB_VENEER_LDR = 0xF000F8DF
#: ``udf #0`` in ARM state: fills unused slots.
UDF_ARM = 0xE7F000F0


@dataclass(frozen=True, slots=True)
class Veneer:
    """One emitted veneer: ``mode`` is the instruction set of the veneer itself
    (``arm`` or ``thumb``), ``target`` the destination with its Thumb bit."""

    address: int
    mode: str
    target: int

    @property
    def data(self) -> bytes:
        first = ARM_VENEER_LDR if self.mode == "arm" else THUMB_VENEER_LDR
        return struct.pack("<II", first, self.target & 0xFFFFFFFF)


class VeneerArea:
    """A fixed-size area of veneer slots, deduplicated by (mode, target)."""

    def __init__(self, address: int, capacity: int) -> None:
        if address % 4:
            raise LoaderError(f"veneer area at {address:#x} is not word aligned")
        self.address = address
        self.capacity = capacity
        self.veneers: list[Veneer] = []
        self._index: dict[tuple[str, int], Veneer] = {}

    @property
    def size(self) -> int:
        return self.capacity * VENEER_SIZE

    def get(self, mode: str, target: int) -> Veneer:
        """The veneer in *mode* reaching *target*, emitting it on first use."""
        key = (mode, target & 0xFFFFFFFF)
        found = self._index.get(key)
        if found is not None:
            return found
        if len(self.veneers) >= self.capacity:
            raise LoaderError(f"veneer area at {self.address:#x} is full "
                              f"({self.capacity} slots)")
        ven = Veneer(self.address + len(self.veneers) * VENEER_SIZE, mode, key[1])
        self.veneers.append(ven)
        self._index[key] = ven
        return ven

    def data(self) -> bytes:
        """The area's bytes: used veneers, then ``udf`` in every unused word."""
        out = b"".join(v.data for v in self.veneers)
        unused = (self.size - len(out)) // 4
        return out + struct.pack("<I", UDF_ARM) * unused
