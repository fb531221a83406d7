"""The control protocol: one JSON object per line, each way.

Request ``{"op": "patch", "path": "/abs/fix.o"}``; reply ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "one line"}``.  Every read has a
timeout; a peer that goes away mid-message is an error, never a hang.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from armlp.control.paths import ControlError

MAX_MESSAGE = 16 * 1024 * 1024


def send(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def recv(sock: socket.socket, buf: bytearray) -> dict[str, Any] | None:
    """The next message (None when the peer closed cleanly between messages)."""
    while b"\n" not in buf:
        try:
            chunk = sock.recv(65536)
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
        if len(buf) > MAX_MESSAGE:
            raise ControlError("message too large")
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    try:
        obj = json.loads(line)
    except ValueError:
        raise ControlError("malformed message (not JSON)") from None
    if not isinstance(obj, dict):
        raise ControlError("malformed message (not an object)")
    return obj


def request(path: str, obj: dict[str, Any], *, timeout: float = 60.0) -> Any:
    """Send one request to the controller at *path* and return its result."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(f"cannot reach the controller at {path}: "
                               f"{exc.strerror or exc}") from None
        send(sock, obj)
        reply = recv(sock, bytearray())
    if reply is None:
        raise ControlError("the controller closed the connection without replying")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply.get("result")
