"""A target: a program in a machine, with the runtime loaded and ftrace
initialised — what every armlp command that changes a program starts from."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from armlp.analysis.scan import ScanResult, scan
from armlp.elf.image import ElfImage
from armlp.errors import ArmlpError
from armlp.ftrace.core import Ftrace
from armlp.machine.base import Machine
from armlp.machine.heap import TargetHeap
from armlp.objects import LoadedLibrary
from armlp.runtime.module import Runtime


@dataclass
class Target:
    """One program under armlp's control."""

    machine: Machine
    image: ElfImage
    scan: ScanResult
    runtime: Runtime
    ftrace: Ftrace
    #: armlp's small structures in the target (ops, func-stack nodes,
    #: trampolines), near the program's text; ftrace and livepatch share it.
    heap: TargetHeap

    #: Every shared library mapped, by address (a patch links against what
    #: they export, stripped ones included); those a patch can change are
    #: ftrace's objects (see armlp.objects).
    loaded: list[LoadedLibrary] = field(default_factory=list)
    #: Whether armlp follows the dynamic linker (armlp.objects.LibraryWatch):
    #: then a patch may name a library not loaded yet.
    follows_libraries: bool = False

    @classmethod
    def attach(cls, machine: Machine, image: ElfImage,
               libraries: Sequence[LoadedLibrary] = ()) -> Target:
        """Load the runtime near the program's text and turn every site,
        the program's and its libraries', into the NOP (validating every
        site before the first code write).  A library without a symbol
        table (stripped, as distributions ship them) has no functions armlp
        can name: it is not a patch object."""
        result = scan(image)
        scans: dict[str, ScanResult] = {}
        for lib in libraries:
            with contextlib.suppress(ArmlpError):
                scans[lib.soname] = scan(lib.image)
        text = image.section(".text")
        heap = TargetHeap(machine, near=text.addr if text else None,
                          quarantine=machine.quarantine_heap)
        ftrace = Ftrace(machine, result, heap=heap, libraries=scans)
        ftrace.check_unmodified()
        ftrace.runtime = Runtime.load(machine, near=text.addr if text else None)
        ftrace.ftrace_init()
        return cls(machine, image, result, ftrace.runtime, ftrace, heap, list(libraries))

    @classmethod
    def emulate(cls, path: str | Path, argv: Sequence[str] | None = None, *,
                code_only: bool = False, **options: Any) -> Target:
        """The program at *path* in a new emulator, stopped at its entry
        (with *code_only*, a dynamic or PIE program's code, not to be run
        from its entry: see armlp.machine.exec_loader.load_program)."""
        from armlp.machine.emulator import Emulator
        emu = Emulator(**options)
        image = emu.load(path, argv, code_only=code_only)
        return cls.attach(emu, image)
