"""A program behind a GDB stub as the controller's live process: under a
qemu-arm that armlp started, or already waiting under a stub (attach)."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from armlp.control.guardian import Guardian
from armlp.elf.image import ET_DYN, ElfImage
from armlp.errors import ArmlpError, MachineError, StubLostError
from armlp.machine.auxv import program_bias, read_auxv
from armlp.machine.door import StubDoor
from armlp.machine.freeze import Freezer
from armlp.machine.gdb import GdbMachine
from armlp.machine.inject import GDB_SIGINT
from armlp.machine.qemu import (
    GDB_STOP_SIGNAL,
    GUEST_STOP_SIGNAL,
    STOP_SIGNAL,
    HostMemory,
    QemuProcess,
    send_thread_signal,
    start_qemu,
)
from armlp.machine.rsp import RspConnection
from armlp.objects import LoadedLibrary, loaded_libraries

if TYPE_CHECKING:
    from armlp.control.libraries import LibraryWatch

POLL = 0.5
#: How often a parked controller looks at the dynamic linker's hook (s):
#: every HOOK_POLL_BUSY for HOOK_BUSY_S after an event (a dlopen comes with
#: a dlclose, a program that loads one plugin loads others), else every
#: HOOK_POLL (each look costs the stub a memory read: fast for good, it
#: would take 7 % of a processor from an idle program).
HOOK_POLL = 0.005
HOOK_POLL_BUSY = 0.001
HOOK_BUSY_S = 0.2
#: How long a request waits for ld.so to finish a change it has begun (s).
SETTLE_TIMEOUT = 2.0
#: Seconds the dynamic linker may take to load a program's libraries.
ENTRY_TIMEOUT = 30.0
#: Exit status reported when the stub went away without telling how the
#: program ended (attach: we do not own the process).
LOST = 255


class GdbLive:
    """Interrupt, resume and exit detection for one process behind a stub."""

    def __init__(self, machine: GdbMachine, image: ElfImage, qemu: QemuProcess | None = None,
                 guardian: Guardian | None = None, *, pid: int = 0) -> None:
        self.machine = machine
        #: The program's ELF image at the addresses it runs at (see as_loaded).
        self.image = image
        self.qemu = qemu
        #: The program's process id (on its own machine for a remote stub).
        self.pid = pid
        #: Told when armlp has the program paused, so that it can let the
        #: program go should the controller die (armlp.control.guardian).
        self.guardian = guardian
        self.exit_status: int | None = None
        #: The shared libraries mapped when armlp took over (patch objects).
        self.libraries: list[LoadedLibrary] = []
        #: The dynamic linker's hook, once armlp follows it.
        self.watch: LibraryWatch | None = None

    def interrupt(self) -> None:
        if self.exited() is not None:
            raise MachineError(f"the program has exited (status {self.exit_status})")
        if self.guardian is not None:
            self.guardian.paused()
        if self.machine.parked:
            # The agent waits in the stub: armlp may talk at once, once a
            # library ld.so is loading or unloading is in place.
            if self.watch is not None:
                self._library_event(lambda w: w.settle(SETTLE_TIMEOUT, HOOK_POLL_BUSY))
            return
        try:
            stop = self.machine.stop()
        except MachineError as exc:
            if isinstance(exc, StubLostError):
                self._lost()        # raises unless qemu ended on its own
                raise MachineError(f"the program has exited (status {self.exit_status})") \
                    from None
            raise
        if stop.exited:
            self.exit_status = stop.exit_status
            raise MachineError(f"the program {stop.describe()}")

    def resume(self) -> None:
        if self.exited() is None:
            if self.watch is not None:
                # Ordering: a library that just came is patched before the
                # thread waiting in the dynamic linker's hook goes on.
                self._library_event(lambda w: w.catch_up())
            self.machine.shut_for_park()
            self.machine.resume()
            try:
                self.machine.park()
            except StubLostError:
                # the program ended meanwhile (its own signal, behind the
                # shut door): how, poll_exit tells from here
                self._lost()
                return
            if self.guardian is not None and not self.machine.parked:
                self.guardian.running()     # parked: the agent is armlp's to let go

    def _library_event(self, handle: Callable[[LibraryWatch], None]) -> None:
        """Run *handle* on the library watch; its error is logged, and the
        program goes on with the libraries as armlp last had them."""
        assert self.watch is not None
        try:
            handle(self.watch)
        except StubLostError:
            raise           # not the dynamic linker's: the caller says how the program ended
        except ArmlpError as exc:
            self.watch.log(f"error: following the dynamic linker: {exc}")

    def fileno(self) -> int:
        return self.machine.conn.sock.fileno()

    def held_s(self) -> float | None:
        freezer = self.machine.freezer
        if self.machine.agent is None or freezer is None:
            return None
        return freezer.held_s

    def pending(self) -> bool:
        """Whether the stub already sent something armlp has read but not
        handled (a stop set aside during a request): select() would not
        see it again."""
        conn = self.machine.conn
        if conn.sock.fileno() < 0:
            return True     # the connection ended during a request: poll_exit says how
        try:
            if self._hook_waits():
                return True     # a thread waits in the dynamic linker's hook
        except MachineError:
            return True         # the target cannot be read: poll_exit finds out why
        return bool(conn.pending_stops) or bool(conn._buf)

    def _hook_waits(self) -> bool:
        """Parked: whether a thread waits in the dynamic linker's hook."""
        return self.machine.parked and self.watch is not None and self.watch.pending()

    def poll_interval(self) -> float | None:
        """Parked behind a shut door, the dynamic linker's hook signals no
        one: armlp looks at its mark this often."""
        if not self.machine.parked or self.watch is None:
            return None
        busy = time.monotonic() - self.watch.last_event < HOOK_BUSY_S
        return HOOK_POLL_BUSY if busy else HOOK_POLL

    def exited(self) -> int | None:
        """The program's exit status once the stub reported its end (also
        when that report arrived in the middle of a request's work)."""
        if self.exit_status is None:
            ex = self.machine.exit or self.machine.conn.exit
            if ex is not None:
                self.exit_status = ex.exit_status
        return self.exit_status

    def poll_exit(self) -> int | None:
        if self.exited() is not None:
            return self.exit_status
        if self.machine.conn.sock.fileno() < 0:
            return self._lost()
        if self.machine.parked:
            try:
                if self._hook_waits():
                    self.resume()       # handles the event
            except StubLostError:
                return self._lost()
            if not self.pending() and not select.select([self.fileno()], [], [], 0)[0]:
                return None     # behind the shut door the stub says nothing but its end
        try:
            stop = self.machine.wait(POLL)
        except MachineError as exc:
            if "timed out" in str(exc):
                return None        # only the program's own signals, handed back
            if isinstance(exc, StubLostError):
                return self._lost()
            raise
        if stop.exited:
            self.exit_status = stop.exit_status
            return self.exit_status
        self.resume()      # the dynamic linker's hook, or a late stop of ours
        return None

    def abandon(self) -> int | None:
        """Leave the program to the guardian, for good (the controller hit
        an error it cannot recover from): it lets the program go from any
        stop of armlp's and answers its stops until it ends.  Under a
        qemu-arm armlp started, wait for that end and return the program's
        exit status; after attach, return None at once."""
        if self.guardian is None:
            raise MachineError("no guardian to leave the program to")
        freezer = self.machine.freezer
        if freezer is not None and freezer.is_frozen:
            with contextlib.suppress(MachineError):
                freezer.thaw()
        self.machine.conn.close()          # the guardian holds its own copy
        self.guardian.abandon(wait=self.qemu is not None)
        if self.qemu is None:
            return None
        code = self.qemu.popen.wait()
        self.exit_status = code if code >= 0 else 128 - code
        return self.exit_status

    def _lost(self) -> int:
        """The stub connection is gone without an exit report.  Under a
        qemu-arm armlp started: its status when it ended on its own; when it
        was killed, one line that says so (there is no program status to
        pass on).  Behind a shut door (armlp.machine.door) the stub reports
        no end: qemu's status is the program's, and after attach the status
        is :data:`LOST`."""
        if self.exited() is not None:
            assert self.exit_status is not None
            return self.exit_status
        shut = self.machine.door is not None and not self.machine.door.is_open
        if self.qemu is None:
            if shut:        # the program ended; how, its parent knows first
                self.exit_status = ended_status(self.pid)
                return self.exit_status
            raise MachineError("stub connection lost; the program's fate is unknown")
        code = self.qemu.wait(5.0)
        if code < 0 and shut:
            # Behind a shut door qemu ends as the program would, without a
            # report: killed by the program's fatal signal.
            code = 128 - code
        elif code < 0:
            raise MachineError(f"qemu-arm (pid {self.qemu.pid}) was killed by signal {-code}: "
                               f"the stub connection is lost, the program is gone")
        self.exit_status = code
        return code



