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
the event, signals the agent (no one, where the agent is parked behind
the stub's door) and sleeps; the controller, stopped on the agent as for
any request, sees the mark before it lets the program go.  On
``RT_CONSISTENT`` after an ``RT_ADD`` the new library is mapped and
relocated and none of its code has run (its constructors run after the
call): its sites become records, turned into the NOP, and every enabled
patch that names it is applied to it then.  A library no longer mapped
leaves every func stack without a write to its code.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from armlp.analysis.scan import scan
from armlp.arm.a32 import BX_LR, branch_in_range, encode_b
from armlp.arm.t32 import T16_BX_LR_NOP, T32_LDR_PC, encode_t32_branch
from armlp.elf.image import DT_DEBUG, SHT_DYNAMIC, dynamic_entries
from armlp.errors import ArmlpError, MachineError
from armlp.livepatch.core import Livepatch
from armlp.machine.base import CodeWrite, read_word, write_word
from armlp.machine.gdb import GdbMachine
from armlp.machine.qemu import GUEST_STOP_SIGNAL
from armlp.objects import ImageCache, loaded_libraries

#: struct r_debug: r_version, r_map, r_brk, r_state, r_ldbase.
R_DEBUG = struct.Struct("<iIIiI")
RT_CONSISTENT = 0


class LibraryWatch:
    """``_dl_debug_state`` of one program branched to armlp's hook, and
    what to do when the hook marks an event."""

    def __init__(self, machine: GdbMachine, lp: Livepatch, pid: int,
                 log: Callable[[str], None]) -> None:
        self.machine = machine
        self.lp = lp
        self.log = log
        self.r_debug = self._r_debug()
        self._images: ImageCache = {}
        #: When the last event was handled (time.monotonic()).
        self.last_event = 0.0
        _, _, brk, state, _ = R_DEBUG.unpack(machine.read(self.r_debug, R_DEBUG.size))
        #: ld.so is between the start of a change and its end (RT_CONSISTENT
        #: handled): set by the events, and here for an attach that finds
        #: ld.so in the middle of one.
        self.changing = state != RT_CONSISTENT
        if not brk:
            raise MachineError("the dynamic linker has not set r_debug.r_brk")
        if machine.agent is None:
            raise MachineError("no agent thread to signal")
        rt = lp.target.runtime
        self.pending_at = rt.symbol("armlp_linker_pending")
        # Ordering: the agent's ids are in place before a thread can branch.
        # A machine with a door parks its agent behind it at the first
        # resume, and from then on a signal to the agent is the program's:
        # its default action ends the program.  A thread in ld.so can take
        # the hook at any moment around that resume, so with a door the hook
        # signals no one (tgkill with signal 0) from the start and the
        # controller looks at the mark instead (GdbLive.poll_interval).
        quiet = machine.door is not None
        machine.write(rt.symbol("armlp_agent_tgid"),
                      struct.pack("<III", pid, machine.agent,
                                  0 if quiet else GUEST_STOP_SIGNAL))
        machine.write_code([self._branch(brk, rt.symbol("armlp_linker_hook"))])
        lp.target.follows_libraries = True

    def _branch(self, brk: int, hook: int) -> CodeWrite:
        """The write that makes _dl_debug_state (``bx lr``) branch to *hook*
        (ARM code): a ``b`` (through a veneer if far) in ARM's ld.so; in
        armhf's Thumb ld.so a ``b.w`` over ``bx lr`` and the ``nop`` that
        pads it, to a Thumb veneer that loads pc (``ldr.w pc``: into ARM)."""
        m = self.machine
        if not brk & 1:
            if read_word(m, brk) != BX_LR:
                raise MachineError(f"_dl_debug_state at {brk:#x} is not 'bx lr'")
            to = hook if branch_in_range(brk, hook) else self.lp.ftrace.veneers.get(brk, hook)
            return CodeWrite(brk, struct.pack("<I", BX_LR), struct.pack("<I", encode_b(brk, to)))
        at = brk & ~1
        if m.read(at, 4) != T16_BX_LR_NOP:
            raise MachineError(f"_dl_debug_state at {at:#x} is not Thumb 'bx lr; nop'")
        veneer = self._near_thumb(at)
        branch = encode_t32_branch("b", at, veneer | 1)
        m.write_code([CodeWrite(veneer, bytes(8), T32_LDR_PC + struct.pack("<I", hook))],
                     unused=True)
        return CodeWrite(at, T16_BX_LR_NOP, struct.pack("<I", branch))

    def _near_thumb(self, at: int) -> int:
        """8 bytes within a ``b.w`` (±16 MiB) of *at*: alloc's *near* is an
        ARM ``b``'s ±32 MiB and takes the highest free place below near +
        32 MiB, so the hints put that limit within 16 MiB above *at*, then
        lower."""
        m = self.machine
        for hint in (at - (16 << 20) + (1 << 16), at - (24 << 20), at - (30 << 20)):
            veneer = m.alloc(8, near=hint & ~0xFFF)
            if abs(veneer - at) < (16 << 20) - 8:
                return veneer
            m.free(veneer, 8)
        raise MachineError(f"no memory within 16 MiB of _dl_debug_state ({at:#x})")

    @classmethod
    def wanted(cls, lp: Livepatch) -> bool:
        """Only a dynamically linked program has a dynamic linker to follow."""
        return lp.target.image.interpreter is not None

    def _r_debug(self) -> int:
        """Where ld.so keeps r_debug: the program's DT_DEBUG entry, as the
        program's memory holds it (ld.so fills it in)."""
        image = self.lp.target.image
        dyn = next((s for s in image.sections if s.type == SHT_DYNAMIC), None)
        if dyn is None:
            raise MachineError(f"{image.path}: no dynamic section")
        value = dynamic_entries(self.machine.read(dyn.addr, dyn.size)).get(DT_DEBUG)
        if value:
            return value
        raise MachineError(f"{image.path}: the dynamic linker left no r_debug (DT_DEBUG)")

    def pending(self) -> bool:
        """Whether a thread waits in the hook for armlp."""
        return read_word(self.machine, self.pending_at) != 0

    def event(self) -> None:
        """Bring the objects in line with what is mapped when ld.so's list is
        consistent, then let the waiting threads go on (also on an error)."""
        try:
            state = R_DEBUG.unpack(self.machine.read(self.r_debug, R_DEBUG.size))[3]
            self.changing = state != RT_CONSISTENT
            if state == RT_CONSISTENT:
                self._sync()
        finally:
            write_word(self.machine, self.pending_at, 0)
            self.last_event = time.monotonic()

    def catch_up(self) -> None:
        """Handle the event a thread waits in the hook with, if one does."""
        if self.pending():
            self.event()

    def settle(self, timeout: float, poll: float) -> None:
        """Before a request that runs beside the program's threads (the agent
        parked): a change ld.so has begun (an ``RT_ADD`` or ``RT_DELETE``
        let go) is let finish and handled first, as the kernel's
        klp_module_coming/going run under the mutex a patch takes.  Between
        the two events a library is being mapped or unmapped while armlp
        still has the list from before, and a request would read its code
        where it no longer is.  Bounded: past *timeout* the request goes on,
        and its own checks refuse code that is not what it expects."""
        deadline = time.monotonic() + timeout
        while True:
            self.catch_up()
            if not self.changing or time.monotonic() > deadline:
                return
            time.sleep(poll)

    def _sync(self) -> None:
        target, ft = self.lp.target, self.lp.ftrace
        now = {lib.soname: lib
               for lib in loaded_libraries(self.machine, target.image, self._images)}
        before = {lib.soname: lib for lib in target.loaded}
        # A soname mapped elsewhere than before was unloaded and loaded again.
        kept = {name for name, lib in before.items()
                if name in now and now[name].image.entry == lib.image.entry}
        for name in before.keys() - kept:
            was_object = name in ft.objects
            patches = self.lp.object_going(name)
            if was_object:
                self.log(f"library {name} unloaded" +
                         (f" (was patched by {', '.join(patches)})" if patches else ""))
        target.loaded = list(now.values())
        self.lp.forget_exports()
        for name, lib in now.items():
            if name in kept:
                continue
            try:
                result = scan(lib.image)
            except ArmlpError:
                continue                # stripped: not a patch object
            try:
                recs = ft.add_object(name, result)
                patches = self.lp.object_coming(name)
            except ArmlpError as exc:
                self.log(f"error: library {name} loaded but not patched: {exc}")
                continue
            self.log(f"library {name} loaded: {len(recs)} mcount sites" +
                     (f"; patched by {', '.join(patches)}" if patches else ""))
