"""The agent parked in qemu-user's stub behind a shut door.

With the stub's door (:mod:`armlp.machine.door`) a GDB machine brings its
agent thread into the stub once, on the first resume, and keeps it there
with the door shut: the stub's read loop is the agent's, every request is
served at once, and no signal of the program's enters the stub.

The agent still runs code for armlp (system calls, calls).  Leaving the
stub needs nothing, but coming back does: a trap, and a trap reaches the
stub only through the open door, which would let the program's signals in
too.  So the agent runs its work behind the shut door and then waits in the
scratch page (``armlp_scratch_parked_return`` in ``runtime/scratch.S``);
armlp holds the program's threads still (ptrace), opens the door, tells the
agent to go on (it sends itself armlp's stop signal), and shuts the door
once the agent's stop has arrived.  No
thread of the program's can enter meanwhile: they are all held, and each
last looked at the door while it was shut.
"""

from __future__ import annotations

import contextlib
import fcntl
import struct
import termios
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from armlp.errors import MachineError, StubLostError
from armlp.machine.freeze import raise_priority, restore_priority
from armlp.machine.rsp import RspConnection
from armlp.machine.rsp_packets import StopReply
from armlp.machine.scratch import PAGE, scratch_code

if TYPE_CHECKING:
    from armlp.machine.door import StubDoor
    from armlp.machine.freeze import Freezer
    from armlp.machine.qemu import HostMemory

#: How long a thread armlp lets go from the stub takes to handle the
#: continue it has read (see Parking.hand_back): microseconds.
HANDLED_S = 0.001
#: How long the agent may take to trap back in with the program's threads
#: held; longer, and it waits for a lock one of them holds: they are let go.
BACK_TIMEOUT = 0.25
#: How long after its last run the agent out of the stub takes system calls
#: by the mailbox: well within the minute after which it goes home.
MAILBOX_FOR = 5.0


