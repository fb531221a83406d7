"""A program under qemu-arm as the controller's live process."""

from __future__ import annotations

from armlp.errors import MachineError
from armlp.machine.gdb import GdbMachine
from armlp.machine.qemu import QemuProcess

POLL = 0.5


class QemuLive:
    """Interrupt, resume and exit detection for one qemu-arm process."""

    def __init__(self, qemu: QemuProcess, machine: GdbMachine) -> None:
        self.qemu = qemu
        self.machine = machine
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
        return self.qemu.conn.sock.fileno()

    def poll_exit(self) -> int | None:
        try:
            stop = self.machine.wait(POLL)
        except MachineError as exc:
            if "timed out" in str(exc):
                return None        # only the program's own signals, handed back
            if "connection lost" in str(exc):
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
