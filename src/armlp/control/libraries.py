"""Following the dynamic linker: libraries that come and go while the
program runs (``dlopen``, ``dlclose``) — the kernel's module notifier for
livepatch (``klp_module_coming``/``going``), for programs.

glibc's ld.so keeps ``struct r_debug`` for debuggers (the program's
``DT_DEBUG`` entry points at it) and calls the empty function at
``r_debug.r_brk`` (``_dl_debug_state``) before and after every change to
its list of objects; ``r_state`` says which (``RT_ADD``, ``RT_DELETE``, then
``RT_CONSISTENT``).  A debugger puts a breakpoint there; under qemu-user's
stub a breakpoint would let a program thread into the stub beside armlp's
agent, which the stub does not survive.  So armlp branches that function to
the runtime's ``armlp_linker_hook`` (``runtime/linker.S``): the thread marks
the event, signals the agent and sleeps; the controller, stopped on the
agent as for any request, sees the mark before it lets the program go.  On
``RT_CONSISTENT`` after an ``RT_ADD`` the new library is mapped and
relocated and none of its code has run (its constructors run after the
call): its sites become records, turned into the NOP, and every enabled
patch that names it is applied to it then.  A library no longer mapped
leaves every func stack without a write to its code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from armlp.analysis.scan import scan
from armlp.arm.a32 import branch_in_range, encode_b
from armlp.elf.image import PT_INTERP, SHT_DYNAMIC
from armlp.errors import ArmlpError, MachineError
from armlp.livepatch.core import Livepatch
from armlp.machine.base import CodeWrite, read_word, write_word
from armlp.machine.gdb import GdbMachine
from armlp.machine.qemu import GUEST_STOP_SIGNAL
from armlp.objects import loaded_libraries

DT_NULL, DT_DEBUG = 0, 21
#: struct r_debug: r_version, r_map, r_brk, r_state, r_ldbase.
R_DEBUG = struct.Struct("<iIIiI")
RT_CONSISTENT = 0
#: What _dl_debug_state is, ARM ld.so: one "bx lr".
BX_LR = 0xE12FFF1E


class LibraryWatch:
    """``_dl_debug_state`` of one program branched to armlp's hook, and
    what to do when the hook marks an event."""

    def __init__(self, machine: GdbMachine, lp: Livepatch, pid: int,
                 log: Callable[[str], None]) -> None:
        self.machine = machine
        self.lp = lp
        self.log = log
        self.r_debug = self._r_debug()
        brk = R_DEBUG.unpack(machine.read(self.r_debug, R_DEBUG.size))[2]
        if not brk or brk & 1:
            raise MachineError(f"_dl_debug_state at {brk:#x} is not ARM code (armhf's "
                               f"Thumb ld.so is not followed yet)")
        if read_word(machine, brk) != BX_LR:
            raise MachineError(f"_dl_debug_state at {brk:#x} is not 'bx lr'")
        if machine.agent is None:
            raise MachineError("no agent thread to signal")
        rt = lp.target.runtime
        self.pending_at = rt.symbol("armlp_linker_pending")
        # Ordering: the agent's ids are in place before a thread can branch.
        machine.write(rt.symbol("armlp_agent_tgid"),
                      struct.pack("<III", pid, machine.agent, GUEST_STOP_SIGNAL))
        hook = rt.symbol("armlp_linker_hook")
        to = hook if branch_in_range(brk, hook) else lp.ftrace.veneers.get(brk, hook)
        machine.write_code([CodeWrite(brk, struct.pack("<I", BX_LR),
                                      struct.pack("<I", encode_b(brk, to)))])
        lp.target.follows_libraries = True

    @classmethod
    def wanted(cls, lp: Livepatch) -> bool:
        """Only a dynamically linked program has a dynamic linker to follow."""
        return any(s.type == PT_INTERP for s in lp.target.image.segments)

    def _r_debug(self) -> int:
        """Where ld.so keeps r_debug: the program's DT_DEBUG entry, as the
        program's memory holds it (ld.so fills it in)."""
        image = self.lp.target.image
        dyn = next((s for s in image.sections if s.type == SHT_DYNAMIC), None)
        if dyn is None:
            raise MachineError(f"{image.path}: no dynamic section")
        raw = self.machine.read(dyn.addr, dyn.size - dyn.size % 8)
        for tag, value in struct.iter_unpack("<II", raw):
            if tag == DT_NULL:
                break
            if tag == DT_DEBUG and value:
                return int(value)
        raise MachineError(f"{image.path}: the dynamic linker left no r_debug (DT_DEBUG)")

    def pending(self) -> bool:
        """Whether a thread waits in the hook for armlp."""
        return read_word(self.machine, self.pending_at) != 0

    def event(self) -> None:
        """Bring the objects in line with what is mapped when ld.so's list is
        consistent, then let the waiting threads go on (also on an error)."""
        try:
            state = R_DEBUG.unpack(self.machine.read(self.r_debug, R_DEBUG.size))[3]
            if state == RT_CONSISTENT:
                self._sync()
        finally:
            write_word(self.machine, self.pending_at, 0)

    def _sync(self) -> None:
        target, ft = self.lp.target, self.lp.ftrace
        now = {lib.soname: lib for lib in loaded_libraries(self.machine, target.image)}
        before = {lib.soname: lib for lib in target.loaded}
        for name, lib in before.items():
            if name not in now or now[name].image.entry != lib.image.entry:
                patches = self.lp.object_going(name)
                if target.libraries.pop(name, None) is not None:      # was a patch object
                    self.log(f"library {name} unloaded" +
                             (f" (was patched by {', '.join(patches)})" if patches else ""))
        target.loaded = list(now.values())
        self.lp.forget_exports()
        for name, lib in now.items():
            if name in before and before[name].image.entry == lib.image.entry:
                continue
            try:
                result = scan(lib.image)
            except ArmlpError:
                continue                # stripped: not a patch object
            try:
                recs = ft.add_object(name, result)
                target.libraries[name] = lib
                patches = self.lp.object_coming(name)
            except ArmlpError as exc:
                self.log(f"error: library {name} loaded but not patched: {exc}")
                continue
            self.log(f"library {name} loaded: {len(recs)} mcount sites" +
                     (f"; patched by {', '.join(patches)}" if patches else ""))
