"""A minimal Linux syscall layer for the emulator (ARM EABI numbers).

Enough for the freestanding programs armlp builds: ``write``/``writev`` to
captured stdout/stderr (and optionally the real file descriptors),
``exit``/``exit_group``, ``brk``, ``clock_gettime``, ``nanosleep``,
``clock_nanosleep``, ``getpid``/``gettid``, ``mprotect`` (static glibc's
RELRO) and ARM's ``set_tls``.  Anything
else returns ``-ENOSYS`` and is recorded in :attr:`LinuxSyscalls.unknown`.

Time is virtual by default, so runs are reproducible: with instruction
counting on, the clock advances :attr:`VirtualClock.ns_per_instruction`
nanoseconds per executed instruction; without it, each clock read advances
it by :attr:`VirtualClock.ns_per_read`.  Sleeps advance it by their length
and return at once.  ``clock="host"`` uses the host's clocks and really
sleeps instead.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from armlp.errors import MachineError

# ARM EABI syscall numbers (arch/arm/tools/syscall.tbl).
SYS_EXIT = 1
SYS_WRITE = 4
SYS_GETPID = 20
SYS_BRK = 45
SYS_MPROTECT = 125
SYS_WRITEV = 146
SYS_NANOSLEEP = 162
SYS_GETTID = 224
SYS_EXIT_GROUP = 248
SYS_CLOCK_GETTIME = 263
SYS_CLOCK_NANOSLEEP = 265
SYS_CLOCK_GETTIME64 = 403
SYS_CLOCK_NANOSLEEP_TIME64 = 407
ARM_SET_TLS = 0x0F0005

EBADF, ENOMEM, EFAULT, EINVAL, ENOSPC, ENOSYS = 9, 12, 14, 22, 28, 38
#: At most this much per write (what a pipe takes at once: a short write).
MAX_WRITE = 64 * 1024
#: The most output a program may leave in the emulator's buffers.
MAX_OUTPUT = 256 << 20

CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID = 2, 3
CLOCK_MONOTONIC_RAW, CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE, CLOCK_BOOTTIME = 4, 5, 6, 7
TIMER_ABSTIME = 1

NAMES = {SYS_EXIT: "exit", SYS_WRITE: "write", SYS_GETPID: "getpid", SYS_BRK: "brk",
         SYS_WRITEV: "writev", SYS_NANOSLEEP: "nanosleep", SYS_GETTID: "gettid",
         SYS_EXIT_GROUP: "exit_group", SYS_CLOCK_GETTIME: "clock_gettime",
         SYS_CLOCK_NANOSLEEP: "clock_nanosleep", SYS_CLOCK_GETTIME64: "clock_gettime64",
         SYS_CLOCK_NANOSLEEP_TIME64: "clock_nanosleep_time64", ARM_SET_TLS: "ARM_set_tls",
         SYS_MPROTECT: "mprotect"}

_TS32 = struct.Struct("<ii")
_TS64 = struct.Struct("<qq")   # 64-bit time_t: tv_sec, then tv_nsec in a 64-bit slot
_NS = 1_000_000_000


class SyscallHost(Protocol):
    """What the syscall layer needs from the machine it serves."""

    def read(self, address: int, size: int) -> bytes: ...

    def write(self, address: int, data: bytes) -> None: ...

    def set_brk(self, address: int) -> int:
        """Move the program break; return the new break (the old one on failure)."""
        ...

    def set_tls(self, value: int) -> None: ...

    def protect(self, address: int, size: int, prot: int) -> bool:
        """``mprotect``: False if part of the range is not mapped."""
        ...

    @property
    def instructions(self) -> int | None:
        """Instructions executed so far, or None when counting is off."""
        ...


@dataclass(frozen=True)
class UnknownSyscall:
    """A syscall the layer does not implement (it returned -ENOSYS)."""

    number: int
    args: tuple[int, ...]
    pc: int


@dataclass
class VirtualClock:
    """Deterministic time: see the module docstring."""

    ns_per_instruction: int = 1
    ns_per_read: int = 1_000
    realtime_base_ns: int = 1_700_000_000 * _NS
    monotonic_base_ns: int = 1_000 * _NS
    slept_ns: int = 0
    reads: int = 0

    def elapsed_ns(self, instructions: int | None, *, with_sleep: bool = True) -> int:
        """Time since the start: run time (instructions or reads) plus sleeps."""
        run = (instructions * self.ns_per_instruction if instructions is not None
               else self.reads * self.ns_per_read)
        return run + (self.slept_ns if with_sleep else 0)


@dataclass
class SyscallStop:
    """Returned by :meth:`LinuxSyscalls.handle` when the program exits."""

    status: int


@dataclass
class LinuxSyscalls:
    """The syscall table of one emulated process.

    *echo* also writes fds 1 and 2 to the host's own stdout/stderr;
    *clock* is ``"virtual"`` (default, reproducible) or ``"host"``.
    """

    echo: bool = False
    clock: Literal["virtual", "host"] = "virtual"
    vclock: VirtualClock = field(default_factory=VirtualClock)
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    unknown: list[UnknownSyscall] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    pid: int = 1000
    #: Called after a sleep advanced the virtual clock (armlp run uses it to
    #: act at the program's sleep points, e.g. to stop and apply a patch).
    on_sleep: Callable[[], None] | None = None

    def handle(self, host: SyscallHost, number: int, args: tuple[int, ...],
               pc: int) -> int | SyscallStop:
        """Run syscall *number* with the six argument registers *args*.

        Returns the value for r0 (a negative errno on failure; the caller
        stores it modulo 2**32), or a :class:`SyscallStop` for exit.
        """
        self.counts[number] = self.counts.get(number, 0) + 1
        handler = _TABLE.get(number)
        if handler is None:
            self.unknown.append(UnknownSyscall(number, args, pc))
            return -ENOSYS
        try:
            return handler(self, host, args)
        except MachineError:
            return -EFAULT

    # --- output ---------------------------------------------------------

    def _emit(self, fd: int, data: bytes) -> int:
        if len(self.stdout) + len(self.stderr) + len(data) > MAX_OUTPUT:
            return -ENOSPC
        if fd == 1:
            self.stdout += data
        elif fd == 2:
            self.stderr += data
        else:
            return -EBADF
        if self.echo:
            os.write(fd, data)
        return len(data)

    def _write(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        fd, buf, count = a[0], a[1], a[2]
        if fd not in (1, 2):
            return -EBADF
        count = min(count, MAX_WRITE)        # a short write, as to a pipe
        return self._emit(fd, host.read(buf, count) if count else b"")

    def _writev(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        fd, iov, cnt = a[0], a[1], a[2]
        if fd not in (1, 2):
            return -EBADF
        if cnt > 1024:
            return -EINVAL
        data = bytearray()
        for i in range(cnt):
            base, length = struct.unpack("<II", host.read(iov + 8 * i, 8))
            length = min(length, MAX_WRITE - len(data))
            if length:
                data += host.read(base, length)
        return self._emit(fd, bytes(data))

    # --- process --------------------------------------------------------

    def _exit(self, host: SyscallHost, a: tuple[int, ...]) -> SyscallStop:
        return SyscallStop(a[0] & 0xFF)

    def _brk(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        return host.set_brk(a[0])

    def _getpid(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        return self.pid

    def _mprotect(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        addr, size, prot = a[0], a[1], a[2]
        if addr & 0xFFF or prot & ~7:
            return -EINVAL
        return 0 if size == 0 or host.protect(addr, (size + 0xFFF) & ~0xFFF, prot) else -ENOMEM

    def _set_tls(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        host.set_tls(a[0])
        return 0

    # --- time -----------------------------------------------------------

    def now_ns(self, host: SyscallHost, clock_id: int) -> int | None:
        """The time of *clock_id* in ns, or None for an unknown clock."""
        if self.clock == "host":
            try:
                return time.clock_gettime_ns(clock_id)
            except OSError:
                return None
        vc = self.vclock
        vc.reads += 1
        if clock_id in (CLOCK_REALTIME, CLOCK_REALTIME_COARSE):
            return vc.realtime_base_ns + vc.elapsed_ns(host.instructions)
        if clock_id in (CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW, CLOCK_MONOTONIC_COARSE,
                        CLOCK_BOOTTIME):
            return vc.monotonic_base_ns + vc.elapsed_ns(host.instructions)
        if clock_id in (CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID):
            return vc.elapsed_ns(host.instructions, with_sleep=False)
        return None

    def _gettime(self, host: SyscallHost, a: tuple[int, ...], *, wide: bool) -> int:
        ns = self.now_ns(host, a[0])
        if ns is None:
            return -EINVAL
        sec, nsec = divmod(ns, _NS)
        if wide:
            host.write(a[1], _TS64.pack(sec, nsec))
        else:
            host.write(a[1], _TS32.pack(sec & 0x7FFFFFFF, nsec))
        return 0

    def _read_ts(self, host: SyscallHost, address: int, *, wide: bool) -> int | None:
        if wide:
            sec, nsec = _TS64.unpack(host.read(address, _TS64.size))
        else:
            sec, nsec = _TS32.unpack(host.read(address, _TS32.size))
        if sec < 0 or not 0 <= nsec < _NS:
            return None
        return int(sec * _NS + nsec)

    def _sleep(self, host: SyscallHost, clock_id: int, flags: int, req: int, rem: int,
               *, wide: bool) -> int:
        ns = self._read_ts(host, req, wide=wide)
        if ns is None:
            return -EINVAL
        if flags & TIMER_ABSTIME:
            now = self.now_ns(host, clock_id)
            if now is None:
                return -EINVAL
            ns = max(0, ns - now)
        if self.clock == "host":
            time.sleep(ns / _NS)
        else:
            self.vclock.slept_ns += ns
            if self.on_sleep is not None:
                self.on_sleep()
        if rem and not flags & TIMER_ABSTIME:
            host.write(rem, (_TS64 if wide else _TS32).pack(0, 0))
        return 0

    def _nanosleep(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        return self._sleep(host, CLOCK_MONOTONIC, 0, a[0], a[1], wide=False)

    def _clock_nanosleep(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        return self._sleep(host, a[0], a[1], a[2], a[3], wide=False)

    def _clock_nanosleep64(self, host: SyscallHost, a: tuple[int, ...]) -> int:
        return self._sleep(host, a[0], a[1], a[2], a[3], wide=True)


_Handler = Callable[[LinuxSyscalls, SyscallHost, tuple[int, ...]], "int | SyscallStop"]

_TABLE: dict[int, _Handler] = {
    SYS_EXIT: LinuxSyscalls._exit,
    SYS_EXIT_GROUP: LinuxSyscalls._exit,
    SYS_WRITE: LinuxSyscalls._write,
    SYS_WRITEV: LinuxSyscalls._writev,
    SYS_BRK: LinuxSyscalls._brk,
    SYS_GETPID: LinuxSyscalls._getpid,
    SYS_GETTID: LinuxSyscalls._getpid,
    ARM_SET_TLS: LinuxSyscalls._set_tls,
    SYS_MPROTECT: LinuxSyscalls._mprotect,
    SYS_CLOCK_GETTIME: lambda s, h, a: s._gettime(h, a, wide=False),
    SYS_CLOCK_GETTIME64: lambda s, h, a: s._gettime(h, a, wide=True),
    SYS_NANOSLEEP: LinuxSyscalls._nanosleep,
    SYS_CLOCK_NANOSLEEP: LinuxSyscalls._clock_nanosleep,
    SYS_CLOCK_NANOSLEEP_TIME64: LinuxSyscalls._clock_nanosleep64,
}
