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

Syscalls in the target
    :meth:`syscall` borrows the stopped thread: saves its registers (the
    whole ``g`` packet), sets r7 and r0-r5, points pc at an ``svc #0`` of
    the program's text, single-steps it, reads r0 and writes the saved
    packet back, so the thread is restored bit for bit.  :meth:`alloc` is an
    ``mmap2`` with a hint within branch range of *near*, :meth:`free`
    ``munmap``; the first code write to the program's text makes the text
    RWX with an ``mprotect`` in the target (qemu-user refuses a stub write
    to a read-only page; after the target's own mprotect writes land and
    qemu drops the stale translations).

Calls
    :meth:`call` runs a function on the borrowed thread with ``lr`` at a
    breakpoint in a scratch page armlp maps, then restores the thread.
    Other threads run meanwhile.  Should armlp die, a system call or a call
    in progress ends in ``b restore``, which gives the thread back its own
    registers (see :mod:`armlp.control.guardian`).
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from armlp.errors import CodeModificationError, MachineError, StubStalledError
from armlp.machine.base import CodeWrite, Region, Regs
from armlp.machine.freeze import Freezer
from armlp.machine.qemu import HostMemory, parse_maps
from armlp.machine.rsp import RspConnection, StopReply
from armlp.machine.scratch import SCRATCH_PAGES, agent_mask, scratch_code

PAGE = 0x1000
#: Branch range of B/BL: a word within ±32 MiB.
BRANCH_RANGE = 32 << 20
#: ARM EABI syscall numbers armlp uses.
NR_GETPID, NR_MUNMAP, NR_MPROTECT, NR_MMAP2, NR_GETTID = 20, 91, 125, 192, 224
NR_CACHEFLUSH = 0xF0002
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
PROT_RWX = PROT_READ | PROT_WRITE | PROT_EXEC
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
#: GDB's signal numbers.
GDB_SIGINT, GDB_SIGTRAP = 2, 5
#: ``svc #0`` in ARM state.
SVC0 = 0xEF000000
#: clone flags of a thread (what pthread_create passes, less TLS and tid words).
CLONE_THREAD_FLAGS = 0x00050F00
NR_CLONE = 120
_STAGING = 16 * 4096
_CPSR_T = 1 << 5
_CPSR_IT = (0x3F << 10) | (0x3 << 25)
_AT_PHDR, _AT_PHENT, _AT_PHNUM, _AT_ENTRY = 3, 4, 5, 9
_PT_LOAD, _PF_X, _PF_W = 1, 1, 2
#: GDB's numbers of the signals a program takes in its stride: ALRM, URG,
#: CONT, CHLD, IO, VTALRM, PROF, WINCH, USR1, USR2.
_PASSED_SIGNALS = (14, 16, 19, 20, 23, 26, 27, 28, 30, 31)
#: How long the stub may take to answer while armlp holds the other threads
#: stopped (see GdbMachine.all_stopped); normally well under a millisecond.
FROZEN_REPLY_TIMEOUT = 0.25
#: Longest gap between two code writes that write_code fills with the bytes
#: it has just read back, to send one packet instead of two.
_GAP_FILL = 256


@dataclass(frozen=True)
class Segment:
    """A ``PT_LOAD`` segment of the program (from its program headers)."""

    start: int
    end: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & _PF_X)

    @property
    def writable(self) -> bool:
        return bool(self.flags & _PF_W)


def _page_down(v: int) -> int:
    return v & ~(PAGE - 1)


def _page_up(v: int) -> int:
    return (v + PAGE - 1) & ~(PAGE - 1)


