"""The GDB Remote Serial Protocol's packets, as data: framing, checksums,
escapes, run-length decoding and stop replies (no I/O: see
:mod:`armlp.machine.rsp` for the connection)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from armlp.errors import MachineError

ESCAPED = frozenset(b"#$}*")


def checksum(data: bytes) -> int:
    """The RSP checksum: the sum of the bytes modulo 256."""
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    """``$data#cs`` (data already escaped)."""
    return b"$" + data + b"#%02x" % checksum(data)


def escape(data: bytes) -> bytes:
    """Binary data for ``X`` and friends: ``#$}*`` become ``}`` + byte ^ 0x20."""
    out = bytearray()
    for b in data:
        if b in ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo :func:`escape` (binary replies such as ``qXfer``)."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise MachineError("malformed reply from the stub: escape at the end")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def rle_decode(data: bytes) -> bytes:
    """Expand run-length encoding: ``c*N`` repeats c ``ord(N) - 29`` more times."""
    if b"*" not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x2A:       # '*'
            if not out or i + 1 >= len(data):
                raise MachineError(f"malformed run-length encoding in reply {data[:40]!r}")
            out += bytes((out[-1],)) * (data[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def hex_le32(value: int) -> str:
    return (value & 0xFFFFFFFF).to_bytes(4, "little").hex()


#: GDB's signal numbers (``gdb/signals.def``, what a stub reports) that
#: are not Linux's on ARM; the others (HUP..TERM but BUS, and TTIN..WINCH)
#: are the same.  77 and 78 are real-time 32 and 64 (GDB added them late).
_GDB_TO_LINUX = {10: 7, 12: 31, 16: 23, 17: 19, 18: 20, 19: 18, 20: 17, 23: 29, 30: 10,
                 31: 12, 32: 30, 33: 29, 77: 32, 78: 64}
#: GDB_SIGNAL_REALTIME_33 .. _63: Linux's 33 .. 63.
GDB_REALTIME_33, _GDB_REALTIME_63 = 45, 75


def linux_signal(gdb_signal: int) -> int:
    """The Linux (ARM) number of a signal numbered as GDB numbers it."""
    if GDB_REALTIME_33 <= gdb_signal <= _GDB_REALTIME_63:
        return gdb_signal - GDB_REALTIME_33 + 33
    return _GDB_TO_LINUX.get(gdb_signal, gdb_signal)


def signal_label(gdb_signal: int) -> str:
    """``signal 7 (SIGBUS)``: a stub's signal as the program knows it."""
    number = linux_signal(gdb_signal)
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class StopReply:
    """A stop reply: why the target stopped, or that it ended.

    *kind* is ``"T"``/``"S"`` (stopped by *signal*), ``"W"`` (exited with
    *status*) or ``"X"`` (killed by *signal*).
    """

    kind: str
    signal: int = 0
    status: int | None = None
    thread: int | None = None
    registers: dict[int, bytes] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""

    @property
    def exited(self) -> bool:
        """The process is gone (``W`` or ``X``)."""
        return self.kind in ("W", "X")

    @property
    def exit_status(self) -> int:
        """The status a shell sees for the ended program: its exit status,
        or 128 + the Linux number of the signal that killed it (the stub
        numbers signals as GDB does: its SIGBUS is 10, Linux's 7)."""
        if self.kind == "W":
            return self.status or 0
        return 128 + linux_signal(self.signal)

    def describe(self) -> str:
        if self.kind == "W":
            return f"exited with status {self.status}"
        if self.kind == "X":
            return f"killed by {signal_label(self.signal)}"
        where = f" (thread {self.thread:#x})" if self.thread is not None else ""
        return f"stopped by {signal_label(self.signal)}{where}"


def parse_stop_reply(reply: bytes) -> StopReply:
    """Parse ``T``/``S``/``W``/``X`` replies; MachineError on anything else."""
    text = reply.decode("ascii", "replace")
    if not text or text[0] not in "TSWX" or len(text) < 3:
        raise MachineError(f"expected a stop reply from the stub, got {text[:60]!r}")
    kind = text[0]
    try:
        code = int(text[1:3], 16)
    except ValueError:
        raise MachineError(f"malformed stop reply {text[:60]!r}") from None
    info: dict[str, str] = {}
    regs: dict[int, bytes] = {}
    thread: int | None = None
    rest = text[3:]
    for part in rest.split(";"):
        if not part or ":" not in part:
            continue
        key, value = part.split(":", 1)
        if kind == "T" and all(c in "0123456789abcdefABCDEF" for c in key):
            regs[int(key, 16)] = bytes.fromhex(value)
        else:
            info[key] = value
    if "thread" in info:
        thread = parse_thread_id(info["thread"])
    if kind == "W":
        return StopReply(kind, status=code, info=info, raw=reply)
    if kind == "X":
        return StopReply(kind, signal=code, info=info, raw=reply)
    return StopReply(kind, signal=code, thread=thread, registers=regs, info=info, raw=reply)


def parse_thread_id(text: str) -> int:
    """A thread id, plain (``1a2b``) or multiprocess (``p1a2b.1a2c``)."""
    if text.startswith("p"):
        text = text.split(".", 1)[1] if "." in text else text[1:]
    try:
        return int(text, 16)
    except ValueError:
        raise MachineError(f"malformed thread id {text!r} from the stub") from None



def is_stop(reply: bytes) -> bool:
    """A stop reply: ``Tnn...``, ``Snn``, ``Wnn[;...]``, ``Xnn[;...]``."""
    if len(reply) < 3 or reply[:1] not in b"TSWX":
        return False
    if not all(c in b"0123456789abcdefABCDEF" for c in reply[1:3]):
        return False
    return reply[:1] == b"T" or len(reply) == 3 or reply[3:4] == b";"


def is_error(reply: bytes) -> bool:
    if reply.startswith(b"E."):
        return True
    return len(reply) == 3 and reply[:1] == b"E" and \
        all(c in b"0123456789abcdefABCDEF" for c in reply[1:])