def ended_status(pid: int, timeout: float = 0.5) -> int:
    """The exit status of process *pid*, which is not armlp's child, once
    it has ended: ``exit_code`` of ``/proc/PID/stat`` while it is a zombie
    its parent has not reaped yet; :data:`LOST` when that moment has passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return LOST
        if fields[0] == "Z" and len(fields) >= 50:
            code = int(fields[49])      # field 52: waitpid's status
            return code >> 8 if code & 0x7F == 0 else 128 + (code & 0x7F)
        if time.monotonic() > deadline:
            return LOST
        time.sleep(0.005)


def first_address(image: ElfImage) -> int:
    """Where the program's first loaded page is (its first PT_LOAD)."""
    return int(min(s.addr for s in image.sections if s.is_alloc and s.addr)) & ~0xFFF


#: Debian's cross sysroots, by the dynamic linker a program names.
SYSROOTS = {"/lib/ld-linux.so.3": "/usr/arm-linux-gnueabi",
            "/lib/ld-linux-armhf.so.3": "/usr/arm-linux-gnueabihf"}


def sysroot_args(image: ElfImage, sysroot: str | None = None) -> list[str]:
    """``-L SYSROOT`` for a dynamically linked program: *sysroot* when given
    (``armlp run --sysroot``), else the Debian armel or armhf cross sysroot
    its interpreter names, unless ``QEMU_LD_PREFIX`` chooses one; nothing
    for a static program."""
    name = image.interpreter
    if sysroot is not None:
        if not os.path.isdir(sysroot):
            raise ArmlpError(f"--sysroot {sysroot}: not a directory")
        if name is not None and not os.path.exists(os.path.join(sysroot, name.lstrip("/"))):
            raise ArmlpError(f"--sysroot {sysroot}: has no {name}, the dynamic linker "
                             f"{image.path} names")
        return ["-L", sysroot]
    if name is None or os.environ.get("QEMU_LD_PREFIX"):
        return []
    root = SYSROOTS.get(name)
    if root is None or not os.path.isdir(root):
        raise ArmlpError(f"{image.path}: dynamically linked against {name}, and no sysroot "
                         f"for it (install its Debian cross libc, or set QEMU_LD_PREFIX)")
    return ["-L", root]


