"""The stub's door: keep the program's own signals out of qemu-user's stub.

qemu-user 7.2 hands every signal a guest thread takes to its GDB stub first
(``gdb_handlesig``): the thread writes a stop reply and reads the
debugger's answer from the stub's socket.  The stub is one set of globals
with no lock, so two threads inside at once corrupt it (its packet buffer,
its reply buffer, which thread a continue lets go): four threads that each
signal themselves every millisecond lose the debugger within a second.  A
patch cannot change how qemu is built, but the first thing
``gdb_handlesig`` checks is a flag of the stub's state, ``init``::

    if (!gdbserver_state.init || gdbserver_state.fd < 0)
        return sig;          /* no stub: the signal goes to the program */

and nothing else reads that flag while a thread is inside.  So armlp keeps
its agent thread parked in the stub (its socket is served by that thread's
read loop, which does not look at ``init``) and clears ``init``: every other
thread's signal then goes straight to the program, as without a debugger,
and the conversation with the parked agent goes on.  armlp sets the flag
only while its agent has to come back into the stub (a system call or a
call run on it, see :mod:`armlp.machine.gdb`), and clears it again when the
agent is back.

Finding the flag: qemu's binary has no symbols, so :meth:`StubDoor.find`
finds the stub's state by what it must hold: the socket path from qemu's
``-g`` argument, copied to the heap (``socket_path``), whose address sits in
qemu's writable data right after the stub's ``fd``, which must be a socket
of qemu's, with ``init`` set at the state's start.  The offsets are those
of qemu 7.2's ``GDBState`` on a 64-bit host (``line_buf`` is 4096 bytes);
anything else found there (another qemu, another layout) gives None, and
armlp works as before, with the program's signals going through the stub.
"""

from __future__ import annotations

import contextlib
import os
import platform
import struct
from pathlib import Path

#: Offsets in qemu 7.2's GDBState (x86_64 and aarch64 hosts): bool init at
#: 0; three CPUState pointers; enum state; char line_buf[4096]; three ints;
#: GByteArray *last_packet; int signal; int fd; char *socket_path.
_INIT, _FD, _SOCKET_PATH, _RUNNING = 0, 4156, 4160, 4168
_HOSTS = {"x86_64", "aarch64"}
#: The most of qemu's heap and data armlp reads to find the state.
_MAX_SCAN = 256 << 20


class StubDoor:
    """The ``init`` flag of a local qemu-user's stub (see the module
    docstring): :meth:`shut` keeps the program's signals out of the stub,
    :meth:`open` lets a thread in again."""

    def __init__(self, pid: int, state: int, mem: int) -> None:
        self.pid = pid
        #: Host address of qemu's GDBState.
        self.state = state
        self.is_open = True
        self._mem = mem         # qemu's /proc/PID/mem, read-write

    @classmethod
    def find(cls, pid: int) -> StubDoor | None:
        """The door of the qemu-user process *pid* serving its stub on a Unix
        socket, or None (another host, another qemu, no permission)."""
        if platform.machine() not in _HOSTS:
            return None
        try:
            path = _socket_argument(pid)
            if path is None:
                return None
            mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            state = _find_state(pid, mem, path.encode())
        except (OSError, ValueError):
            state = None
        if state is None:
            os.close(mem)
            return None
        return cls(pid, state, mem)

    def shut(self) -> None:
        """From now on a thread that takes a signal does not enter the stub."""
        self._set(0)

    def shut_after_loss(self) -> None:
        """The stub's connection ended while the door was open for armlp's
        agent alone: record it shut, as it was for the program, whose end
        it then was (written too where qemu's memory still takes it)."""
        with contextlib.suppress(OSError):
            self._set(0)
        self.is_open = False

    def open(self) -> None:
        """From now on a thread that takes a signal enters the stub."""
        self._set(1)

    def _set(self, value: int) -> None:
        os.pwrite(self._mem, bytes([value]), self.state + _INIT)
        self.is_open = bool(value)


def _socket_argument(pid: int) -> str | None:
    """qemu's ``-g`` argument when it is a path (a Unix socket), as qemu
    copied it.  (A wrong guess costs nothing: the state must still prove
    itself.)"""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for i, arg in enumerate(args[:-1]):
        if arg == b"-g":        # the first: a program's own "-g" comes later
            return None if args[i + 1].isdigit() else args[i + 1].decode()
    return None


def _find_state(pid: int, mem: int, path: bytes) -> int | None:
    """The host address of qemu's GDBState, proven by its fields."""
    exe = os.readlink(f"/proc/{pid}/exe")
    heap: list[tuple[int, int]] = []
    data: list[tuple[int, int]] = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            name = f[5] if len(f) > 5 else ""
            if not f[1].startswith("rw"):
                continue
            if name == "[heap]":
                heap.append((lo, hi))
            elif name == exe or (not name and data and data[-1][1] == lo):
                data.append((lo, hi))      # qemu's .data, then its .bss
    strings = [a for lo, hi in heap for a in _all(_read(mem, lo, hi), path + b"\0", lo)]
    for lo, hi in data:
        block = _read(mem, lo, hi)
        for s in strings:
            for at in _all(block, struct.pack("<Q", s), lo):
                state = at - _SOCKET_PATH       # may start in the region before
                if _proven(pid, mem, state):
                    return state
    return None


def _proven(pid: int, mem: int, state: int) -> bool:
    """``init`` set, ``fd`` a socket of qemu's, ``running_state`` 0 or 1."""
    try:
        init = os.pread(mem, 1, state + _INIT)
        fd, = struct.unpack("<i", os.pread(mem, 4, state + _FD))
        running, = struct.unpack("<i", os.pread(mem, 4, state + _RUNNING))
        if init != b"\x01" or fd < 0 or running not in (0, 1):
            return False
        return os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    except (OSError, struct.error):
        return False


def _read(mem: int, lo: int, hi: int) -> bytes:
    return os.pread(mem, min(hi - lo, _MAX_SCAN), lo)


def _all(block: bytes, needle: bytes, base: int) -> list[int]:
    out = []
    i = block.find(needle)
    while i >= 0:
        out.append(base + i)
        i = block.find(needle, i + 1)
    return out
