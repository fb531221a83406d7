"""A program behind a GDB stub as the controller's live process: under a
qemu-arm that armlp started, or already waiting under a stub (attach)."""

from __future__ import annotations

from armlp.control.guardian import Guardian
from armlp.errors import MachineError
from armlp.machine.gdb import GdbMachine
from armlp.machine.qemu import QemuProcess
from armlp.machine.rsp import StopReply

POLL = 0.5
#: Exit status reported when the stub went away without telling how the
#: program ended (attach: we do not own the process).
LOST = 255


class GdbLive:
    """Interrupt, resume and exit detection for one process behind a stub."""

    def __init__(self, machine: GdbMachine, qemu: QemuProcess | None = None,
                 guardian: Guardian | None = None) -> None:
        self.machine = machine
        self.qemu = qemu
        #: Told when armlp has the program paused, so that it can let the
        #: program go should the controller die (armlp.control.guardian).
        self.guardian = guardian
        self.exit_status: int | None = None

    def interrupt(self) -> None:
        if self.exited() is not None:
            raise MachineError(f"the program has exited (status {self.exit_status})")
        if self.guardian is not None:
            self.guardian.paused()
        try:
            stop = self.machine.stop()
        except MachineError as exc:
            if "connection lost" in str(exc):
                self._lost()        # raises unless qemu ended on its own
                raise MachineError(f"the program has exited (status {self.exit_status})") \
                    from None
            raise
        if stop.exited:
            self.exit_status = self._status(stop)
            raise MachineError(f"the program {stop.describe()}")

    def resume(self) -> None:
        if self.exited() is None:
            self.machine.resume()
            if self.guardian is not None:
                self.guardian.running()

    def fileno(self) -> int:
        return self.machine.conn.sock.fileno()

    def pending(self) -> bool:
        """Whether the stub already sent something armlp has read but not
        handled (a stop set aside during a request): select() would not
        see it again."""
        conn = self.machine.conn
        return bool(conn.pending_stops) or bool(conn._buf)

    def exited(self) -> int | None:
        """The program's exit status once the stub reported its end (also
        when that report arrived in the middle of a request's work)."""
        if self.exit_status is None:
            ex = self.machine.exit or self.machine.conn.exit
            if ex is not None:
                self.exit_status = self._status(ex)
        return self.exit_status

    def poll_exit(self) -> int | None:
        if self.exited() is not None:
            return self.exit_status
        try:
            stop = self.machine.wait(POLL)
        except MachineError as exc:
            if "timed out" in str(exc):
                return None        # only the program's own signals, handed back
            if "connection lost" in str(exc):
                return self._lost()
            raise
        if stop.exited:
            self.exit_status = self._status(stop)
            return self.exit_status
        self.machine.resume()      # a stray stop of ours (late SIGINT): go on
        return None

    def _lost(self) -> int:
        """The stub connection is gone without an exit report.  Under a
        qemu-arm armlp started: its status when it ended on its own; when it
        was killed, one line that says so (there is no program status to
        pass on)."""
        if self.exited() is not None:
            assert self.exit_status is not None
            return self.exit_status
        if self.qemu is None:
            raise MachineError("stub connection lost; the program's fate is unknown")
        code = self.qemu.wait(5.0)
        if code < 0:
            raise MachineError(f"qemu-arm (pid {self.qemu.pid}) was killed by signal {-code}: "
                               f"the stub connection is lost, the program is gone")
        self.exit_status = code
        return code

    @staticmethod
    def _status(stop: StopReply) -> int:
        return (stop.status or 0) if stop.kind == "W" else 128 + stop.signal


QemuLive = GdbLive
