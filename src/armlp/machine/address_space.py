"""The emulator's address space: fixed mappings, armlp's allocations (near
the program's text when asked, within branch range), the map armlp reads
back (:class:`~armlp.machine.base.Region`)."""

from __future__ import annotations

from typing import Any

from armlp.arm.t32 import NEAR_RANGE
from armlp.errors import MachineError
from armlp.machine.base import Region
from armlp.machine.exec_loader import MIN_ADDR, PAGE, _align_down, _align_up, uc

#: Where :meth:`AddressSpace.alloc` places memory without *near*.
MMAP_BASE = 0x40000000
#: Highest address (exclusive) :meth:`AddressSpace.alloc` uses.
ALLOC_LIMIT = 0xFFFE0000
_UcError: type[Exception] = uc.UcError


class AddressSpace:
    """Memory management of :class:`~armlp.machine.emulator.Emulator` (a
    mixin: the Unicorn instance and the allocations are the emulator's)."""

    uc: Any
    _allocs: dict[int, int]

    def flush_icache(self, address: int, size: int) -> None:
        raise NotImplementedError

    def alloc(self, size: int, *, near: int | None = None) -> int:
        """Map RWX memory, page aligned and zeroed.

        With *near*, the block lies within a Thumb BL's range (±16 MiB) of it when a
        free region there exists (the highest one, leaving room for brk);
        otherwise, and without *near*, the first free region from
        ``MMAP_BASE`` up.
        """
        if size <= 0:
            raise MachineError(f"alloc of {size} bytes")
        size = _align_up(size)
        addr: int | None = None
        if near is not None:
            lo = max(MIN_ADDR, _align_up(near - NEAR_RANGE + PAGE))
            hi = min(ALLOC_LIMIT, _align_down(near + NEAR_RANGE - PAGE))
            addr = self._find_free(size, lo, hi, top_down=True)
        if addr is None:
            addr = self._find_free(size, MMAP_BASE, ALLOC_LIMIT, top_down=False)
        if addr is None:
            addr = self._find_free(size, MIN_ADDR, ALLOC_LIMIT, top_down=False)
        if addr is None:
            raise MachineError(f"no free region of {size:#x} bytes")
        self.uc.mem_map(addr, size, uc.UC_PROT_ALL)
        self._allocs[addr] = size
        return addr

    def free(self, address: int, size: int) -> None:
        """Unmap a block from :meth:`alloc` (and its translated code)."""
        have = self._allocs.get(address)
        if have is None or _align_up(size) != have:
            raise MachineError(f"free({address:#010x}, {size:#x}): not a block from alloc")
        self.flush_icache(address, have)
        self.uc.mem_unmap(address, have)
        del self._allocs[address]

    def map(self, address: int, size: int, prot: int = uc.UC_PROT_ALL) -> None:
        """Map memory at a fixed page-aligned address (Unicorn ``UC_PROT_*``)."""
        try:
            self.uc.mem_map(address, _align_up(size), prot)
        except _UcError as exc:
            raise MachineError(f"cannot map {size:#x} bytes at {address:#010x}: {exc}") from None

    def armlp_memory(self) -> list[tuple[int, int]]:
        """Every range armlp allocated in the target."""
        return [(a, a + n) for a, n in self._allocs.items()]

    def regions(self) -> list[Region]:
        """Mapped regions, from Unicorn's UC_PROT_* flags."""
        return sorted((Region(b, e + 1, bool(p & uc.UC_PROT_READ), bool(p & uc.UC_PROT_WRITE),
                              bool(p & uc.UC_PROT_EXEC)) for b, e, p in self.uc.mem_regions()),
                      key=lambda r: r.start)


    def _find_free(self, size: int, lo: int, hi: int, *, top_down: bool) -> int | None:
        gaps: list[tuple[int, int]] = []
        cur = lo
        for r in self.regions():
            b, e = r.start, r.end
            if e <= cur:
                continue
            if b >= hi:
                break
            if b > cur:
                gaps.append((cur, b))
            cur = max(cur, e)
        if cur < hi:
            gaps.append((cur, hi))
        for g0, g1 in (reversed(gaps) if top_down else gaps):
            a = _align_down(g1 - size) if top_down else _align_up(g0)
            if g0 <= a and a + size <= g1:
                return a
        return None
