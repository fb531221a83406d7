"""A small, strict client of the GDB Remote Serial Protocol (RSP).

:class:`RspConnection` speaks to one stub (``qemu-arm -g``, ``gdbserver``)
over a connected stream socket.  It implements what armlp needs and nothing
more:

Framing
    ``$data#cs`` with the modulo-256 checksum, acknowledgements (``+``/``-``,
    a packet is resent at most three times) until ``QStartNoAckMode`` is
    accepted (qemu-user 7.2 does not support it: it stays in ack mode),
    run-length decoding (``X*n``) of replies, the ``}`` escape for binary
    data in both directions, ``O`` console-output packets set aside;
    ``ARMLP_RSP_LOG=FILE`` appends the whole conversation to FILE.
Errors
    Every read has a timeout (:class:`~armlp.errors.MachineError` naming the
    packet whose reply did not come); ``Exx`` replies raise MachineError
    naming the request; a closed or reset socket raises
    ``StubLostError("stub connection lost")``; an empty reply means
    "unsupported" and raises where armlp needs the packet.
Memory
    ``m`` reads chunked by the stub's ``PacketSize``; ``X`` binary writes
    (``M`` hex writes when the stub does not support ``X``).
Registers and threads
    ``g``/``G``, ``p``/``P``, ``Hg`` selection (cached), ``qfThreadInfo``/
    ``qsThreadInfo``, ``?``.
Execution
    ``vCont;c``/``vCont;s:tid`` (``c``/``s`` when ``vCont`` is missing),
    the interrupt byte 0x03, ``Z0``/``z0``, ``D``, ``k``.  Stop replies
    (``T``, ``S``, ``W``, ``X``) become :class:`StopReply`.

Thread ids are the stub's plain hexadecimal numbers (armlp does not
announce ``multiprocess+``; qemu-user: the host thread ids).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from armlp.errors import MachineError, StubLostError
from armlp.machine.rsp_packets import (
    ESCAPED,
    StopReply,
    checksum,
    frame,
    hex_le32,
    is_error,
    is_stop,
    parse_stop_reply,
    parse_thread_id,
    rle_decode,
    unescape,
)

#: Seconds to wait for an acknowledgement or a reply, unless told otherwise.
DEFAULT_TIMEOUT = 5.0
#: What armlp assumes before ``qSupported`` says otherwise.
DEFAULT_PACKET_SIZE = 400
_RESENDS = 3


def _open_log() -> TextIO | None:
    """``$ARMLP_RSP_LOG``: every byte to and from the stub, timestamped
    (a path that cannot be opened is ignored)."""
    path = os.environ.get("ARMLP_RSP_LOG")
    if not path:
        return None
    try:
        return open(path, "a", buffering=1)
    except OSError:
        return None


class RspConnection:
    """One RSP session with a stub over *sock* (see the module docstring)."""

    def __init__(self, sock: socket.socket, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = sock
        self.timeout = timeout
        self.ack_mode = True
        self.packet_size = DEFAULT_PACKET_SIZE
        self.features: dict[str, str] = {}
        self.console = bytearray()      # ``O`` packets
        self.closed = False
        self._buf = bytearray()
        self._selected: dict[str, int | None] = {"g": None, "c": None}
        self._x_supported: bool | None = None
        self._vcont: set[str] | None = None
        self._p_supported: bool | None = None
        self.round_trips = 0
        #: Stop replies that arrived while armlp waited for something else.
        self.pending_stops: list[StopReply] = []
        #: The ``W``/``X`` reply, once the target has ended.
        self.exit: StopReply | None = None
        #: The request whose reply has not arrived (it timed out): see settle().
        self.in_flight: str | None = None
        #: Called once before the next packet: brings the stub's thread back.
        self.before_send: Callable[[], None] | None = None
        self.target_xml = b""
        self._log = _open_log()

    # --- construction ------------------------------------------------------

    @classmethod
    def connect_unix(cls, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> RspConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise MachineError(f"cannot connect to the gdb stub at {path}: {exc}") from None
        conn = cls(sock, timeout=timeout)
        conn.handshake()
        return conn

    @classmethod
    def connect_tcp(cls, host: str, port: int, *,
                    timeout: float = DEFAULT_TIMEOUT) -> RspConnection:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise MachineError(f"cannot connect to the gdb stub at {host}:{port}: "
                               f"{exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(sock, timeout=timeout)
        conn.handshake()
        return conn

    def handshake(self) -> None:
        """``qSupported`` (PacketSize, features), then ``QStartNoAckMode``
        if offered, then ``qXfer:features:read:target.xml`` when offered (qemu
        switches its ``g`` packet to the XML layout after it; gdbserver needs a
        thread selected first)."""
        self.features = {}
        reply = self.request(b"qSupported:swbreak+;vContSupported+;xmlRegisters=arm",
                             "qSupported").decode("ascii", "replace")
        for item in reply.split(";"):
            if "=" in item:
                k, v = item.split("=", 1)
                self.features[k] = v
            elif item.endswith(("+", "-", "?")):
                self.features[item[:-1]] = item[-1]
        if "PacketSize" in self.features:
            try:
                self.packet_size = max(64, int(self.features["PacketSize"], 16))
            except ValueError:
                raise MachineError(f"malformed PacketSize in qSupported reply {reply!r}") from None
        if self.features.get("QStartNoAckMode") == "+" and \
                self.request(b"QStartNoAckMode", "QStartNoAckMode") == b"OK":
            self.ack_mode = False
        if self.features.get("qXfer:features:read") == "+":
            # gdbserver describes the current thread's process: without one
            # selected it fails an assertion and drops the connection.
            with contextlib.suppress(MachineError):
                self.request(b"Hg0", "selecting any thread")
            self._selected["g"] = None
            self.target_xml = self.read_xfer("features", "target.xml")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()

    # --- framing -----------------------------------------------------------

    def _trace(self, what: str, data: bytes) -> None:
        if self._log is not None:
            self._log.write(f"{time.monotonic():.4f} {what} {data!r}\n")

    def _lost(self) -> MachineError:
        self.close()
        return StubLostError("stub connection lost")

    def _send_raw(self, data: bytes) -> None:
        if self.closed:
            raise StubLostError("stub connection lost")
        self._trace(">", data)
        try:
            self.sock.sendall(data)
        except OSError:
            raise self._lost() from None

    def _fill(self, deadline: float | None, what: str) -> None:
        """Receive more bytes into the buffer before *deadline*."""
        if self.closed:
            raise StubLostError("stub connection lost")
        if deadline is None:
            self.sock.settimeout(None)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MachineError(f"timed out waiting for the stub's reply to {what}")
            self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            self._trace("timeout", what.encode())
            raise MachineError(f"timed out waiting for the stub's reply to {what}") from None
        except OSError:
            raise self._lost() from None
        if not chunk:
            raise self._lost()
        self._trace("<", chunk)
        self._buf += chunk

    def _read_ack(self, deadline: float | None, what: str) -> bool:
        """Wait for ``+`` (True) or ``-`` (False)."""
        while True:
            while not self._buf:
                self._fill(deadline, what)
            b = self._buf[0]
            if b == 0x24:   # a packet before the ack: the ack was lost or implied
                return True
            del self._buf[0]
            if b == 0x2B:
                return True
            if b == 0x2D:
                return False
            # Anything else before an ack is noise: drop it.

    def _read_packet(self, deadline: float | None, what: str) -> bytes:
        """One packet's payload (checksum verified, RLE decoded), acked."""
        while True:
            start = self._buf.find(b"$")
            while start < 0:
                self._buf.clear()
                self._fill(deadline, what)
                start = self._buf.find(b"$")
            del self._buf[:start]
            end = self._buf.find(b"#")
            while end < 0 or len(self._buf) < end + 3:
                self._fill(deadline, what)
                end = self._buf.find(b"#")
            body = bytes(self._buf[1:end])
            cs_text = bytes(self._buf[end + 1:end + 3])
            del self._buf[:end + 3]
            try:
                good = int(cs_text, 16) == checksum(body)
            except ValueError:
                good = False
            if not self.ack_mode:
                if not good:
                    raise MachineError(f"bad checksum in the stub's reply to {what}")
                return rle_decode(body)
            self._send_raw(b"+" if good else b"-")
            if good:
                return rle_decode(body)

    def send_packet(self, data: bytes, what: str, timeout: float | None = None, *,
                    reply_expected: bool = False) -> None:
        """Send one packet (acknowledged in ack mode).  A reply still owed
        for an earlier request is read first (see :meth:`settle`)."""
        hook, self.before_send = self.before_send, None
        if hook is not None:
            hook()
        if self.in_flight is not None:
            self.settle()
        if reply_expected:
            self.in_flight = what
        packet = frame(data)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(_RESENDS + 1):
            self._send_raw(packet)
            if not self.ack_mode or self._read_ack(deadline, what):
                return
        raise MachineError(f"the stub rejected {what} {_RESENDS + 1} times (checksum)")

    def receive(self, what: str, timeout: float | None = None, *,
                forever: bool = False) -> bytes:
        """The next reply packet, skipping ``O`` console output."""
        deadline = None if forever else time.monotonic() + (self.timeout if timeout is None
                                                            else timeout)
        while True:
            reply = self._read_packet(deadline, what)
            if reply.startswith(b"O") and len(reply) > 1 and reply != b"OK" and \
                    all(c in b"0123456789abcdef" for c in reply[1:]):
                self.console += bytes.fromhex(reply[1:].decode())
                continue
            if is_stop(reply):
                # qemu points its current threads (Hg, Hc) at a thread that
                # stops: armlp's idea of the selection is stale.
                self._selected = {"g": None, "c": None}
            return reply

    def request(self, data: bytes, what: str | None = None, *,
                timeout: float | None = None) -> bytes:
        """Send *data* and return its reply; ``Exx`` raises MachineError."""
        what = what or data[:40].decode("ascii", "replace")
        self.round_trips += 1
        self.send_packet(data, what, timeout, reply_expected=True)
        reply = self.receive(what, timeout)
        while data != b"?" and is_stop(reply):
            # Another thread stopped on its own (qemu-user parks each thread
            # that gets a signal in the stub and reports it at once).
            stop = parse_stop_reply(reply)
            if stop.exited:
                self.exit = stop
                self.close()
                raise MachineError(f"{what}: the target {stop.describe()}")
            self.pending_stops.append(stop)
            reply = self.receive(what, timeout)
        self.in_flight = None
        if is_error(reply):
            raise MachineError(f"{what}: the stub answered {reply.decode('ascii', 'replace')}")
        return reply

    def settle(self, timeout: float | None = None) -> None:
        """Wait for (and drop) the reply of a request that timed out.

        In ack mode a stub that finally answers waits for our ``+`` and takes
        every other byte as a request to resend: the next request would be
        eaten.  So the late reply is read (and acked) first."""
        what = self.in_flight
        if what is None:
            return
        reply = self.receive(f"{what} (late)", timeout)
        while is_stop(reply):
            stop = parse_stop_reply(reply)
            if stop.exited:
                self.exit = stop
                break
            self.pending_stops.append(stop)
            reply = self.receive(f"{what} (late)", timeout)
        self.in_flight = None       # only now: a settle that times out is tried again

    def request_ok(self, data: bytes, what: str | None = None) -> None:
        """A request whose only good answer is ``OK``."""
        what = what or data[:40].decode("ascii", "replace")
        reply = self.request(data, what)
        if reply != b"OK":
            raise MachineError(f"{what}: unexpected reply {reply[:60]!r}"
                               + (" (not supported by the stub)" if not reply else ""))

    # --- queries -------------------------------------------------------------

    def read_xfer(self, obj: str, annex: str) -> bytes:
        """``qXfer:OBJ:read:ANNEX`` in PacketSize chunks."""
        out = bytearray()
        chunk = max(64, self.packet_size - 16)
        while True:
            reply = self.request(f"qXfer:{obj}:read:{annex}:{len(out):x},{chunk:x}".encode())
            if not reply or reply[:1] not in b"lm":
                raise MachineError(f"qXfer {obj} {annex}: unexpected reply {reply[:60]!r}")
            out += unescape(reply[1:])
            if reply[:1] == b"l":
                return bytes(out)

    def thread_ids(self) -> list[int]:
        """``qfThreadInfo``/``qsThreadInfo``."""
        ids: list[int] = []
        reply = self.request(b"qfThreadInfo")
        while reply.startswith(b"m"):
            ids.extend(parse_thread_id(t) for t in reply[1:].decode().split(",") if t)
            reply = self.request(b"qsThreadInfo")
        if reply != b"l":
            raise MachineError(f"qfThreadInfo: unexpected reply {reply[:60]!r}")
        return ids

    def read_file(self, path: str) -> bytes:
        """A file of the stub's machine, through host I/O (``vFile``): how
        armlp reads a device's ``/proc/PID/maps``."""
        reply = self.request(b"vFile:open:" + path.encode().hex().encode() + b",0,0",
                             f"opening {path} on the stub's machine")
        if not reply.startswith(b"F") or reply.startswith(b"F-"):
            raise MachineError(f"cannot open {path} through the stub: {reply[:40]!r}")
        fd = int(reply[1:].split(b";")[0], 16)
        out = bytearray()
        try:
            while True:
                reply = self.request(f"vFile:pread:{fd:x},{0x1000:x},{len(out):x}".encode(),
                                     f"reading {path}")
                head, _, data = reply.partition(b";")
                if not head.startswith(b"F") or head.startswith(b"F-"):
                    raise MachineError(f"cannot read {path} through the stub: {reply[:40]!r}")
                n = int(head[1:], 16)
                if n == 0:
                    return bytes(out)
                out += unescape(data)[:n]
        finally:
            with contextlib.suppress(MachineError):
                self.request(f"vFile:close:{fd:x}".encode(), f"closing {path}")

    def stop_reason(self) -> StopReply:
        """``?``."""
        return parse_stop_reply(self.request(b"?"))

    def select_thread(self, thread: int, op: str = "g") -> None:
        """``Hg``/``Hc`` (cached: no round trip when already selected)."""
        if self._selected.get(op) == thread:
            return
        self.request_ok(f"H{op}{thread:x}".encode(), f"selecting thread {thread:#x}")
        self._selected[op] = thread

    # --- memory --------------------------------------------------------------

    @property
    def max_read(self) -> int:
        """Bytes per ``m`` packet: the hex reply must fit in PacketSize."""
        return max(16, (self.packet_size - 32) // 2 & ~3)

    def read_memory(self, address: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            n = min(self.max_read, size - len(out))
            a = address + len(out)
            what = f"reading {size} bytes at {address:#010x}"
            reply = self.request(f"m{a:x},{n:x}".encode(), what)
            if not reply:
                raise MachineError(f"{what}: empty reply (unreadable memory at {a:#010x})")
            try:
                data = bytes.fromhex(reply.decode("ascii"))
            except ValueError:
                raise MachineError(f"{what}: malformed reply {reply[:60]!r}") from None
            if not data:
                raise MachineError(f"{what}: nothing readable at {a:#010x}")
            out += data
        return bytes(out)

    def write_memory(self, address: int, data: bytes) -> None:
        if self._x_supported is None:
            reply = self.request(f"X{address:x},0:".encode(), "probing X")
            self._x_supported = reply == b"OK"
        if self._x_supported:
            self._write_binary(address, data)
        else:
            self._write_hex(address, data)

    def _write_binary(self, address: int, data: bytes) -> None:
        room = self.packet_size - 32
        i = 0
        while i < len(data):
            head = f"X{address + i:x},".encode()
            payload = bytearray()
            j = i
            while j < len(data):
                b = data[j]
                piece = bytes((0x7D, b ^ 0x20)) if b in ESCAPED else bytes((b,))
                if len(head) + 8 + len(payload) + len(piece) > room:
                    break
                payload += piece
                j += 1
            packet = head + f"{j - i:x}:".encode() + payload
            self.request_ok(packet, f"writing {j - i} bytes at {address + i:#010x}")
            i = j

    def _write_hex(self, address: int, data: bytes) -> None:
        step = max(16, (self.packet_size - 32) // 2)
        for i in range(0, len(data), step):
            part = data[i:i + step]
            self.request_ok(f"M{address + i:x},{len(part):x}:".encode() + part.hex().encode(),
                            f"writing {len(part)} bytes at {address + i:#010x}")

    # --- registers -----------------------------------------------------------

    def read_all_registers(self, thread: int | None = None) -> bytes:
        """``g`` (of *thread* when given)."""
        if thread is not None:
            self.select_thread(thread)
        reply = self.request(b"g", "reading registers")
        try:
            return bytes.fromhex(reply.decode("ascii").replace("x", "0"))
        except ValueError:
            raise MachineError(f"reading registers: malformed reply {reply[:60]!r}") from None

    def write_all_registers(self, data: bytes, thread: int | None = None) -> None:
        """``G``."""
        if thread is not None:
            self.select_thread(thread)
        self.request_ok(b"G" + data.hex().encode(), "writing registers")

    def read_register(self, regnum: int, thread: int | None = None) -> int:
        """``p n`` as a little-endian number; from ``g`` for a core register
        when the stub has no ``p`` (gdbserver for ARM answers it empty)."""
        if thread is not None:
            self.select_thread(thread)
        if self._p_supported is not False:
            reply = self.request(f"p{regnum:x}".encode(), f"reading register {regnum}")
            if reply:
                self._p_supported = True
                try:
                    return int.from_bytes(bytes.fromhex(reply.decode("ascii")), "little")
                except ValueError:
                    raise MachineError(f"reading register {regnum}: malformed reply "
                                       f"{reply[:60]!r}") from None
            self._p_supported = False
        if regnum > 15:
            raise MachineError(f"reading register {regnum}: the stub has no 'p' packet")
        raw = self.read_all_registers()
        return int.from_bytes(raw[4 * regnum:4 * regnum + 4], "little")

    def write_register(self, regnum: int, value: int, thread: int | None = None) -> None:
        """``P n=v`` (32-bit); through ``g``/``G`` for a core register when
        the stub has no ``P``."""
        if thread is not None:
            self.select_thread(thread)
        if self._p_supported is not False:
            reply = self.request(f"P{regnum:x}={hex_le32(value)}".encode(),
                                 f"writing register {regnum}")
            if reply == b"OK":
                return
            if reply:
                raise MachineError(f"writing register {regnum}: unexpected reply "
                                   f"{reply[:60]!r}")
            self._p_supported = False
        if regnum > 15:
            raise MachineError(f"writing register {regnum}: the stub has no 'P' packet")
        raw = bytearray(self.read_all_registers())
        raw[4 * regnum:4 * regnum + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        self.write_all_registers(bytes(raw))

    # --- execution -------------------------------------------------------------

    def vcont_actions(self) -> set[str]:
        if self._vcont is None:
            reply = self.request(b"vCont?")
            self._vcont = set(reply.decode().split(";")[1:]) if reply.startswith(b"vCont") \
                else set()
        return self._vcont

    def resume(self, signal: int = 0, thread: int | None = None) -> None:
        """Continue (delivering *signal* to *thread* when given: the signal
        it stopped with); the stop reply is read by :meth:`wait`."""
        actions = self.vcont_actions()
        if signal and thread is not None and "C" in actions:
            packet = f"vCont;C{signal:02x}:{thread:x};c".encode()
        elif signal:
            packet = f"C{signal:02x}".encode()
        else:
            packet = b"vCont;c" if "c" in actions else b"c"
        self._selected = {"g": None, "c": None}
        self.round_trips += 1
        self.send_packet(packet, "continue")

    def step(self, thread: int, *, timeout: float | None = None) -> StopReply:
        """Single-step *thread* (the others stay stopped) and wait for the stop."""
        if "s" in self.vcont_actions():
            packet = f"vCont;s:{thread:x}".encode()
        else:
            self.select_thread(thread, "c")
            packet = b"s"
        self._selected["g"] = None
        self.round_trips += 1
        self.send_packet(packet, "single step")
        return self.wait(timeout)

    def wait(self, timeout: float | None = None, *, forever: bool = False) -> StopReply:
        """The stop reply of a resumed target (``timeout=None``: the default)."""
        if self.pending_stops:
            return self.pending_stops.pop(0)
        reply = self.receive("a stop reply", timeout, forever=forever)
        if is_error(reply):
            raise MachineError(f"resuming: the stub answered {reply.decode('ascii', 'replace')}")
        stop = parse_stop_reply(reply)
        if stop.exited:
            self.exit = stop
        return stop

    def interrupt(self) -> None:
        """Send the interrupt byte; the stop reply is read by :meth:`wait`."""
        self._send_raw(b"\x03")

    def set_breakpoint(self, address: int, kind: int = 4) -> None:
        self.request_ok(f"Z0,{address:x},{kind:x}".encode(), f"breakpoint at {address:#010x}")

    def remove_breakpoint(self, address: int, kind: int = 4) -> None:
        self.request_ok(f"z0,{address:x},{kind:x}".encode(),
                        f"removing breakpoint at {address:#010x}")

    def detach(self) -> None:
        """``D``: the target runs on; the connection is closed."""
        try:
            self.request(b"D", "detach")
        finally:
            self.close()

    def kill(self) -> None:
        """``k``: the stub kills the target (it may not answer)."""
        try:
            self.send_packet(b"k", "kill")
            with contextlib.suppress(MachineError):
                self.receive("kill", 1.0)
        except MachineError:
            pass
        finally:
            self.close()

    @contextlib.contextmanager
    def timeout_of(self, seconds: float) -> Iterator[None]:
        """Temporarily change the default timeout."""
        old, self.timeout = self.timeout, seconds
        try:
            yield
        finally:
            self.timeout = old
