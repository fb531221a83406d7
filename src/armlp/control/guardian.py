"""The guardian: the program outlives a controller that dies.

A controller holds the only connection to the program's GDB stub, and qemu
7.2's stub treats the end of that connection badly:

* it writes its next stop report into the closed socket without
  ``MSG_NOSIGNAL``, so qemu takes a SIGPIPE, which it hands to the program
  as the program's own signal — by default fatal;
* a stop armlp caused and had not yet answered (the signal that parks a
  thread, a single step, a breakpoint of a call in progress) reaches the
  program as a SIGTRAP or as that signal once no debugger is left.

So at start the controller forks a guardian that shares the stub socket and
sleeps on a pipe.  Through the pipe the controller says whether it has the
program paused (``p``: a stop of armlp's is in flight or being served) or
running (``r``), and ``q`` when it ends normally.  When the pipe closes
without ``q`` the controller is gone and the guardian takes over the
socket, like ``gdb`` would on detach:

* if armlp had the program paused, it ends any packet the controller left
  half written (``#00``) and sends ``D``: qemu removes armlp's breakpoints
  and lets the parked thread go on (its registers already lead it back to
  its own code: see :mod:`armlp.machine.gdb`);
* from then on it answers every stop: a program's own signal is handed back
  (``C sig``), armlp's stop signal and a single step's SIGTRAP are dropped
  (``c``), until the program ends or qemu closes the socket.

The target's memory holds the truth about what is patched, so the program
runs on with whatever the dead controller had fully applied.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from collections.abc import Collection

from armlp.machine.rsp_packets import frame

#: GDB's SIGTRAP: the stop of a single step or breakpoint.
GDB_SIGTRAP = 5
#: Ends whatever packet the controller left half written, from any state of
#: qemu's packet reader (inside a packet, after an escape or run-length
#: byte, inside the checksum): the packet fails its checksum and is dropped.
_FLUSH = b"x#00"
#: A packet, and a stop reply's body (``T``/``S`` signal, ``W``/``X`` end);
#: the other replies the dead controller left unread are acked and skipped.
_PACKET = re.compile(rb"\$([^$#]*)#[0-9a-fA-F]{2}")
_STOP = re.compile(rb"([TSWX])([0-9a-fA-F]{2})(?:[^$#]*)")
#: How long a paused program's guardian waits for a stop still on its way.
_SETTLE = 0.3


class Guardian:
    """The controller's side: tell the guardian process what state the
    program is in, and stand it down at a normal end."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid = pid
        self._pipe: int | None = pipe

    @classmethod
    def start(cls, sock: socket.socket, *, ours: Collection[int]) -> Guardian:
        """Fork the guardian of the stub connection *sock*; *ours* are the
        GDB signal numbers of the stops armlp causes (dropped on takeover)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:      # the guardian: never returns into the controller's code
            try:
                os.close(w)
                _watch(r, sock, frozenset(ours) | {GDB_SIGTRAP})
            finally:
                os._exit(0)
        os.close(r)
        return cls(pid, w)

    def paused(self) -> None:
        """The controller is about to stop the program (or has it stopped)."""
        self._say(b"p")

    def running(self) -> None:
        """The program runs; nothing of armlp's is in flight."""
        self._say(b"r")

    def stand_down(self) -> None:
        """The controller ends normally: the guardian exits without touching
        the stub."""
        if self._pipe is None:
            return
        self._say(b"q")
        with contextlib.suppress(OSError):
            os.close(self._pipe)
        self._pipe = None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def abandon(self, *, wait: bool) -> None:
        """The controller gives up (an error it cannot recover from): the
        guardian takes over as if the controller had died.  With *wait*,
        return once it has ended (when the program has: it is armlp's child)."""
        if self._pipe is None:
            return
        with contextlib.suppress(OSError):
            os.close(self._pipe)
        self._pipe = None
        if wait:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)

    def _say(self, what: bytes) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe, what)


def _watch(pipe: int, sock: socket.socket, drop: frozenset[int]) -> None:
    """The guardian process: wait for the controller to end; take over if it
    did not stand us down."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)      # a terminal's ^C is for the program
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)       # hold no pipe of the caller open
    keep = {0, 1, 2, pipe, sock.fileno()}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    state = b"p"      # the controller starts with the program stopped
    while True:
        data = os.read(pipe, 256)
        if not data:
            break
        if b"q" in data:
            return
        state = data[-1:]
    _take_over(sock, paused=state == b"p", drop=drop)


def _take_over(sock: socket.socket, *, paused: bool, drop: frozenset[int]) -> None:
    """Serve the stub until the program ends (see the module docstring).

    Every packet is acked (qemu 7.2 resends a packet for every other byte it
    reads meanwhile).  A stop of armlp's kind (its stop signal, SIGTRAP) is
    answered with ``D``: qemu removes every breakpoint and lets the thread
    go.  A stop that arrives before that ``D``'s ``OK`` was answered by it,
    and gets no second answer (a stray continue would be taken by the next
    stop, and every later signal would reach the wrong stop).  Paused: a
    stop still on its way gets ``D`` as its answer; if none comes within
    :data:`_SETTLE` seconds the parked thread waits for a command, and gets
    the ``D``."""
    try:
        sock.sendall(b"+" + _FLUSH)
        detach_owed, detach_sent = paused, False
        sock.settimeout(_SETTLE if paused else None)
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                sock.settimeout(None)
                if detach_owed:
                    sock.sendall(frame(b"D"))
                    detach_owed, detach_sent = False, True
                continue
            if not chunk:
                return      # qemu is gone
            buf += chunk
            end = 0
            for m in _PACKET.finditer(buf):
                end = m.end()
                sock.sendall(b"+")
                body = m.group(1)
                if body == b"OK" and detach_sent:
                    detach_sent = False
                    continue
                stop = _STOP.fullmatch(body)
                if stop is None or detach_sent:
                    continue
                kind, sig = stop.group(1), int(stop.group(2), 16)
                if kind in (b"W", b"X"):
                    return
                if sig in drop:
                    sock.sendall(frame(b"D"))
                    detach_owed, detach_sent = False, True
                    sock.settimeout(None)
                else:
                    sock.sendall(frame(b"C%02x" % sig))
            buf = buf[end:][-4096:]      # an unfinished packet is kept
    except OSError:
        return
