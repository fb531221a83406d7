"""The guardian's takeover, against a fake qemu stub on a socket pair: every
packet acked, the program's signals handed back, armlp's stops answered with
a detach, and no stop answered twice (a stray continue would be taken by the
next stop and shift every later signal)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from armlp.control.guardian import _take_over
from armlp.machine.rsp_packets import frame

OURS = frozenset({74, 5})


class FakeStub:
    """qemu's end: send packets, read what the guardian answers."""

    def __init__(self, paused: bool) -> None:
        self.sock, theirs = socket.socketpair()
        self.sock.settimeout(3)
        self.thread = threading.Thread(target=_take_over, args=(theirs,),
                                       kwargs={"paused": paused, "drop": OURS}, daemon=True)
        self.theirs = theirs
        self.thread.start()
        self.buf = b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.sock.recv(4096)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def expect(self, data: bytes) -> None:
        assert self.read(len(data)) == data

    def quiet(self) -> None:
        self.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            self.buf += self.sock.recv(4096)
        self.sock.settimeout(3)
        assert self.buf == b""

    def close(self) -> None:
        self.sock.close()
        self.thread.join(3)
        self.theirs.close()


@pytest.fixture
def stub_factory() -> Iterator[type[FakeStub]]:
    made: list[FakeStub] = []

    class Made(FakeStub):
        def __init__(self, paused: bool) -> None:
            super().__init__(paused)
            made.append(self)

    yield Made
    for s in made:
        s.close()


def test_running_program_gets_its_signals_back(stub_factory: type[FakeStub]) -> None:
    s = stub_factory(paused=False)
    s.expect(b"+x#00")                         # ack owed, half packet ended
    s.sock.sendall(frame(b"T1bthread:64;"))    # SIGPROF of the program
    s.expect(b"+" + frame(b"C1b"))
    s.sock.sendall(frame(b"T4athread:64;"))    # armlp's stop signal, arriving late
    s.expect(b"+" + frame(b"D"))
    s.sock.sendall(frame(b"OK"))
    s.expect(b"+")
    s.sock.sendall(frame(b"T0athread:65;"))    # SIGBUS of the program: handed back too
    s.expect(b"+" + frame(b"C0a"))
    s.sock.sendall(frame(b"W00"))
    s.expect(b"+")
    s.thread.join(3)
    assert not s.thread.is_alive()


def test_paused_program_detached_once(stub_factory: type[FakeStub]) -> None:
    s = stub_factory(paused=True)
    s.expect(b"+x#00")
    s.expect(frame(b"D"))                      # no stop came: the parked thread gets the detach
    s.sock.sendall(frame(b"T1bthread:64;"))    # a stop that raced the D: answered by it
    s.expect(b"+")
    s.sock.sendall(frame(b"OK"))
    s.expect(b"+")
    s.quiet()                                  # no second answer
    s.sock.sendall(frame(b"T1bthread:64;"))
    s.expect(b"+" + frame(b"C1b"))


def test_paused_stop_on_its_way_is_answered_by_the_detach(
        stub_factory: type[FakeStub]) -> None:
    s = stub_factory(paused=True)
    s.expect(b"+x#00")
    s.sock.sendall(frame(b"T05thread:64;"))    # the single step armlp had asked for
    s.expect(b"+" + frame(b"D"))
    s.sock.sendall(frame(b"OK"))
    s.expect(b"+")
    s.quiet()
