"""The controller's client connections (:mod:`armlp.control.server`).

Every socket is non-blocking, with its own buffers: one JSON request per
line in, one reply per line out.  A client that starts a message, or is
sent a reply, has :data:`CLIENT_DEADLINE` to finish it, or it is dropped:
a slow or silent client never holds the controller up.  A request may be
answered later (``wait``, when its transition ends): the client's further
lines wait behind it, so replies keep the order of requests.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from armlp.control.protocol import MAX_REQUEST, encode

#: How long a client may take to finish a message it started, or to read a
#: reply, before it is dropped.
CLIENT_DEADLINE = 5.0
MAX_CLIENTS = 32


@dataclass
class Client:
    """One connection to the controller."""

    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    #: When the message being received, or the reply being sent, must be done.
    deadline: float | None = None
    closing: bool = False
    #: A request of its own is answered later (see Clients.answer).
    waiting: bool = False


class Clients:
    """The open connections, by descriptor.

    *serve* returns the reply to one request line of a client, or None
    when it will be given later through :meth:`answer`; *gone* is told of
    each client dropped (what it owned ends with it)."""

    def __init__(self, serve: Callable[[bytes, Client], dict[str, Any] | None],
                 gone: Callable[[Client], None]) -> None:
        self.by_fd: dict[int, Client] = {}
        self._serve = serve
        self._gone = gone

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        if len(self.by_fd) >= MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        self.by_fd[sock.fileno()] = Client(sock)

    def receive(self, client: Client) -> None:
        """Read what the client sent; serve each complete line."""
        try:
            chunk = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.drop(client)
            return
        if client.closing:
            return                  # said all there is to say to this one
        client.inbox += chunk
        self._serve_lines(client)
        if len(client.inbox) > MAX_REQUEST:
            self._reply(client, {"ok": False, "error": f"request longer than {MAX_REQUEST} "
                                                       f"bytes"})
            client.closing = True
            client.inbox.clear()
        self._set_deadline(client)

    def answer(self, client: Client, reply: dict[str, Any]) -> None:
        """The reply to the request *client* waits on; then its next lines."""
        if client.sock.fileno() not in self.by_fd:
            return                  # gone meanwhile
        client.waiting = False
        self._reply(client, reply)
        self._serve_lines(client)
        self._set_deadline(client)

    def _serve_lines(self, client: Client) -> None:
        while b"\n" in client.inbox and not client.closing and not client.waiting:
            line, _, rest = bytes(client.inbox).partition(b"\n")
            client.inbox[:] = rest
            reply = self._serve(line, client)
            if reply is None:
                client.waiting = True
            else:
                self._reply(client, reply)

    def _set_deadline(self, client: Client) -> None:
        if client.inbox and not client.waiting and client.deadline is None:
            client.deadline = time.monotonic() + CLIENT_DEADLINE
        elif not client.inbox and not client.outbox:
            client.deadline = None

    def _reply(self, client: Client, reply: dict[str, Any]) -> None:
        client.outbox += encode(reply)
        self.flush(client)

    def flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:          # the client went away: the work stands, the reply is lost
            self.drop(client)
            return
        del client.outbox[:sent]
        if client.outbox:
            if client.deadline is None:
                client.deadline = time.monotonic() + CLIENT_DEADLINE
        elif client.closing:
            self.drop(client)
        elif not client.inbox:
            client.deadline = None

    def drop(self, client: Client) -> None:
        """Close a client (telling *gone*)."""
        if self.by_fd.pop(client.sock.fileno(), None) is None:
            return
        client.sock.close()
        self._gone(client)

    def expire(self, now: float) -> None:
        """Drop every client past its deadline: nothing else waits on it."""
        for c in [c for c in self.by_fd.values() if c.deadline is not None
                  and c.deadline <= now]:
            self.drop(c)

    def deadlines(self) -> list[float]:
        return [c.deadline for c in self.by_fd.values() if c.deadline is not None]

    def writers(self) -> list[int]:
        """Descriptors with a reply still to send."""
        return [fd for fd, c in self.by_fd.items() if c.outbox]

    def close(self) -> None:
        for c in self.by_fd.values():
            c.sock.close()
        self.by_fd.clear()