def gprof_linked(image: ElfImage) -> bool:
    """Whether the program was linked with ``-pg``: gcrt1.o defines
    ``__gmon_start__``, which starts a SIGPROF timer (100 signals a second
    through qemu's stub); other start files leave it an undefined weak.
    (``__monstartup`` alone says nothing: static glibc's mcount brings it.)"""
    return bool(image.symbols.named("__gmon_start__"))


def as_loaded(image: ElfImage, conn: RspConnection) -> ElfImage:
    """*image* at the addresses the stopped program behind *conn* has: a
    position-independent executable moved by its load bias (from the
    program's auxiliary vector, as the dynamic linker computes it)."""
    if image.type != ET_DYN:
        return image
    return image.rebased(program_bias(conn, read_auxv(conn)))


def start(image: ElfImage, program: str, args: Sequence[str],
          sysroot: str | None = None) -> GdbLive:
    """Start *program* under qemu-arm, stopped before its first instruction,
    with everything armlp sets up around it: the machine (all-stop through
    ptrace when this host allows it, armlp's agent thread), the guardian.
    *sysroot*: see :func:`sysroot_args`."""
    qemu = start_qemu(program, args, qemu_args=sysroot_args(image, sysroot))
    guardian = Guardian.start(qemu.conn.sock, ours=[GDB_STOP_SIGNAL])
    try:
        image = as_loaded(image, qemu.conn)
        host = HostMemory.find(qemu.pid, program, first_address(image))
        machine = qemu.machine(host)
        if image.interpreter is not None:
            run_to_entry(machine)
        live = GdbLive(machine, image, qemu, guardian, pid=qemu.pid)
        live.libraries = loaded_libraries(machine, image)
    except BaseException:
        guardian.stand_down()
        qemu.close()
        raise
    return live


