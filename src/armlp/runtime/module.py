"""The runtime loaded into one target: where its trampolines and data are."""

from __future__ import annotations

from armlp.errors import MachineError
from armlp.loader import LoadedModule, load_objects
from armlp.machine.base import Machine
from armlp.runtime.build import runtime_objects


class Runtime:
    """The in-target runtime of one machine, with its exported addresses."""

    def __init__(self, module: LoadedModule) -> None:
        self.module = module

    @classmethod
    def load(cls, machine: Machine, *, near: int | None = None) -> Runtime:
        """Build (cached), lay out, relocate and write the runtime into
        *machine*, placed within branch range of *near* when the machine can."""

        def allocate(size: int, align: int) -> int:
            addr = machine.alloc(size + align, near=near)
            return (addr + align - 1) & ~(align - 1)

        module = load_objects(runtime_objects(), allocator=allocate)
        module.write_to(machine)
        return cls(module)

    def symbol(self, name: str) -> int:
        """Address of runtime symbol *name* (no Thumb bit: the runtime is ARM)."""
        try:
            return self.module.address_of(name)
        except Exception as exc:  # the loader raises LoaderError
            raise MachineError(f"runtime has no symbol {name!r}") from exc

    @property
    def exports(self) -> dict[str, int]:
        """Global symbols a patch module may link against."""
        return {s.name: s.value for s in self.module.symbols if s.is_global}
