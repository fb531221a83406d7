"""The control protocol: one JSON object per line, each way.

Request ``{"op": "patch", "path": "/abs/fix.o"}``; reply ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "one line"}``.

Requests are parsed into typed values here, with every field checked and
bounded, before a handler sees them: a request the controller cannot serve
is one error line to that client, never an exception in the controller.
Every read has a timeout; a peer that goes away mid-message is an error,
never a hang.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from armlp.control.paths import ControlError

#: Longest request line the controller reads (a patch path, a few globs).
MAX_REQUEST = 64 * 1024
#: Longest reply a client reads (a trace read may be large).
MAX_REPLY = 64 * 1024 * 1024
MAX_PATH = 4096
MAX_FILTERS, MAX_FILTER = 64, 256
MAX_READ = 1 << 20
#: Longest ``wait`` (a day).
MAX_WAIT = 86400


@dataclass(frozen=True)
class Status:
    """``status``: the sysfs view of the target."""


@dataclass(frozen=True)
class Patch:
    """``patch``: load and enable the patch module at *path* (absolute)."""

    path: str


@dataclass(frozen=True)
class Unpatch:
    """``unpatch``: disable the enabled patch *name*."""

    name: str


@dataclass(frozen=True)
class Force:
    """``force``: switch every thread of the transition of patch *name* now."""

    name: str


@dataclass(frozen=True)
class TraceStart:
    """``trace_start``: the function tracer on the functions matching
    *filters*, owned by the client's connection (stopped when it closes)."""

    filters: tuple[str, ...]


@dataclass(frozen=True)
class TraceRead:
    """``trace_read``: the calls recorded since the last read."""


@dataclass(frozen=True)
class TraceStop:
    """``trace_stop``: the last calls, and the tracer stopped."""


@dataclass(frozen=True)
class Read:
    """``read``: target memory as the controller sees it (diagnostics, tests)."""

    address: int
    size: int


@dataclass(frozen=True)
class Wait:
    """``wait``: the reply comes once patch *name* is not in transition, or
    after *timeout* seconds (then with what holds it)."""

    name: str
    timeout: float


Request = Status | Patch | Unpatch | Force | TraceStart | TraceRead | TraceStop | Read | Wait


def _text(obj: dict[str, Any], key: str, limit: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise ControlError(f"{obj.get('op')}: {key!r} must be a non-empty string of at most "
                           f"{limit} characters")
    return value


def _patch(obj: dict[str, Any]) -> Patch:
    path = _text(obj, "path", MAX_PATH)
    if not path.startswith("/"):
        raise ControlError("patch: an absolute path to the patch module is required")
    return Patch(path)


def _trace_start(obj: dict[str, Any]) -> TraceStart:
    filters = obj.get("filters", [])
    if not isinstance(filters, list) or len(filters) > MAX_FILTERS or \
            not all(isinstance(f, str) and 0 < len(f) <= MAX_FILTER for f in filters):
        raise ControlError(f"trace_start: filters must be a list of at most {MAX_FILTERS} "
                           f"globs of at most {MAX_FILTER} characters")
    return TraceStart(tuple(filters))


def _read(obj: dict[str, Any]) -> Read:
    address, size = obj.get("address"), obj.get("size")
    if type(address) is not int or type(size) is not int or not 0 <= address < 1 << 32 \
            or not 0 < size <= MAX_READ or address + size > 1 << 32:
        raise ControlError(f"read: an address below 2**32 and a size of 1 to {MAX_READ} bytes "
                           f"within it are required")
    return Read(address, size)


def _wait(obj: dict[str, Any]) -> Wait:
    timeout = obj.get("timeout")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or \
            not 0 <= timeout <= MAX_WAIT:
        raise ControlError(f"wait: a timeout of 0 to {MAX_WAIT} seconds is required")
    return Wait(_text(obj, "name", 256), float(timeout))


_PARSERS: dict[str, Callable[[dict[str, Any]], Request]] = {
    "status": lambda _o: Status(),
    "patch": _patch,
    "unpatch": lambda o: Unpatch(_text(o, "name", 256)),
    "force": lambda o: Force(_text(o, "name", 256)),
    "trace_start": _trace_start,
    "trace_read": lambda _o: TraceRead(),
    "trace_stop": lambda _o: TraceStop(),
    "read": _read,
    "wait": _wait,
}


def parse_request(obj: dict[str, Any]) -> Request:
    """The typed request of a decoded message (ControlError if malformed)."""
    op = obj.get("op")
    parser = _PARSERS.get(op) if isinstance(op, str) else None
    if parser is None:
        shown = repr(op)[:40] if isinstance(op, str) else "missing"
        raise ControlError(f"unknown request {shown} (one of {', '.join(_PARSERS)})")
    return parser(obj)


def decode(line: bytes) -> dict[str, Any]:
    """One message line as a JSON object (ControlError if it is not one)."""
    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ControlError("malformed message (not JSON)") from None
    if not isinstance(obj, dict):
        raise ControlError("malformed message (not an object)")
    return obj


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def encode(obj: dict[str, Any]) -> bytes:
    """One message line."""
    return json.dumps(obj, allow_nan=False).encode() + b"\n"


class Session:
    """One connection to a controller, for several requests (a trace keeps
    its session: the controller stops the tracer when it closes)."""

    def __init__(self, path: str, *, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self._buf = bytearray()
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot reach the controller at {path}: "
                               f"{exc.strerror or exc}") from None

    def request(self, obj: dict[str, Any]) -> Any:
        """Send one request and return its result (ControlError on refusal)."""
        try:
            self.sock.sendall(encode(obj))
        except OSError as exc:
            raise ControlError(f"connection to the controller lost: "
                               f"{exc.strerror or exc}") from None
        reply = self._receive()
        if reply is None:
            raise ControlError("the controller closed the connection without replying")
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "request failed")))
        return reply.get("result")

    def _receive(self) -> dict[str, Any] | None:
        buf = self._buf
        while b"\n" not in buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise ControlError("timed out waiting for the controller") from None
            except OSError as exc:
                raise ControlError(f"connection to the controller lost: "
                                   f"{exc.strerror or exc}") from None
            if not chunk:
                if buf:
                    raise ControlError("connection closed in the middle of a message")
                return None
            buf += chunk
            if len(buf) > MAX_REPLY:
                raise ControlError("reply too large")
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        return decode(line)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(path: str, obj: dict[str, Any], *, timeout: float = 60.0) -> Any:
    """Send one request to the controller at *path* and return its result."""
    with Session(path, timeout=timeout) as session:
        return session.request(obj)
