"""The GDB remote machine: a real ARM Linux process behind a GDB stub.

:class:`GdbMachine` implements :class:`~armlp.machine.base.Machine` over an
:class:`~armlp.machine.rsp.RspConnection` to ``qemu-arm -g`` (see
:mod:`armlp.machine.qemu`) or to ``gdbserver`` on a device.

Stopped and running
    The machine starts stopped (a stub waits before the first instruction)
    and the protocol's operations need it stopped; :meth:`resume`,
    :meth:`stop` and :meth:`wait` move between the two.  Stops the target
    takes on its own because of a signal (SIGPROF of a gprof-linked
    program, SIGCHLD...) are invisible: :meth:`wait` hands the signal back
    to the program and continues.

    qemu-user 7.2 is not all-stop: only the thread that reported a stop is
    parked in the stub; the program's other threads keep running.  For a
    local qemu armlp stops them itself (*freezer*, see :meth:`all_stopped`)
    around code writes and the scan before a free; gdbserver is all-stop by
    itself.  Without either, every code write is still one aligned word per
    site (atomic for a running thread), ordered so the target is consistent
    at every instant.  qemu-user also ignores the interrupt byte while the
    program runs: :mod:`armlp.machine.qemu` stops it with a real-time signal
    to one thread instead (pass it as *interrupt*, and the signal's GDB
    number as *stop_signal*).

Stops
    qemu-user turns a signal that interrupts a blocking host call into
    ``EINTR`` for the guest, so armlp never signals a thread of the
    program's: with an agent (:meth:`~armlp.machine.inject.Injection.start_agent`)
    every stop goes to the agent, and system calls and calls run on it
    (:mod:`armlp.machine.inject`).

The door
    qemu-user 7.2 also hands every signal of the program's to its stub,
    which does not survive two threads inside.  With the stub's door found
    (:mod:`armlp.machine.door`), the first resume through
    :meth:`~armlp.machine.parking.Parking.park` leaves the agent parked in
    the stub for good with the door shut: requests are served at once, the
    program's signals go straight to the program, and the agent's system
    calls and calls come back through the door only with the program's
    threads held (:mod:`armlp.machine.parking`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

from armlp.errors import MachineError, StubStalledError
from armlp.machine.auxv import loaded_segments
from armlp.machine.base import CodeWrite, Region, Regs, code_images
from armlp.machine.door import StubDoor
from armlp.machine.freeze import Freezer
from armlp.machine.inject import (
    GDB_SIGINT,
    GDB_SIGTRAP,
    PAGE,
    STAGING,
    Injection,
    _decode_regs,
    _encode_regs,
    _page_down,
    _page_up,
)
from armlp.machine.qemu import HostMemory, parse_maps
from armlp.machine.rsp import RspConnection
from armlp.machine.rsp_packets import StopReply
from armlp.machine.scratch import SCRATCH_PAGES

#: GDB's numbers (as inject.GDB_SIGINT) of the signals a program takes in
#: its stride: ALRM, URG, CONT, CHLD, IO, VTALRM, PROF, WINCH, USR1, USR2.
_PASSED_SIGNALS = (14, 16, 19, 20, 23, 26, 27, 28, 30, 31)
#: How long the stub may take to answer while armlp holds the other threads
#: stopped (see GdbMachine.all_stopped); normally well under a millisecond.
FROZEN_REPLY_TIMEOUT = 0.25
#: Longest gap between two code writes that write_code fills with the bytes
#: it has just read back, to send one packet instead of two.
_GAP_FILL = 256
#: The ids qemu's stub gives a thread it has not finished creating.
_UNBORN = frozenset({0, 0xFFFFFFFF})


class GdbMachine(Injection):
    """A process behind a GDB stub (see the module docstring).

    *interrupt(thread)* stops the running target, preferably by stopping
    *thread* (default: the interrupt byte); *segments* overrides the
    program's ``PT_LOAD`` segments, otherwise read through the auxv.
    """

    def __init__(self, conn: RspConnection, *,
                 interrupt: Callable[[int | None], None] | None = None,
                 host_memory: HostMemory | None = None,
                 segments: Sequence[Region] | None = None,
                 call_timeout: float = 10.0, stop_signal: int = GDB_SIGINT,
                 freezer: Freezer | None = None, agent_signal: int | None = None,
                 door: StubDoor | None = None) -> None:
        self.conn = conn
        self._interrupt_thread = interrupt or (lambda _thread: conn.interrupt())
        self.call_timeout = call_timeout
        #: The GDB signal number of the stops *interrupt* causes (SIGINT for
        #: the interrupt byte; qemu: see armlp.machine.qemu.STOP_SIGNAL).
        self.stop_signal = stop_signal
        #: The guest signal number *interrupt* delivers (qemu: 62), when
        #: armlp may start its agent thread (see start_agent).
        self.agent_signal = agent_signal
        #: armlp's agent thread, once started: every stop of armlp's goes to it.
        self.agent: int | None = None
        #: The stub's door (armlp.machine.door), when found: from the first
        #: resume on, the agent stays *parked* in the stub with the door shut,
        #: and the program's own signals never enter the stub.
        self.door = door
        self.parked = False
        self.running = False
        self.exit: StopReply | None = None
        self.thread = 0
        self._pass: dict[int, int] = {}     # parked thread -> signal to hand back
        self._sigints = 0       # SIGINTs armlp sent that have not stopped a thread yet
        self._svc: int | None = None
        #: A dynamically linked program's interpreter (ld.so), as mapped: its
        #: text has the svc a first system call needs (the program's has none).
        self.interp_segments: list[Region] = []
        self._scratch: int | None = None
        self._staging: int | None = None
        #: Writes through /proc/PID/mem of a local qemu (see HostMemory).
        self.host_memory = host_memory
        #: qemu-user 7.2's stub stops one thread, the others run on; a stub
        #: that knows non-stop mode (gdbserver) runs in all-stop by default ...
        self.all_stop = conn.features.get("QNonStop") == "+"
        #: Freed heap blocks are never reused: under a stub, threads may be
        #: stopped inside the runtime holding a pointer to one.
        self.quarantine_heap: bool = True
        #: ... unless armlp may ptrace the local qemu: then code writes and
        #: the scan before a free stop every thread (see all_stopped).
        self.freezer = freezer
        self._listed_host: set[int] | None = None
        self._listed: list[int] | None = None
        self._copy_in_target = False
        self._bootstrap = False
        self._borrowed: tuple[int, bytes] | None = None
        self._breakpoints: set[int] = set()
        self._cache: dict[int, bytes] = {}
        self._allocs: dict[int, int] = {}
        self._rwx_text = False
        self._batch: list[tuple[int, bytes]] | None = None
        stop = conn.stop_reason()
        if stop.exited:
            raise MachineError(f"the target has {stop.describe()}")
        #: The process id: on Linux its first thread's id.
        tids = conn.thread_ids()
        self._pid: int | None = tids[0] if tids else None
        self._pass_signals()
        self._stopped(stop)
        if segments is None:
            self.entry, segments, self.interp_segments = loaded_segments(conn)
        self.segments = list(segments)

    # --- the Machine protocol ----------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        """Read memory (through /proc/PID/mem for a local qemu: no round trip)."""
        if size == 0:
            return b""
        self._flush_batch()
        self._need_stopped("read memory")
        return self._read_now(address, size)

    def _read_now(self, address: int, size: int) -> bytes:
        if self.host_memory is not None:
            try:
                data = self.host_memory.read(address, size)
                if len(data) == size:
                    return data
            except OSError:
                pass        # not mapped: the stub gives the error
        return self._cached_read(address, size)

    def write(self, address: int, data: bytes) -> None:
        """Write memory; inside :meth:`batch` the write is deferred and
        coalesced with its neighbours."""
        if not data:
            return
        if self._batch is not None:
            self._batch.append((address, bytes(data)))
            return
        self._need_stopped("write memory")
        self._raw_write(address, bytes(data))

    def write_code(self, writes: Sequence[CodeWrite], *, unused: bool = False,
                   stale_ok: bool = False) -> None:
        """Compare-and-swap code writes: one read per contiguous range,
        nothing written if any expected word differs, then coalesced writes
        (the stub's write path invalidates qemu's translations; gdbserver
        writes through ptrace, which flushes).  *unused* code under a local
        qemu is written through ``/proc/PID/mem`` with the program running:
        qemu translates only what a thread has executed, and a translation
        ends at the branch that ends a routine, so none holds those bytes
        (and mapping memory drops what qemu kept of an earlier mapping).
        *stale_ok*: the mprotect dropping translations waits (see Machine)."""
        self._flush_batch()
        self._need_stopped("write code")
        images = code_images(writes, self._read_now, _GAP_FILL)
        if self.host_memory is not None:
            with contextlib.nullcontext() if unused else self.all_stopped():
                for start, img in images:
                    self._raw_write(start, bytes(img))
            if not unused:
                self._drop_translations(images, stale_ok=stale_ok)
            return
        if any(self._read_only(start, len(img)) for start, img in images):
            self.make_text_writable()
        for start, img in images:
            self._raw_write(start, bytes(img))

    def flush_icache(self, address: int, size: int) -> None:
        """After a write behind the target's back (``/proc/PID/mem``): make
        qemu drop what it translated from those pages.  Stub writes flush by
        themselves (qemu's write path, gdbserver's ptrace)."""
        if size > 0 and self.host_memory is not None:
            self._drop_translations([(address, bytes(size))])

    @property
    def stops_all(self) -> bool:
        """Whether code writes and the scan before a free can stop every
        thread (the stub is all-stop, or armlp may freeze the others)."""
        return self.all_stop or self.freezer is not None

    @contextlib.contextmanager
    def all_stopped(self, *, registers: bool = False) -> Iterator[bool]:
        """``with machine.all_stopped() as stopped:`` every thread of the
        program is held still inside the block when *stopped* (the parked
        one in the stub, the others by :class:`~armlp.machine.freeze.Freezer`);
        without a freezer nothing changes and *stopped* is :attr:`all_stop`.

        Inside, only memory access and the stub's register reads: anything
        that runs qemu's own code on the parked thread (a system call, a
        call) could wait for a lock a frozen thread holds.  Even a register
        read can (seen: about 1 freeze in 500 with eight busy threads; the
        stub allocates memory for every packet, and a frozen thread may hold
        the allocator's lock): a stub reply that takes longer than
        :data:`FROZEN_REPLY_TIMEOUT` thaws the threads, waits for the late
        reply and raises :class:`~armlp.errors.StubStalledError`.  A freeze
        that fails (another tracer appeared) yields False: code writes then
        go on word by word, frees wait."""
        self._need_stopped("stop every thread")
        if self.freezer is None or self.freezer.is_frozen:
            yield self.stops_all
            return
        # Ordering: an agent out since a run comes back before the hold if the
        # block needs the stub (its way back runs qemu code that may want a
        # lock a held thread holds); code writes leave it out, for the mailbox.
        if registers:
            self.bring_back()
        try:
            self.freezer.freeze(keep={self.thread})
        except MachineError:
            yield self.all_stop
            return
        stalled = False
        try:
            with self.conn.timeout_of(FROZEN_REPLY_TIMEOUT):
                yield True
        except MachineError:
            if self.conn.in_flight is None:
                raise
            stalled = True
        finally:
            self.freezer.thaw()
        if stalled:
            what = self.conn.in_flight
            self.conn.settle()
            raise StubStalledError(f"the stub stalled on {what} while the other threads were "
                                   f"stopped (a lock one of them holds?)")

    def armlp_memory(self) -> list[tuple[int, int]]:
        """Every range armlp mapped in the target: its allocations, the
        scratch pages, the staging area."""
        out = [(a, a + n) for a, n in self._allocs.items()]
        if self._scratch is not None:
            out.append((self._scratch, self._scratch + SCRATCH_PAGES * PAGE))
        if self._staging is not None:
            out.append((self._staging, self._staging + STAGING))
        return out

    def regions(self) -> list[Region]:
        """The program's mapped memory as ``(start, end, perms)`` guest
        ranges: qemu's ``/proc/PID/maps`` for a local qemu, else the
        process's own through the stub's host I/O (``vFile``, gdbserver)."""
        if self.host_memory is not None:
            return self.host_memory.regions()
        if self._pid is None:
            raise MachineError("the process id is unknown: cannot read its memory map")
        return parse_maps(self.conn.read_file(f"/proc/{self._pid}/maps")
                          .decode("ascii", "replace"))

    def threads(self) -> list[int]:
        """The program's threads (armlp's agent is not one); asked of the stub
        only when the host's threads changed (a round trip is slow under load)."""
        self._need_stopped("list threads")
        # Ordering: the host's first: a thread the stub's list misses is new.
        host = set(self.freezer.tasks()) if self.freezer is not None else None
        if host is not None and host == self._listed_host and self._listed is not None:
            return list(self._listed)
        ids = self.conn.thread_ids()
        # A thread qemu is still creating is listed as 0 or -1 until it has
        # its id ("Hg0" picks any thread): left out, and not cached.
        self._listed_host = None if _UNBORN.intersection(ids) else host
        self._listed = [t for t in ids if t != self.agent and t not in _UNBORN]
        return list(self._listed)

    def threads_settled(self) -> bool:
        """A local qemu's threads are compared through ``/proc`` (the stub
        is not asked while the others are frozen; one it was still creating
        when it listed them is not settled); gdbserver is all-stop."""
        if self.freezer is None:
            return True
        return self._listed_host is not None and set(self.freezer.tasks()) <= self._listed_host

    def exact_registers(self, thread: int) -> bool:
        """gdbserver stops threads through ptrace: exact.  A local qemu's
        thread frozen by armlp is exact only inside a system call (qemu
        wrote its state back before making it; ``/proc/PID/task/TID/syscall``
        names one), or parked in the stub."""
        return self.freezer is None or thread == self.thread or self.freezer.in_syscall(thread)

    def cpu_times(self) -> dict[int, int] | None:
        """``/proc/PID/task/TID/schedstat``'s run time: exact for a stopped
        task (a running one's lags until its next tick)."""
        if self.freezer is None:
            return None
        return self.freezer.cpu_times()

    def get_regs(self, thread: int | None = None) -> Regs:
        """Registers of *thread* (default: the stopped thread).  Under
        qemu-user another thread keeps running: its values are a snapshot."""
        self._need_stopped("read registers")
        return _decode_regs(self.conn.read_all_registers(thread or self.thread))

    def set_regs(self, regs: Regs, thread: int | None = None) -> None:
        self._need_stopped("write registers")
        tid = thread or self.thread
        raw = self.conn.read_all_registers(tid)
        self.conn.write_all_registers(_encode_regs(raw, regs), tid)

    # --- running -------------------------------------------------------------

    def resume(self) -> None:
        """Let the program run (the stopped threads get back the signals
        they stopped with, except the ones armlp caused)."""
        self._flush_batch()
        self._need_stopped("resume")
        if self.parked:
            self.bring_back()       # the stub is served again between requests
            self._cache.clear()     # the program runs on: its memory may change
            return
        if self._breakpoints and self.conn.read_register(15, self.thread) in self._breakpoints:
            stop = self.conn.step(self.thread)      # off the breakpoint first
            if stop.exited:
                self._stopped(stop)
                raise MachineError(f"the target {stop.describe()}")
            if self._programs(stop):
                self._pass[self.thread] = stop.signal
        pending = dict(self._pass)
        self._pass.clear()
        self._cache.clear()
        self.running = True
        # Every parked thread needs its own continue (qemu-user parks each
        # thread that got a signal); the current one goes first.
        order = [self.thread, *(t for t in pending if t != self.thread)]
        for t in order:
            self.conn.resume(pending.get(t, 0), t)

    def stop(self, timeout: float | None = None) -> StopReply:
        """Stop the running program; returns the stop (or the exit, when it
        ended first)."""
        if not self.running:
            raise MachineError("the target is not running")
        self._sigints += 1
        self._interrupt_thread(self.agent or self.thread or None)
        stop = self.conn.wait(timeout or self.conn.timeout)
        if not stop.exited and stop.signal == self.stop_signal:
            self._sigints -= 1
        elif not stop.exited and stop.signal != GDB_SIGTRAP:
            # A signal of the program's own got there first: the thread is
            # parked all the same; it gets its signal back on resume, and
            # the SIGINT, still on its way, is dropped when it arrives.
            self._pass[stop.thread or self.thread] = stop.signal
        self._stopped(stop)
        return stop

    def wait(self, timeout: float | None = None) -> StopReply:
        """Wait until the program stops for armlp (breakpoint, stop signal) or
        ends; its own signals are handed back to it.  *timeout* None: no
        limit."""
        if not self.running and not self.parked:
            raise MachineError("the target is not running")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.parked:
            # The stub says nothing unasked behind a shut door but the end
            # of the connection when qemu ends.
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            stop = self.conn.wait(left, forever=left is None)
            if stop.exited:
                self._stopped(stop)
                return stop
            self.hand_back(stop.thread or self.thread, stop.signal if self._programs(stop) else 0)
        while True:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            stop = self.conn.wait(left, forever=left is None)
            if self._leftover(stop):
                self.conn.resume(0, stop.thread)
                continue
            if stop.exited or stop.signal in (self.stop_signal, GDB_SIGTRAP):
                self._stopped(stop)
                return stop
            self.conn.resume(stop.signal, stop.thread)

    def wait_exit(self, timeout: float | None = None) -> int:
        """Resume if stopped, run to the end and return the exit status
        (128 + n when killed by signal n)."""
        if self.exit is None and not self.running:
            self.resume()
        while self.exit is None:
            stop = self.wait(timeout)
            if not stop.exited:
                self.resume()
        assert self.exit is not None
        return self.exit.exit_status

    def set_breakpoint(self, address: int) -> None:
        """A software breakpoint (``Z0``): the thread reaching *address*
        stops; :meth:`wait` returns.  :meth:`resume` steps off it first.
        Not while parked: behind the shut door its trap would reach the
        program as the program's own SIGTRAP."""
        self._need_stopped("set a breakpoint")
        if self.parked:
            raise MachineError("no breakpoint while armlp's agent is parked in the stub")
        self.conn.set_breakpoint(address)
        self._breakpoints.add(address)

    def remove_breakpoint(self, address: int) -> None:
        self._need_stopped("remove a breakpoint")
        self.conn.remove_breakpoint(address)
        self._breakpoints.discard(address)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Defer :meth:`write` calls and send them coalesced at the end (or
        before the next read, code write or resume)."""
        if self._batch is not None:
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            pending, self._batch = self._batch, None
            self._write_merged(pending)

    # --- syscalls --------------------------------------------------------------

    def _pass_signals(self) -> None:
        """Let the program's everyday signals go to it without a stop
        (``QPassSignals``, when the stub has it): a ``-pg`` program's SIGPROF
        timer alone would stop every thread 100 times a second."""
        if self.conn.features.get("QPassSignals") != "+":
            return
        own = {GDB_SIGINT, GDB_SIGTRAP, self.stop_signal}
        passed = [s for s in _PASSED_SIGNALS if s not in own]
        self.conn.request_ok(b"QPassSignals:" + ";".join(f"{s:x}" for s in passed).encode(),
                             "QPassSignals")

    def _need_stopped(self, what: str) -> None:
        if self.exit is not None or self.conn.exit is not None:
            ex = self.exit or self.conn.exit
            assert ex is not None
            raise MachineError(f"cannot {what}: the target has {ex.describe()}")
        if self.running:
            raise MachineError(f"cannot {what}: the target is running (stop it first)")
        for st in self.conn.pending_stops:      # threads that parked meanwhile
            if st.thread is not None and st.thread != self.thread and \
                    not self._leftover(st):
                self._pass[st.thread] = 0 if self._armlps(st.signal) else st.signal
        self.conn.pending_stops.clear()
        if self.parked and self._pass and not (self.freezer and self.freezer.is_frozen):
            for t, sig in list(self._pass.items()):
                del self._pass[t]
                self.hand_back(t, sig)

    def _programs(self, stop: StopReply) -> bool:
        """Whether the signal a thread stopped with is the program's, to hand
        back (a stop signal armlp sent late is dropped on the way).  armlp's
        stop signal never is: one that no request of armlp's sent (the
        dynamic linker's hook sends it, armlp.control.libraries) stopped the
        agent, which goes on without it."""
        return not self._leftover(stop) and not self._armlps(stop.signal)

    def _armlps(self, signal: int) -> bool:
        """A breakpoint's or single step's SIGTRAP, or armlp's stop signal."""
        return signal in (GDB_SIGTRAP, self.stop_signal)

    def _leftover(self, stop: StopReply) -> bool:
        """A stop signal armlp sent that arrived after the target had stopped
        anyway: drop it."""
        if not stop.exited and stop.signal == self.stop_signal and self._sigints > 0:
            self._sigints -= 1
            return True
        return False

    def _stopped(self, stop: StopReply) -> None:
        self.running = False
        if stop.exited:
            self.exit = stop
            return
        if stop.thread is not None:
            self.thread = stop.thread
        elif not self.thread:
            self.thread = self.conn.thread_ids()[0]

    def _flush_batch(self) -> None:
        if self._batch:
            pending, self._batch = self._batch, []
            self._write_merged(pending)

    def _write_merged(self, pending: list[tuple[int, bytes]]) -> None:
        if not pending:
            return
        pending = sorted(pending, key=lambda p: p[0])
        merged: list[tuple[int, bytearray]] = []
        for addr, data in pending:
            if merged and merged[-1][0] + len(merged[-1][1]) >= addr:
                base, buf = merged[-1]
                off = addr - base
                buf[off:off + len(data)] = data
            else:
                merged.append((addr, bytearray(data)))
        self._need_stopped("write memory")
        for addr, buf in merged:
            self._raw_write(addr, bytes(buf))

    def _raw_write(self, address: int, data: bytes) -> None:
        self._forget(address, len(data))
        if self.host_memory is not None:
            self._poke(address, data)
            return
        if self._copy_in_target:
            self._target_copy(address, data)
            return
        try:
            self.conn.write_memory(address, data)
        except MachineError as exc:
            if "E14" not in str(exc):
                raise
            # qemu-user 7.2 write-protects every page it has translated code
            # from (its self-modifying-code guard) and its stub then refuses
            # to write there; with other threads still running (the stub is
            # not all-stop) an mprotect would be undone at once.  A store by
            # the target itself takes qemu's own SMC path (unprotect, drop
            # the translations), so from now on armlp's writes are copies
            # made by the target.
            self._copy_in_target = True
            self._target_copy(address, data)

    def _text_segment(self, address: int, size: int) -> Region | None:
        for seg in self.segments:
            if seg.executable and seg.start <= address and address + size <= seg.end:
                return seg
        return None

    def _cached_read(self, address: int, size: int) -> bytes:
        seg = self._text_segment(address, size)
        if seg is None:
            return self.conn.read_memory(address, size)
        out = bytearray()
        a = address
        while a < address + size:
            page = _page_down(a)
            data = self._cache.get(page)
            if data is None:
                lo, hi = max(page, seg.start), min(page + PAGE, seg.end)
                data = bytes(page - lo) + self.conn.read_memory(lo, hi - lo) if lo > page \
                    else self.conn.read_memory(lo, hi - lo)
                self._cache[page] = data
            end = min(address + size, page + PAGE)
            out += data[a - page:end - page]
            a = end
        return bytes(out)

    def _forget(self, address: int, size: int) -> None:
        if self._cache:
            for page in range(_page_down(address), address + size, PAGE):
                self._cache.pop(page, None)

    def _read_only(self, address: int, size: int) -> bool:
        return any(s.start < address + size and address < _page_up(s.end) and not s.writable
                   for s in self.segments)