def run_to_entry(machine: GdbMachine) -> None:
    """Let the dynamic linker map the program's libraries: run it to the
    program's own entry point, where no code of the program has run yet."""
    entry = machine.entry & ~1          # armhf's _start is Thumb code
    machine.set_breakpoint(entry)
    try:
        machine.resume()
        stop = machine.wait(ENTRY_TIMEOUT)
    finally:
        if not machine.running and machine.exit is None:
            machine.remove_breakpoint(entry)
    if stop.exited:
        raise MachineError(f"the program {stop.describe()} before its entry point "
                           f"(its dynamic linker failed?)")
    pc = machine.get_regs(stop.thread).pc
    if pc != entry:
        raise MachineError(f"the program stopped at {pc:#x} (signal {stop.signal}), "
                           f"not at its entry point {entry:#x}")


def attach(image: ElfImage, program: str, address: str,
           warn: Callable[[str], None]) -> GdbLive:
    """Take over a program waiting under a GDB stub: ``unix:PATH`` (a
    ``qemu-arm -g PATH`` on this host: stopped with armlp's signal to its
    agent thread, all-stop through ptrace when allowed) or ``HOST:PORT`` (a
    device's gdbserver: the interrupt byte, all-stop by itself)."""
    if address.startswith("unix:"):
        conn = RspConnection.connect_unix(address[5:])
        local = True
    else:
        hostname, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ArmlpError(f"bad address {address!r}: expected unix:PATH or HOST:PORT")
        warn(f"warning: the GDB protocol has no authentication; anyone who can reach "
             f"{address} controls the process")
        conn = RspConnection.connect_tcp(hostname or "127.0.0.1", int(port))
        local = False
    image = as_loaded(image, conn)
    tids = conn.thread_ids()
    pid = tids[0] if tids else 0
    local = local and pid > 0

    def interrupt(thread: int | None) -> None:
        # qemu-user's stub does not read the interrupt byte while the program
        # runs: a signal to one thread stops it; a remote stub gets the byte.
        if local:
            send_thread_signal(pid, thread or pid, STOP_SIGNAL)
        else:
            conn.interrupt()

    memory = HostMemory.find(pid, program, first_address(image)) if local else None
    freezer = Freezer(pid) if memory is not None and Freezer.available(pid) else None
    door = StubDoor.find(pid) if memory is not None else None
    machine = GdbMachine(conn, interrupt=interrupt, host_memory=memory,
                         stop_signal=GDB_STOP_SIGNAL if local else GDB_SIGINT,
                         freezer=freezer, agent_signal=GUEST_STOP_SIGNAL if local else None,
                         door=door)
    if local:
        machine.start_agent()
    guardian = Guardian.start(conn.sock, ours=[machine.stop_signal])
    live = GdbLive(machine, image, guardian=guardian, pid=pid)
    if memory is not None:
        live.libraries = loaded_libraries(machine, image)
    return live