class Parking:
    """The parked agent for :class:`~armlp.machine.gdb.GdbMachine` (a
    mixin: the state is the machine's)."""

    conn: RspConnection
    door: StubDoor | None
    freezer: Freezer | None
    host_memory: HostMemory | None
    agent: int | None
    agent_signal: int | None
    parked: bool
    running: bool
    exit: StopReply | None
    thread: int
    stop_signal: int
    _sigints: int
    _scratch: int | None
    _cache: dict[int, bytes]
    #: The agent out of the stub since a run: (tid, its saved registers,
    #: its nice value before the run); the number of its last run, and when
    #: it was done.
    _out: tuple[int, bytes, int | None] | None = None
    #: The parked agent's own registers (see parked_registers).
    _saved: tuple[int, bytes] | None = None
    _runs = 0
    _done_at = 0.0

    _interrupt_thread: Callable[[int | None], None]

    def _stopped(self, stop: StopReply) -> None:
        raise NotImplementedError

    def _programs(self, stop: StopReply) -> bool:
        raise NotImplementedError

    def shut_for_park(self) -> None:
        """Before the resume that :meth:`park` follows: shut the door, so
        that none of the program's signals meets it open before the agent
        is parked (park then lets the agent alone in).  The threads stopped
        in the stub are past it; the program's breakpoints and traps go to
        the program from now on, as when parked."""
        if self.door is not None and self.agent is not None and self.freezer is not None \
                and not self.parked and not self.running:
            self.door.shut()

    def park(self) -> bool:
        """Once the program runs (resumed): bring the agent into the stub for
        good and shut the door behind it; whether the agent is parked."""
        if self.parked or self.door is None or self.agent is None or not self.running:
            return self.parked
        self._sigints += 1
        opened = False
        with contextlib.ExitStack() as held:
            if self.freezer is not None and not self.door.is_open:
                # resume shut the door: the program's threads are held still
                # while it is open for the agent, as when the agent comes
                # back (_come_back).  With the door open to them instead, a
                # thread taking a signal entered the stub beside the agent,
                # and two threads in the stub corrupt it: a program that
                # signalled itself at once lost its signal (hung) or armlp
                # the stub, one run in four.  Ordering: the resumed threads
                # have read their continues, and handled them (left the
                # stub: as in hand_back), before the hold; one held still
                # in the stub would stay there once the agent is in.
                _handled(self.conn)
                with contextlib.suppress(MachineError):     # another tracer: no hold
                    held.enter_context(self.freezer.frozen(keep={self.agent}))
                try:
                    self.door.open()
                except OSError:     # qemu is gone: the program ended behind the shut door
                    raise StubLostError("the program ended before armlp's agent was "
                                        "parked") from None
                opened = True
            self._interrupt_thread(self.agent)
            while True:
                try:
                    stop = self.conn.wait(self.conn.timeout)
                except StubLostError:
                    # The program ended meanwhile: its own end, the door open
                    # to the agent alone.
                    if opened:
                        self.door.shut_after_loss()
                    raise
                if stop.exited or stop.thread == self.agent:
                    break
                # A thread of the program's got in first (the door is open).
                self.hand_back(stop.thread or self.thread,
                               stop.signal if self._programs(stop) else 0)
            if not stop.exited:
                # Ordering: shut only once the agent is inside (its stop is
                # here), and before the program's threads are let go.
                self.door.shut()
                self.parked = True
                if stop.signal == self.stop_signal:
                    self._sigints -= 1
        self._stopped(stop)
        return self.parked

    def hand_back(self, thread: int, signal: int) -> None:
        """Let *thread*, parked in the stub by a signal of the program's (the
        door was open), go on with *signal*.  Every thread inside qemu's stub
        reads the same socket and a continue lets go whichever reads it, so
        with a door the agent is held still (ptrace) until the stub has read
        the continue, and a moment more for it to be handled."""
        if self.door is None or self.agent is None or self.freezer is None or \
                thread == self.agent:
            self.conn.resume(signal, thread)
            return
        with self.freezer.holding(self.agent):
            self.conn.resume(signal, thread)
            _handled(self.conn)

    def _begin_run(self) -> int:
        """The number of the agent's next run (its r6; it marks the run done
        with it, see ``parked_return`` in ``runtime/scratch.S``)."""
        self._runs += 1
        return self._runs

    def _run_parked(self, tid: int, saved: bytes, run: bytes, what: str,
                    timeout: float) -> int:
        """Run the parked agent *tid* from the registers *run* (a ``G``
        packet; r6 from :meth:`_begin_run`; its code ends in the scratch
        page's ``parked_return``) and return its r0.  The agent stays out,
        taking further system calls through the mailbox (:meth:`_post`),
        until the stub is next needed: the connection calls
        :meth:`bring_back` before its next packet.  *saved*: its own
        registers (:meth:`parked_registers`)."""
        # Ordering: an agent still out from a run comes back first (its way
        # back writes go), then the data page is set for this run.
        self.bring_back()
        host, data = self._data_page()
        code = scratch_code()
        host.write(data + code.offset("result"), bytes(12))        # result, done, go
        host.write(data + code.offset("go_signal"), struct.pack("<II", self.agent_signal or 0, 0))
        # The agent runs ahead of the program's threads while it works for
        # armlp: on a busy machine it would wait for a time slice, then for
        # the come-back, while armlp's request waits on it.
        nice = raise_priority(tid)
        try:
            self.conn.write_all_registers(run, tid)
            self._cache.clear()
            self.conn.resume(0, tid)
        except BaseException:
            restore_priority(tid, nice)
            raise
        self._out = (tid, saved, nice)
        self.conn.before_send = self.bring_back
        return self._await_run(self._runs, what, timeout)

    def _post(self, number: int, args: Sequence[int], what: str, timeout: float) -> int | None:
        """System call *number* by the mailbox of the agent, out since a
        recent run; None when it is not out (or has been too long: it goes
        home after a minute or more without news)."""
        if self._out is None or time.monotonic() - self._done_at > MAILBOX_FOR:
            return None
        host, data = self._data_page()
        code = scratch_code()
        run = self._begin_run()
        words = [a & 0xFFFFFFFF for a in args] + [0] * (6 - len(args))
        host.write(data + code.offset("next_args"), struct.pack("<6I", *words))
        host.write(data + code.offset("next_run"), struct.pack("<I", run))
        # Ordering: the number last: it is what the agent looks for.
        host.write(data + code.offset("next"), struct.pack("<I", number))
        return self._await_run(run, what, timeout)

    def _await_run(self, run: int, what: str, timeout: float) -> int:
        """Wait until the agent marks run *run* done; its r0."""
        host, data = self._data_page()
        code = scratch_code()
        done = data + code.offset("done")
        want = struct.pack("<I", run)
        deadline = time.monotonic() + timeout
        nap = 0.00005
        while (word := _read_word(host, done)) != want:
            if word is None:
                # The process is gone (a ^C, a fault): no agent to wait for.
                out, self._out = self._out, None
                self.conn.before_send = None
                if out is not None:
                    restore_priority(out[0], out[2])
                raise MachineError(f"the target ended during {what}")
            if time.monotonic() > deadline:
                # The agent is somewhere in the work: armlp stops parking
                # and lets it come back through the open door when it does.
                assert self.door is not None and self._out is not None
                tid, _saved, nice = self._out
                self._out = self._saved = None
                self.conn.before_send = None
                restore_priority(tid, nice)
                self.parked = False
                self.running = True         # its stop is a stop like any other
                self.door.open()
                host.write(data + code.offset("go"), struct.pack("<I", tid))
                raise MachineError(f"{what} did not return within {timeout} s")
            time.sleep(nap)
            nap = min(nap * 2, 0.002)
        self._done_at = time.monotonic()
        value: int = struct.unpack("<I", host.read(data + code.offset("result"), 4))[0]
        return value

    def parked_registers(self, tid: int) -> bytes:
        """The parked agent's own registers (a ``g`` packet), read once.
        Back in the stub after a run it keeps the registers of its way back
        (``parked_return``): should it ever leave the stub, that way leads
        home through ``restore`` to these (see ``runtime/scratch.S``), so
        they are not written back, and each run costs one round trip less
        on each side."""
        if self._saved is None or self._saved[0] != tid:
            self._saved = (tid, self.conn.read_all_registers(tid))
        return self._saved[1]

    def bring_back(self) -> None:
        """The agent, out since a run, back into the stub (nothing when it
        is in)."""
        out, self._out = self._out, None
        self.conn.before_send = None
        if out is None:
            return
        tid, _saved, nice = out
        _host, data = self._data_page()
        try:
            self._come_back(tid, data + scratch_code().offset("go"))
        finally:
            restore_priority(tid, nice)

    def _data_page(self) -> tuple[HostMemory, int]:
        host = self.host_memory
        assert host is not None and self._scratch is not None and self.door is not None
        return host, self._scratch + PAGE

    def _come_back(self, tid: int, go: int) -> None:
        """Let the agent waiting in ``parked_return`` trap back into the stub
        (see the module docstring)."""
        assert self.door is not None and self.host_memory is not None
        stop: StopReply | None = None
        with contextlib.ExitStack() as held:
            if self.freezer is not None:
                with contextlib.suppress(MachineError):     # another tracer: no hold
                    held.enter_context(self.freezer.frozen(keep={tid}))
            self.door.open()
            self.host_memory.write(go, struct.pack("<I", tid))
            with contextlib.suppress(MachineError):
                stop = self.conn.wait(BACK_TIMEOUT)
            if stop is not None and not stop.exited:
                # Ordering: shut before the threads are let go.
                self.door.shut()
        while stop is None or (not stop.exited and stop.thread not in (None, tid)):
            if stop is not None:        # only when the threads had to be let go
                self.hand_back(stop.thread or tid, stop.signal if self._programs(stop) else 0)
            stop = self.conn.wait(self.conn.timeout)
        if not stop.exited and self.door.is_open:
            self.door.shut()
        self._stopped(stop)
        if stop.exited:
            raise MachineError(f"the target {stop.describe()} while armlp's agent ran")


def _read_word(host: HostMemory, address: int) -> bytes | None:
    """Four bytes of the target's memory; None once the process is gone
    (its memory reads short or fails)."""
    try:
        data = host.read(address, 4)
    except OSError:
        return None
    return data if len(data) == 4 else None


def _handled(conn: RspConnection) -> None:
    """Wait until the stub has read everything armlp sent (the socket's send
    queue, ``SIOCOUTQ``, is empty; at most the connection's timeout), and a
    moment more for the thread that read a continue to act on it (leave
    the stub)."""
    deadline = time.monotonic() + conn.timeout
    while time.monotonic() < deadline:
        queued = fcntl.ioctl(conn.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
        if struct.unpack("i", queued)[0] == 0:
            break
        time.sleep(0.0001)
    time.sleep(HANDLED_S)