class GdbMachine:
    """A process behind a GDB stub (see the module docstring).

    *interrupt(thread)* stops the running target, preferably by stopping
    *thread* — the one armlp last worked with (default: the interrupt byte);
    *segments* overrides the program's ``PT_LOAD`` segments, which are
    otherwise read through the stub's auxiliary vector.
    """

    def __init__(self, conn: RspConnection, *,
                 interrupt: Callable[[int | None], None] | None = None,
                 host_memory: HostMemory | None = None,
                 segments: Sequence[Segment] | None = None,
                 call_timeout: float = 10.0, stop_signal: int = GDB_SIGINT,
                 freezer: Freezer | None = None, agent_signal: int | None = None) -> None:
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
        self.running = False
        self.exit: StopReply | None = None
        self.thread = 0
        self._pass: dict[int, int] = {}     # parked thread -> signal to hand back
        self._sigints = 0       # SIGINTs armlp sent that have not stopped a thread yet
        self._svc: int | None = None
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
        self._copy_in_target = False
        self._bootstrap = False
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
        self.segments = list(segments) if segments is not None else self._read_segments()

    # --- the Machine protocol ----------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        """Read memory (through /proc/PID/mem for a local qemu: no round trip)."""
        if size == 0:
            return b""
        self._flush_batch()
        self._need_stopped("read memory")
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

    def write_code(self, writes: Sequence[CodeWrite]) -> None:
        """Compare-and-swap code writes: one read per contiguous range,
        nothing written if any expected word differs, then coalesced writes
        (the stub's write path invalidates qemu's translations; gdbserver
        writes through ptrace, which flushes)."""
        self._flush_batch()
        self._need_stopped("write code")
        for w in writes:
            if len(w.new) != len(w.expected):
                raise MachineError(f"code write at {w.address:#010x}: {len(w.new)} new bytes "
                                   f"for {len(w.expected)} expected")
        ordered = sorted((w for w in writes if w.new), key=lambda w: w.address)
        for a, b in itertools.pairwise(ordered):
            if a.address + len(a.new) > b.address:
                raise MachineError(f"code writes at {a.address:#010x} and {b.address:#010x} "
                                   f"overlap")
        runs: list[tuple[int, list[CodeWrite]]] = []
        for w in ordered:
            if runs:
                start, ws = runs[-1]
                end = ws[-1].address + len(ws[-1].new)
                if w.address - end <= _GAP_FILL:
                    ws.append(w)
                    continue
            runs.append((w.address, [w]))
        images: list[tuple[int, bytearray]] = []
        for start, ws in runs:
            end = ws[-1].address + len(ws[-1].new)
            found = self._cached_read(start, end - start)
            for w in ws:
                off = w.address - start
                cur = found[off:off + len(w.expected)]
                if cur != w.expected:
                    raise CodeModificationError(
                        f"code at {w.address:#010x} is {cur.hex()}, expected "
                        f"{w.expected.hex()}: refusing to write {w.new.hex()}")
            image = bytearray(found)
            for w in ws:
                off = w.address - start
                image[off:off + len(w.new)] = w.new
            images.append((start, image))
        if self.host_memory is not None:
            with self.all_stopped():
                for start, img in images:
                    self._raw_write(start, bytes(img))
            self._drop_translations(images)
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
    def all_stopped(self) -> Iterator[bool]:
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
            out.append((self._staging, self._staging + _STAGING))
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

    def _drop_translations(self, images: Sequence[tuple[int, bytes | bytearray]]) -> None:
        """After code was written behind qemu's back: an mprotect of the pages
        in the target makes qemu drop what it translated from them (a page
        it write-protected for its translations regains write permission,
        which invalidates them), so every thread runs the new code."""
        pages = sorted({p for start, img in images
                        for p in range(_page_down(start), _page_up(start + len(img)), PAGE)})
        runs: list[list[int]] = []
        for p in pages:
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + PAGE
            else:
                runs.append([p, p + PAGE])
        for lo, hi in runs:
            r = self._syscall(NR_MPROTECT, lo, hi - lo, PROT_RWX)
            if r != 0:
                raise MachineError(f"mprotect({lo:#010x}, {hi - lo:#x}) in the target failed: "
                                   f"errno {-_signed(r)}")

    def alloc(self, size: int, *, near: int | None = None) -> int:
        """``mmap2`` RWX anonymous memory in the target; with *near*, within
        ±32 MiB of it (the highest free place below near + 32 MiB, which
        leaves the program's brk room to grow)."""
        if size <= 0:
            raise MachineError(f"alloc of {size} bytes")
        size = _page_up(size)
        if near is None:
            addr = self._mmap(0, size)
            self._allocs[addr] = size
            return addr
        lo = max(PAGE, _page_up(near - BRANCH_RANGE + PAGE))
        hi = _page_down(near + BRANCH_RANGE - PAGE)
        taken = sorted([(s.start, s.end) for s in self.segments]
                       + [(a, a + n) for a, n in self._allocs.items()])
        hint = hi - size
        for _ in range(64):
            for s0, s1 in reversed(taken):      # step below what we know is taken
                if s0 < hint + size and hint < s1:
                    hint = _page_down(s0 - size)
            if hint < lo:
                break
            addr = self._mmap(hint, size)
            if lo <= addr and addr + size <= hi:
                self._allocs[addr] = size
                return addr
            self._syscall(NR_MUNMAP, addr, size)
            hint = _page_down(hint - max(size, 1 << 20))
        raise MachineError(f"no free memory of {size:#x} bytes within branch range of "
                           f"{near:#010x}")

    def free(self, address: int, size: int) -> None:
        size = _page_up(size) or PAGE
        r = self._syscall(NR_MUNMAP, address, size)
        if r != 0:
            raise MachineError(f"munmap({address:#010x}, {size:#x}) failed: "
                               f"errno {-_signed(r)}")
        self._allocs.pop(address, None)

    def call(self, address: int, args: Sequence[int] = (), *,
             max_instructions: int = 10_000_000) -> int:
        """Run the function at *address* on the stopped thread (AAPCS, at
        most four arguments) until it returns to a breakpoint in armlp's
        scratch page; restores the thread exactly.  *max_instructions* is
        not countable through a stub: :attr:`call_timeout` bounds the call."""
        if len(args) > 4:
            raise MachineError(f"call of {address:#010x}: at most four arguments "
                               f"({len(args)} given)")
        self._need_stopped("call a function")
        ret = self._scratch_at("return")
        tid = self.thread
        saved = self.conn.read_all_registers(tid)
        regs = _decode_regs(saved)
        r = list(regs.r)
        for i, a in enumerate(args):
            r[i] = a & 0xFFFFFFFF
        sp = (regs.sp - 256) & ~7
        cpsr = (regs.cpsr & ~(_CPSR_T | _CPSR_IT)) | (_CPSR_T if address & 1 else 0)
        self._arm_restore(tid, saved)
        self.conn.write_all_registers(_encode_regs(saved, Regs(r, sp, ret, address & ~1, cpsr)),
                                      tid)
        self.conn.set_breakpoint(ret)
        try:
            stop = self._run_until_trap(tid, ret, self.call_timeout,
                                        f"the call of {address:#010x}")
            if stop is None:
                raise MachineError(f"the call of {address:#010x} did not return within "
                                   f"{self.call_timeout} s")
            result = self.conn.read_register(0, tid)
        finally:
            if self.exit is None:
                with contextlib.suppress(MachineError):
                    self.conn.remove_breakpoint(ret)
                self.conn.write_all_registers(saved, tid)
        return result

    def threads(self) -> list[int]:
        """The program's threads (armlp's agent thread is not one)."""
        self._need_stopped("list threads")
        return [t for t in self.conn.thread_ids() if t != self.agent]

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
        if self._breakpoints and self.conn.read_register(15, self.thread) in self._breakpoints:
            stop = self.conn.step(self.thread)      # off the breakpoint first
            if stop.exited:
                self._stopped(stop)
                raise MachineError(f"the target {stop.describe()}")
            if stop.signal != GDB_SIGTRAP and not self._leftover(stop):
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
        if not self.running:
            raise MachineError("the target is not running")
        deadline = None if timeout is None else time.monotonic() + timeout
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
        if self.exit.kind == "W":
            return self.exit.status or 0
        return 128 + self.exit.signal

    def set_breakpoint(self, address: int) -> None:
        """A software breakpoint (``Z0``): the thread reaching *address*
        stops; :meth:`wait` returns.  :meth:`resume` steps off it first."""
        self._need_stopped("set a breakpoint")
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

    def syscall(self, number: int, *args: int) -> int:
        """Run system call *number* on the stopped thread; returns r0 (a
        negative errno as its two's complement)."""
        self._flush_batch()
        self._need_stopped("run a system call")
        return self._syscall(number, *args)

    def make_text_writable(self) -> None:
        """``mprotect`` every executable segment of the program RWX."""
        if self._rwx_text:
            return
        for seg in self.segments:
            if seg.executable:
                start, end = _page_down(seg.start), _page_up(seg.end)
                r = self._syscall(NR_MPROTECT, start, end - start, PROT_RWX)
                if r != 0:
                    raise MachineError(f"mprotect({start:#010x}, {end - start:#x}, RWX) in "
                                       f"the target failed: errno {-_signed(r)}")
        self._rwx_text = True

    def start_agent(self) -> int:
        """Start armlp's agent thread in the stopped program and return its id.

        The agent (``runtime/scratch.S``) is a thread of the program that
        blocks every signal but :attr:`agent_signal` and sleeps.  From then on
        :meth:`stop` signals the agent alone, so the stop interrupts none of
        the program's system calls: qemu-user turns a signal that interrupts
        a blocking host call into ``EINTR`` for the guest (a program in
        ``read``, ``poll`` or ``nanosleep`` would see it), and the agent's
        own wait is the only one interrupted.  System calls and calls run on
        the stopped agent too, never on a thread of the program's."""
        if self.agent is not None:
            return self.agent
        if self.agent_signal is None:
            raise MachineError("this stub has no agent signal: cannot start the agent thread")
        self._need_stopped("start the agent thread")
        base = self._scratch_base()
        stack = base + SCRATCH_PAGES * PAGE - 64
        tid = self._syscall(NR_CLONE, CLONE_THREAD_FLAGS, stack, 0, 0, 0, at="clone")
        if _signed(tid) <= 0:
            raise MachineError(f"clone of armlp's agent thread in the target failed: "
                               f"errno {-_signed(tid)}")
        self.agent = tid
        return tid

    # --- internals ---------------------------------------------------------------

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
                self._pass[st.thread] = 0 if st.signal == GDB_SIGTRAP else st.signal
        self.conn.pending_stops.clear()

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
            try:
                self.host_memory.write(address, data)
                return
            except OSError as exc:
                raise MachineError(f"writing {len(data)} bytes at {address:#010x} through "
                                   f"/proc/{self.host_memory.pid}/mem: {exc.strerror}") from None
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

    def _target_copy(self, address: int, data: bytes) -> None:
        """Write *data* by running armlp's copy routine in the target: the
        bytes go to a data-only staging area, the target copies them
        (aligned words with single stores, so no thread sees half a word)."""
        if self._staging is None:
            self._staging = self._mmap(0, _STAGING, prot=PROT_READ | PROT_WRITE)
        copy = self._scratch_at("copy")
        for off in range(0, len(data), _STAGING):
            part = data[off:off + _STAGING]
            self.conn.write_memory(self._staging, part)
            self.call(copy, (address + off, self._staging, len(part)))

    # The program's text changes only through armlp: while the target is
    # stopped, reads inside its executable segments come from a page cache
    # (the livepatch core reads sites and entry words one by one).

    def _text_segment(self, address: int, size: int) -> Segment | None:
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

    def _read_segments(self) -> list[Segment]:
        if self.conn.features.get("qXfer:auxv:read") != "+":
            raise MachineError("the stub does not serve the auxiliary vector "
                               "(qXfer:auxv:read): pass the program's segments")
        auxv = self.conn.read_xfer("auxv", "")
        vals: dict[int, int] = {}
        for i in range(0, len(auxv) - 7, 8):
            k, v = struct.unpack_from("<II", auxv, i)
            if k == 0:
                break
            vals[k] = v
        phdr, phent, phnum = vals.get(_AT_PHDR), vals.get(_AT_PHENT, 32), vals.get(_AT_PHNUM)
        if phdr is None or phnum is None or phent < 32:
            raise MachineError("the auxiliary vector has no program headers (AT_PHDR)")
        self.entry = vals.get(_AT_ENTRY, 0)
        raw = self.conn.read_memory(phdr, phent * phnum)
        segs = []
        for i in range(phnum):
            p_type, _off, vaddr, _pa, _fsz, memsz, flags, _al = struct.unpack_from(
                "<8I", raw, i * phent)
            if p_type == _PT_LOAD and memsz:
                segs.append(Segment(vaddr, vaddr + memsz, flags))
        if not segs:
            raise MachineError("the program has no PT_LOAD segment")
        return segs

    def _find_svc(self) -> int:
        """An ``svc #0`` to run system calls with: armlp's own in the scratch
        page once it exists; before that (for the scratch page's mmap) one in
        the program's text followed by an instruction without side effects
        outside the registers (qemu-user 7.2 steps the instruction after an
        ``svc`` together with it; the registers are restored anyway)."""
        if self._scratch is not None:
            return self._scratch_at("svc")
        if self._svc is not None:
            return self._svc
        chunk = 2048
        for seg in self.segments:
            if not seg.executable:
                continue
            a = (seg.start + 3) & ~3
            while a < seg.end:
                n = min(chunk, seg.end - a) & ~3
                if n <= 0:
                    break
                data = self.conn.read_memory(a, n + 4 if a + n + 4 <= seg.end else n)
                for i in range(0, n, 4):
                    if struct.unpack_from("<I", data, i)[0] != SVC0 or i + 8 > len(data):
                        continue
                    if _harmless(struct.unpack_from("<I", data, i + 4)[0]):
                        self._svc = a + i
                        return a + i
                a += n
        raise MachineError("no usable 'svc #0' instruction in the program's text to run a "
                           "system call with")

    def _syscall(self, number: int, *args: int, at: str = "svc") -> int:
        """System call *number* on the stopped thread, through the scratch
        page's ``svc`` named *at*; the thread's registers are restored."""
        if len(args) > 6:
            raise MachineError(f"syscall {number}: at most six arguments")
        if self._scratch is None and not self._bootstrap:
            self._bootstrap = True      # the scratch page's own mmap uses the text's svc
            try:
                self._scratch_base()
            finally:
                self._bootstrap = False
        svc = self._find_svc() if self._scratch is None else self._scratch_at(at)
        tid = self.thread
        saved = self.conn.read_all_registers(tid)
        regs = _decode_regs(saved)
        r = list(regs.r)
        for i in range(6):
            r[i] = args[i] & 0xFFFFFFFF if i < len(args) else 0
        r[7] = number
        cpsr = regs.cpsr & ~(_CPSR_T | _CPSR_IT)
        if self._scratch is not None:
            self._arm_restore(tid, saved)
        self.conn.write_all_registers(_encode_regs(saved, Regs(r, regs.sp, regs.lr, svc, cpsr)),
                                      tid)
        try:
            for _ in range(16):
                stop = self.conn.step(tid)
                if stop.exited:
                    self._stopped(stop)
                    raise MachineError(f"the target {stop.describe()} during syscall {number}")
                pc = self.conn.read_register(15, tid)
                done = (svc + 4, svc + 8)            # qemu-user 7.2 steps one more
                if pc in done or (self._scratch is not None
                                  and pc == self._scratch_at("restore")):
                    return self.conn.read_register(0, tid)
                if pc != svc:
                    raise MachineError(f"syscall {number}: single step from {svc:#010x} "
                                       f"stopped at {pc:#010x} (signal {stop.signal})")
                if stop.signal != GDB_SIGTRAP and not self._leftover(stop):
                    self._pass[tid] = stop.signal       # a signal came first: keep it
            raise MachineError(f"syscall {number}: the svc at {svc:#010x} never completed")
        finally:
            if self.exit is None:
                self.conn.write_all_registers(saved, tid)

    def _mmap(self, hint: int, size: int, *, prot: int = PROT_RWX) -> int:
        r = self._syscall(NR_MMAP2, hint, size, prot, MAP_PRIVATE | MAP_ANONYMOUS,
                          0xFFFFFFFF, 0)
        if _signed(r) < 0 and _signed(r) > -4096:
            raise MachineError(f"mmap of {size:#x} bytes RWX in the target failed: "
                               f"errno {-_signed(r)}")
        return r

    def _scratch_base(self) -> int:
        """armlp's pages in the target (see :mod:`armlp.machine.scratch`),
        mapped and written on first use.

        Why ``restore``: if armlp dies while a system call runs on a borrowed
        thread, the stub lets the thread go on without armlp; it falls
        through to ``restore``, which reloads its own registers, flags
        included, and jumps back to where it was."""
        if self._scratch is None:
            addr = self._mmap(0, SCRATCH_PAGES * PAGE)
            mask = agent_mask(self.agent_signal) if self.agent_signal else (0xFFFFFFFF,) * 2
            self.conn.write_memory(addr, scratch_code().page((mask[0], mask[1])))
            self._scratch = addr
        return self._scratch

    def _scratch_at(self, name: str) -> int:
        """Address of the scratch page's entry ``armlp_scratch_NAME``."""
        return self._scratch_base() + scratch_code().offset(name)

    def _arm_restore(self, tid: int, saved: bytes) -> None:
        """Prepare ``restore`` to give thread *tid* back its registers *saved*:
        the save block, and its r12 and pc just below its sp."""
        assert self._scratch is not None
        regs = _decode_regs(saved)
        pc = regs.pc | (1 if regs.cpsr & _CPSR_T else 0)
        block = struct.pack("<17I", *regs.r, regs.sp, regs.lr, pc, regs.cpsr)
        self.conn.write_memory(self._scratch + PAGE, block)
        self.conn.write_memory(regs.sp - 8, struct.pack("<II", regs.r[12], pc))

    def _run_until_trap(self, tid: int, pc_wanted: int, timeout: float,
                        what: str) -> StopReply | None:
        self._cache.clear()
        self.running = True
        self.conn.resume(0, tid)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._interrupt_thread(self.thread or None)
                stop = self.conn.wait(self.conn.timeout)
                self._stopped(stop)
                return None
            try:
                stop = self.conn.wait(left)
            except MachineError as exc:
                if "timed out" not in str(exc):
                    raise
                continue
            if stop.exited:
                self._stopped(stop)
                raise MachineError(f"the target {stop.describe()} during {what}")
            if self._leftover(stop):
                self.conn.resume(0, stop.thread)
                continue
            if stop.signal == GDB_SIGTRAP:
                self._stopped(stop)
                pc = self.conn.read_register(15, stop.thread or tid)
                if pc != pc_wanted:
                    raise MachineError(f"{what} stopped at {pc:#010x} (breakpoint or step "
                                       f"not armlp's)")
                return stop
            if stop.signal in (11, 4, 10, 8, 6):      # SEGV, ILL, BUS, FPE, ABRT
                self._stopped(stop)
                pc = self.conn.read_register(15, stop.thread or tid)
                raise MachineError(f"{what} faulted with signal {stop.signal} at pc {pc:#010x}")
            self.conn.resume(stop.signal, stop.thread)


