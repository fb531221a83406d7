"""The code a stack walk may meet in a live target, for the transition's
stack checks: the program (its symbols and exception table, read once), the
shared libraries mapped (each read once per mapping), the enabled and
disabled patches, and armlp's own memory (never walked through).

Each transition attempt asks again; merging the maps was most of an
attempt's time in a program with libc linked in, so the merged map is kept
until what it is made of changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from armlp.analysis.unwind import CodeMap
from armlp.loader import LoadedModule
from armlp.target import Target


class TargetCode:
    """The code maps of one target, cached."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._program: CodeMap | None = None
        self._libraries: dict[tuple[str, int], CodeMap] = {}
        self._last: tuple[object, CodeMap] | None = None

    def code_map(self, modules: Iterable[LoadedModule]) -> CodeMap:
        """The map with the patch *modules* loaded now."""
        machine = self.target.machine
        if self._program is None:
            self._program = CodeMap.of_image(self.target.image)
        program = str(self.target.image.path.resolve())
        # A library's code mapping, told by its file offset (add_library
        # takes the one its executable segment starts at), not by its
        # permissions: armlp's mprotect that drops qemu's translations
        # leaves it writable until qemu translates from it again.  Of two
        # at one offset (code and data sharing a file page) the lower is
        # the code.
        lowest: dict[tuple[str, int], tuple[str, int, int]] = {}
        for r in sorted(machine.regions(), key=lambda r: r.start):
            if r.path and r.path != program:
                lowest.setdefault((r.path, r.offset), (r.path, r.start, r.offset))
        libraries = list(lowest.values())
        armlp = list(machine.armlp_memory())
        mods = list(modules)
        key = (libraries, armlp, [(id(m), m.region) for m in mods])
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        code = self._program.copy()
        for path, start, offset in libraries:
            lib = self._libraries.get((path, start))
            if lib is None:
                lib = self._libraries[(path, start)] = CodeMap()
                lib.add_library(path, start, offset)
            code.add(lib.functions)
        code.add_armlp(armlp, "armlp")
        rt = self.target.runtime.module
        code.add_armlp([(rt.base, rt.base + rt.size)], "armlp runtime")
        for m in mods:
            code.add_module(m)
        self._last = (key, code)
        return code
