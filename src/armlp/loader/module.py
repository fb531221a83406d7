"""The result of loading: pure data, computed without touching a machine.

A :class:`LoadedModule` holds every section's final address and bytes, the
symbols the objects define, and the veneers the loader emitted.  Callers
validate all of it first; :meth:`LoadedModule.write_to` is the only step
that touches the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from armlp.errors import LoaderError
from armlp.loader.veneers import Veneer
from armlp.machine.base import CodeWrite, Machine


@dataclass(frozen=True, slots=True)
class LoadedSection:
    """One allocated input section at its final address with its final bytes."""

    object: str
    name: str
    index: int
    address: int
    data: bytes
    align: int
    executable: bool
    writable: bool
    nobits: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def end(self) -> int:
        return self.address + len(self.data)

    @property
    def label(self) -> str:
        return f"{self.object}:{self.name}"


@dataclass(frozen=True, slots=True)
class ModuleSymbol:
    """A symbol the loaded objects define (``address`` without the Thumb bit)."""

    name: str
    object: str
    address: int
    thumb: bool
    size: int
    is_function: bool
    is_global: bool

    @property
    def value(self) -> int:
        """The address as ELF writes it: bit 0 set for a Thumb function."""
        return self.address | int(self.thumb)


@dataclass
class LoadedModule:
    """Objects laid out, resolved and relocated: everything to write, nothing written."""

    sections: list[LoadedSection]
    symbols: list[ModuleSymbol]
    veneers: list[Veneer]
    veneer_area: tuple[int, bytes]
    #: The contiguous region the loader laid out itself: (address, size); size 0 if none.
    region: tuple[int, int]
    _globals: dict[str, ModuleSymbol] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for sym in self.symbols:
            if sym.is_global:
                self._globals[sym.name] = sym

    @property
    def base(self) -> int:
        return self.region[0]

    @property
    def size(self) -> int:
        """Bytes of the contiguous region (sections, veneer area, bss)."""
        return self.region[1]

    def section(self, name: str, object: str | None = None) -> LoadedSection:
        """The loaded section *name* (of *object*, a path or file name, if given)."""
        found = [s for s in self.sections if s.name == name and
                 (object is None or _same_object(s.object, object))]
        if len(found) != 1:
            what = f"{object}:{name}" if object else name
            raise LoaderError(f"section {what}: {len(found)} loaded sections match")
        return found[0]

    def symbol(self, name: str, object: str | None = None) -> ModuleSymbol:
        """A defined symbol: the global *name*, or a local one of *object*."""
        if object is None:
            found = self._globals.get(name)
            if found is not None:
                return found
            locs = [s for s in self.symbols if s.name == name]
        else:
            locs = [s for s in self.symbols if s.name == name and
                    _same_object(s.object, object)]
        if len(locs) != 1:
            raise LoaderError(f"symbol {name!r}: {len(locs)} definitions in the module"
                              + (f" object {object}" if object else ""))
        return locs[0]

    def address_of(self, name: str, object: str | None = None) -> int:
        """ELF value of *name* (Thumb functions with bit 0 set)."""
        return self.symbol(name, object).value

    def chunks(self) -> list[tuple[int, bytes]]:
        """Every (address, bytes) to write, in address order (bss included, as zeros)."""
        out = [(s.address, s.data) for s in self.sections if s.data]
        if self.veneer_area[1]:
            out.append(self.veneer_area)
        return sorted(out)

    def write_to(self, machine: Machine) -> None:
        """Write the module into *machine*: one all-or-nothing compare-and-swap
        batch (expected = what the memory holds now) into memory just mapped
        for it, then the machine's flush."""
        writes = [CodeWrite(addr, machine.read(addr, len(data)), data)
                  for addr, data in self.chunks()]
        machine.write_code(writes, unused=True)


def _same_object(path: str, name: str) -> bool:
    return path == name or path.rsplit("/", 1)[-1] == name
