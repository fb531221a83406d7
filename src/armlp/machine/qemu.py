"""Starting an ARM Linux program under ``qemu-arm`` with its GDB stub.

:func:`start_qemu` runs ``qemu-arm -g DIR/gdb.sock PROGRAM ARGS...``: qemu
7.2 accepts a path for ``-g`` and serves the stub on a Unix socket there,
waiting before the program's first instruction.  *DIR* is a private
directory (``mkdtemp``, mode 0700) so no other user can reach the stub;
nothing listens on TCP.  The program's stdin/stdout/stderr are the caller's
unless redirected.  qemu takes one connection per process: the
:class:`QemuProcess` holds it for the program's life.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from armlp.errors import MachineError
from armlp.inputs import check_input
from armlp.machine.base import Region
from armlp.machine.rsp import DEFAULT_TIMEOUT, RspConnection
from armlp.machine.rsp_packets import GDB_REALTIME_33

if TYPE_CHECKING:
    from armlp.machine.gdb import GdbMachine

#: How long qemu gets to create its socket.
START_TIMEOUT = 10.0

_File = int | IO[Any] | None


#: The signal armlp stops a thread with: the host's last real-time signal,
#: which qemu 7.2 maps to the guest's signal 62 (host SIGRTMIN+k is guest
#: 32+k) and its stub reports as GDB signal 74 (GDB_SIGNAL_REALTIME_62).
#: Not SIGINT: a stop of armlp's must be told apart from the program's own
#: signals (a terminal's ^C is the program's), also by the guardian after
#: the controller died (armlp.control.guardian).
STOP_SIGNAL = signal.SIGRTMAX
GUEST_STOP_SIGNAL = STOP_SIGNAL - signal.SIGRTMIN + 32
GDB_STOP_SIGNAL = GDB_REALTIME_33 + GUEST_STOP_SIGNAL - 33


_SYS_TGKILL = {"x86_64": 234, "aarch64": 131, "i386": 270, "i686": 270, "armv7l": 268,
               "armv8l": 268}


def send_thread_signal(pid: int, tid: int, sig: int) -> None:
    """tgkill(pid, tid, sig); a process-wide kill if this host has no known
    tgkill number or the thread is gone."""
    nr = _SYS_TGKILL.get(platform.machine())
    if nr is not None and os.path.exists(f"/proc/{pid}/task/{tid}"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(nr, pid, tid, sig) == 0:
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def qemu_binary() -> str:
    """Absolute path of ``qemu-arm`` (``$ARMLP_QEMU`` overrides it)."""
    name = os.environ.get("ARMLP_QEMU", "qemu-arm")
    path = shutil.which(name)
    if path is None:
        raise MachineError(f"{name} not found: install qemu-user (Debian: qemu-user)")
    return path


class QemuProcess:
    """A program under ``qemu-arm -g``: the process and the stub connection."""

    def __init__(self, popen: subprocess.Popen[bytes], conn: RspConnection,
                 directory: Path) -> None:
        self.popen = popen
        self.conn = conn
        self.directory = directory

    @property
    def pid(self) -> int:
        return self.popen.pid

    def interrupt(self, thread: int | None = None) -> None:
        """Stop the running program: qemu-user's stub does not read its
        socket while the program runs, so the interrupt byte alone does not
        arrive; :data:`STOP_SIGNAL` to qemu becomes a signal of the target
        that qemu hands to the stub first (a stop with
        :data:`GDB_STOP_SIGNAL`, which a following continue drops).

        The signal goes to one thread (*thread*, else the main one) with
        tgkill: a process-wide signal may land on any thread, and two
        threads parked in qemu 7.2's stub at once share its socket and
        corrupt the conversation."""
        send_thread_signal(self.popen.pid, thread or self.popen.pid, STOP_SIGNAL)

    def machine(self, host_memory: HostMemory | None = None) -> GdbMachine:
        """The :class:`~armlp.machine.gdb.GdbMachine` of this process; with
        *host_memory*, one that stops every thread for code writes when this
        host lets armlp ptrace qemu, and that keeps the program's signals out
        of the stub when it finds the stub's door (armlp.machine.door)."""
        from armlp.machine.door import StubDoor
        from armlp.machine.freeze import Freezer
        from armlp.machine.gdb import GdbMachine
        freezer = Freezer(self.pid) if host_memory is not None and \
            Freezer.available(self.pid) else None
        door = StubDoor.find(self.pid) if host_memory is not None else None
        machine = GdbMachine(self.conn, interrupt=self.interrupt, host_memory=host_memory,
                             stop_signal=GDB_STOP_SIGNAL, freezer=freezer,
                             agent_signal=GUEST_STOP_SIGNAL, door=door)
        machine.start_agent()
        return machine

    def wait(self, timeout: float | None = None) -> int:
        """Wait for qemu to end; its exit status (negative: killed by a signal)."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MachineError(f"qemu (pid {self.pid}) did not end within {timeout} s") \
                from None

    def close(self) -> None:
        """Kill qemu if it still runs, close the connection, remove the directory."""
        self.conn.close()
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> QemuProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_qemu(program: str | Path, args: Sequence[str] = (), *,
               env: Mapping[str, str] | None = None, stdin: _File = None,
               stdout: _File = None, stderr: _File = None,
               cwd: str | Path | None = None, argv0: str | None = None,
               timeout: float = DEFAULT_TIMEOUT, qemu_args: Sequence[str] = ()) -> QemuProcess:
    """Start *program* under ``qemu-arm`` with its stub on a private Unix
    socket, connect, and return it stopped before its first instruction.

    *env* is the program's environment (default: the caller's); *stdin*,
    *stdout*, *stderr* are passed to :class:`subprocess.Popen` (default:
    inherited), *cwd* its working directory.  *timeout* is the connection's
    reply timeout.
    """
    prog = check_input(program, "program")
    directory = Path(tempfile.mkdtemp(prefix="armlp-"))
    os.chmod(directory, stat.S_IRWXU)
    sock = directory / "gdb.sock"
    cmd = [qemu_binary(), *qemu_args, "-g", str(sock)]
    if argv0 is not None:
        cmd += ["-0", argv0]
    cmd += [str(prog.resolve()), *args]
    try:
        popen = subprocess.Popen(cmd, env=dict(env) if env is not None else None,
                                 stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd)
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise MachineError(f"cannot start {cmd[0]}: {exc}") from None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not sock.exists():
            if popen.poll() is not None:
                raise MachineError(f"qemu-arm ended (status {popen.returncode}) before "
                                   f"serving the stub for {prog}")
            if time.monotonic() > deadline:
                raise MachineError(f"qemu-arm did not create its stub socket within "
                                   f"{START_TIMEOUT} s")
            time.sleep(0.002)
        os.chmod(sock, stat.S_IRUSR | stat.S_IWUSR)
        while True:     # the socket exists from bind(); listen() follows
            try:
                conn = RspConnection.connect_unix(str(sock), timeout=timeout)
                break
            except MachineError:
                if popen.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
    except BaseException:
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return QemuProcess(popen, conn, directory)


def parse_maps(text: str, base: int = 0) -> list[Region]:
    """The accessible ranges of a ``/proc/PID/maps`` text, less *base*
    (qemu-user's guest base), within 32-bit addresses.
    Inaccessible ones are left out: qemu reserves the whole guest space and
    maps what the guest unmaps back to PROT_NONE."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or "-" not in fields[0]:
            continue
        lo, hi = (int(x, 16) - base for x in fields[0].split("-"))
        if lo >= 0 and hi <= 1 << 32 and fields[1][:3] != "---":
            path = fields[5] if len(fields) > 5 and fields[5].startswith("/") else ""
            offset = int(fields[2], 16) if len(fields) > 2 and path else 0
            out.append(Region.from_perms(lo, hi, fields[1], path, offset))
    return out


class HostMemory:
    """The guest memory of a local qemu-user process, through
    ``/proc/PID/mem``.

    qemu-user maps guest address *a* at host address *a + guest_base*.
    Writing there needs no stopped thread and no system call in the target,
    so it cannot be left half done by a dying controller, and it is not
    refused on pages qemu write-protected for its translations (the caller
    then drops those translations with an mprotect in the target).
    """

    def __init__(self, pid: int, guest_base: int) -> None:
        self.pid = pid
        self.guest_base = guest_base
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)

    @classmethod
    def find(cls, pid: int, program: str | Path, first_vaddr: int) -> HostMemory | None:
        """The view of process *pid* running *program* (whose first
        ``PT_LOAD`` starts at *first_vaddr*), or None when this host cannot
        give it (another machine, no permission, an unexpected layout)."""
        path = str(Path(program).resolve())
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.split()
                    if len(fields) >= 6 and fields[5] == path and int(fields[2], 16) == 0:
                        host = int(fields[0].split("-")[0], 16)
                        return cls(pid, host - (first_vaddr & ~0xFFF))
        except (OSError, ValueError):
            return None
        return None

    def read(self, address: int, size: int) -> bytes:
        return os.pread(self.fd, size, address + self.guest_base)

    def regions(self) -> list[Region]:
        """The guest's mapped ranges ``(start, end, perms)`` from qemu's
        ``/proc/PID/maps`` (its own mappings outside the guest's 4 GiB left
        out)."""
        with open(f"/proc/{self.pid}/maps") as maps:
            return parse_maps(maps.read(), self.guest_base)

    def write(self, address: int, data: bytes) -> None:
        done = os.pwrite(self.fd, data, address + self.guest_base)
        if done != len(data):
            raise MachineError(f"/proc/{self.pid}/mem: wrote {done} of {len(data)} bytes at "
                               f"{address:#010x}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