def _harmless(word: int) -> bool:
    """An unconditional ARM instruction that only writes registers other
    than pc: data processing (not multiply or the extra load/store space),
    ``ldr``/``ldrb`` or ``ldm`` without pc."""
    if word >> 28 != 0xE:
        return False
    op = (word >> 25) & 7
    rd = (word >> 12) & 0xF
    if op == 0:     # data processing, register: bits 7 and 4 both set is something else
        if (word >> 7) & 1 and (word >> 4) & 1:
            return False
        opcode = (word >> 21) & 0xF
        if (word >> 20) & 1 == 0 and 8 <= opcode <= 11:     # misc space (msr, bx...)
            return False
        return rd != 15
    if op == 1:     # data processing, immediate
        opcode = (word >> 21) & 0xF
        if (word >> 20) & 1 == 0 and 8 <= opcode <= 11:     # movw/movt/msr
            return (word >> 20) & 0x1B == 0x10 and rd != 15   # movw, movt
        return rd != 15
    if op in (2, 3):    # single load/store (op 3 with bit 4: media/udf)
        if op == 3 and (word >> 4) & 1:
            return False
        return bool((word >> 20) & 1) and rd != 15
    if op == 4:     # ldm/stm
        return bool((word >> 20) & 1) and not (word >> 15) & 1
    return False


def _signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _cpsr_offset(raw: bytes) -> int:
    # qemu after the target description, gdbserver: r0-r15, cpsr, (VFP...).
    # The legacy layout (no XML): r0-r15, f0-f7 (12 bytes each), fps, cpsr.
    return 164 if len(raw) == 168 else 64


def _decode_regs(raw: bytes) -> Regs:
    if len(raw) < 68:
        raise MachineError(f"register packet of {len(raw)} bytes: expected r0-r15 and cpsr")
    core = struct.unpack_from("<16I", raw, 0)
    cpsr = struct.unpack_from("<I", raw, _cpsr_offset(raw))[0]
    return Regs(list(core[:13]), core[13], core[14], core[15], cpsr)


def _encode_regs(raw: bytes, regs: Regs) -> bytes:
    out = bytearray(raw)
    vals = regs.as_list()
    struct.pack_into("<16I", out, 0, *(v & 0xFFFFFFFF for v in vals[:16]))
    struct.pack_into("<I", out, _cpsr_offset(raw), vals[16] & 0xFFFFFFFF)
    return bytes(out)
