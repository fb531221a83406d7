"""A program behind a GDB stub as the controller's live process: under a
qemu-arm that armlp started, or already waiting under a stub (attach)."""

from __future__ import annotations

from armlp.errors import MachineError
from armlp.machine.gdb import GdbMachine
from armlp.machine.qemu import QemuProcess

POLL = 0.5
#: Exit status reported when the stub went away without telling how the
#: program ended (attach: we do not own the process).
LOST = 255


class GdbLive:
    """Interrupt, resume and exit detection for one process behind a stub."""

    def __init__(self, machine: GdbMachine, qemu: QemuProcess | None = None) -> None:
        self.machine = machine
        self.qemu = qemu
        self.exit_status: int | None = None

    def interrupt(self) -> None:
        stop = self.machine.stop()
        if stop.exited:
            self.exit_status = self._status(stop.kind, stop.status, stop.signal)
            raise MachineError(f"the program {stop.describe()}")

    def resume(self) -> None:
        if self.exit_status is None:
            self.machine.resume()

    def fileno(self) -> int:
        return self.machine.conn.sock.fileno()

    def poll_exit(self) -> int | None:
        try:
            stop = self.machine.wait(POLL)
        except MachineError as exc:
            if "timed out" in str(exc):
                return None        # only the program's own signals, handed back
            if "connection lost" in str(exc):
                if self.qemu is None:
                    raise MachineError("stub connection lost; the program's fate is "
                                       "unknown") from None
                self.exit_status = self.qemu.wait(5.0)
                return self.exit_status
            raise
        if stop.exited:
            self.exit_status = self._status(stop.kind, stop.status, stop.signal)
            return self.exit_status
        self.machine.resume()      # a stray stop of ours (late SIGINT): go on
        return None

    @staticmethod
    def _status(kind: str, status: int | None, signal: int) -> int:
        return (status or 0) if kind == "W" else 128 + signal


QemuLive = GdbLive
