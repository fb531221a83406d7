"""The controller: owns one live target, serves its control socket.

It stops the target (all threads, all-stop) for each request, does the work
through the livepatch core, and lets it run again; between requests it
waits on the stub for the program's exit.  A client that disconnects
mid-command does not interrupt the work: the command completes or rolls
back on its own, only the reply is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from armlp.control.paths import ControlError, TargetInfo, runtime_dir
from armlp.control.protocol import recv, send
from armlp.errors import ArmlpError
from armlp.ftrace.tracer import FunctionTracer
from armlp.livepatch import Livepatch
from armlp.livepatch.sysfs import livepatch_status
from armlp.runtime.layout import SITE, SITE_TABLE
from armlp.target import Target

CLIENT_TIMEOUT = 10.0


class LiveProcess(Protocol):
    """What the controller needs from a running process's machine."""

    def interrupt(self) -> None:
        """Stop every thread and wait until the target reports it stopped."""
        ...

    def resume(self) -> None:
        """Let every thread run."""
        ...

    def fileno(self) -> int:
        """Readable when the target reports something while running."""
        ...

    def poll_exit(self) -> int | None:
        """Handle what the target reported; its exit status once it has exited."""
        ...

    def pending(self) -> bool:
        """Whether a report was already read (during a request) and awaits poll_exit."""
        ...

    def exited(self) -> int | None:
        """The exit status if the program has ended (also when the end was
        reported in the middle of a request), else None."""
        ...


#: First retry of a deferred free, and the longest back-off (seconds).
RELEASE_FIRST, RELEASE_MAX = 0.1, 5.0


class Controller:
    """Serves requests for one target until its program exits."""

    def __init__(self, target: Target, process: LiveProcess, *, program: str, pid: int,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.process = process
        self.livepatch = Livepatch(target)
        self.id = f"{Path(program).name}-{pid}"
        self.dir = runtime_dir() / self.id
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_path = self.dir / "ctl.sock"
        self.info = TargetInfo(self.id, str(program), pid, os.getpid(), str(self.socket_path))
        self.on_event = on_event or (lambda _msg: None)
        self._paused = False
        self.last_pause_ms = 0.0
        self.tracer: FunctionTracer | None = None
        self._timers: list[tuple[float, dict[str, Any]]] = []
        #: When to retry freeing disabled patches (None: nothing to free),
        #: with a back-off: a thread that was inside a patch has usually
        #: left it a moment later.
        self._release_at: float | None = None
        self._release_delay = RELEASE_FIRST
        m = target.machine
        #: Whether every thread can be stopped (else no free is ever proven).
        self.stops_all = bool(getattr(m, "stops_all", getattr(m, "all_stop", True)))

    def schedule(self, delay: float, request: dict[str, Any]) -> None:
        """Handle *request* *delay* seconds after serving starts (``--patch P@DELAY``)."""
        self._timers.append((delay, request))

    # -- requests -------------------------------------------------------------

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The target stopped for the duration (nests)."""
        if self._paused:
            yield
            return
        self.process.interrupt()
        self._paused = True
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused = False
            self.process.resume()
            self.last_pause_ms = (time.perf_counter() - t0) * 1e3

    def handle(self, req: dict[str, Any]) -> Any:
        op = req.get("op")
        lp = self.livepatch
        if op == "status":
            with self.paused():
                lp.release_deferred()
                return {"target": self.info.to_json(), **livepatch_status(lp),
                        "all_stop": self.stops_all, "runtime": self._runtime_memory()}
        if op == "patch":
            path = req.get("path")
            if not isinstance(path, str) or not os.path.isabs(path):
                raise ControlError("patch: an absolute path to the patch module is required")
            patch = lp.read(path)             # the checks that need no stop first
            with self.paused():
                lp.enable(patch)              # then the target's, before the first write
            self.on_event(f"patch {patch.name} enabled ("
                          + ", ".join(f"{f.label} -> {f.new_name}" for f in patch.funcs) + ")")
            return {"name": patch.name, "functions": [f.label for f in patch.funcs],
                    "pause_ms": round(self.last_pause_ms, 3)}
        if op == "trace_start":
            if self.tracer is not None:
                raise ControlError("a trace is already running on this target")
            filters = req.get("filters") or []
            if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
                raise ControlError("trace_start: filters must be a list of globs")
            with self.paused():
                tracer = FunctionTracer(self.target.ftrace, filters)
                tracer.start()
            self.tracer = tracer
            return {"sites": [r.name for r in tracer.sites]}
        if op in ("trace_read", "trace_stop"):
            if self.tracer is None:
                raise ControlError("no trace is running on this target")
            with self.paused():
                entries = self.tracer.read()
                if op == "trace_stop":
                    self.tracer.stop()
            lost = self.tracer.lost
            if op == "trace_stop":
                self.tracer = None
            return {"calls": [[e.function, e.caller] for e in entries], "lost": lost}
        if op == "read":
            # Diagnostics and tests: target memory as the controller sees it.
            address, size = req.get("address"), req.get("size")
            if not isinstance(address, int) or not isinstance(size, int) or \
                    not 0 < size <= 1 << 20:
                raise ControlError("read: integer address and size (at most 1 MiB) required")
            with self.paused():
                return {"address": address, "data": self.target.machine.read(address,
                                                                            size).hex()}
        if op == "unpatch":
            name = req.get("name")
            if not isinstance(name, str):
                raise ControlError("unpatch: a patch name is required")
            with self.paused():
                patch = lp.find(name)
                lp.disable(patch)
                deferred = patch in lp.deferred
            self.on_event(f"patch {name} disabled" + (" (its memory is kept until provably unused)"
                                                      if deferred else ""))
            return {"name": name, "memory_freed": not deferred,
                    "pause_ms": round(self.last_pause_ms, 3)}
        raise ControlError(f"unknown request {op!r}")

    def _runtime_memory(self) -> dict[str, Any]:
        """Where armlp's own data lives in the target (diagnostics, tests):
        the runtime module, the site records and their lookup table, each
        ``[address, size]``, and every mcount site."""
        ft = self.livepatch.ftrace
        rt = ft.runtime
        recs = sorted(r.record for r in ft.records.values())
        bits, table = SITE_TABLE.unpack(
            self.target.machine.read(rt.symbol("armlp_sites"), SITE_TABLE.size))
        return {
            "module": [rt.module.base, rt.module.size],
            "site_records": [recs[0], recs[-1] + SITE.size - recs[0]] if recs else [0, 0],
            "site_table": [table, 4 << bits],
            "sites": [{"function": r.name, "site": r.ip, "entry": r.report.fn.address}
                      for r in sorted(ft.records.values(), key=lambda r: r.ip)],
        }

    # -- the loop -------------------------------------------------------------

    def serve(self) -> int:
        """Run the target, serving requests, until its program exits."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        listener.listen(8)
        (self.dir / "info.json").write_text(json.dumps(self.info.to_json()))
        clients: dict[socket.socket, bytearray] = {}
        start = time.monotonic()
        timers = sorted((start + d, i, r) for i, (d, r) in enumerate(self._timers))
        try:
            self.process.resume()
            while True:
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    self._run_timer(timers.pop(0)[2])
                    status = self.process.exited()
                    if status is not None:
                        return status
                if self._release_at is not None and self._release_at <= now:
                    self._retry_release()
                    status = self.process.exited()
                    if status is not None:
                        return status
                if self._release_at is None and self.livepatch.deferred and self.stops_all:
                    self._release_at = now + self._release_delay
                due = [t[0] for t in timers[:1]] + \
                    ([self._release_at] if self._release_at is not None else [])
                wait = max(0.0, min(due) - now) if due else None
                by_fd = {c.fileno(): c for c in clients}
                target_fd = self.process.fileno()
                if self.process.pending():
                    wait = 0.0
                readable, _, _ = select.select([listener.fileno(), target_fd, *by_fd], [], [],
                                               wait)
                if target_fd in readable or self.process.pending():
                    status = self.process.poll_exit()
                    if status is not None:
                        return status
                if listener.fileno() in readable:
                    conn, _ = listener.accept()
                    conn.settimeout(CLIENT_TIMEOUT)
                    clients[conn] = bytearray()
                for fd in readable:
                    if fd in by_fd:
                        self._serve_client(by_fd[fd], clients)
                status = self.process.exited()      # ended while a request ran
                if status is not None:
                    return status
        finally:
            for conn in clients:
                conn.close()
            listener.close()
            for f in (self.socket_path, self.dir / "info.json"):
                with contextlib.suppress(OSError):
                    f.unlink()
            with contextlib.suppress(OSError):
                self.dir.rmdir()

    def _retry_release(self) -> None:
        """Try again to free disabled patches; back off while threads are
        still found in them."""
        lp = self.livepatch
        freed = []
        try:
            with self.paused():
                freed = lp.release_deferred()
        except ArmlpError as exc:
            self.on_event(f"freeing disabled patches failed: {exc}")
        for patch in freed:
            self.on_event(f"patch {patch.name}: memory freed")
        if lp.deferred:
            self._release_delay = min(self._release_delay * 2, RELEASE_MAX)
            self._release_at = time.monotonic() + self._release_delay
        else:
            self._release_delay, self._release_at = RELEASE_FIRST, None

    def _run_timer(self, req: dict[str, Any]) -> None:
        try:
            self.handle(req)
        except ArmlpError as exc:
            self.on_event(f"{req.get('op')} failed: {exc}")

    def _serve_client(self, conn: socket.socket, clients: dict[socket.socket, bytearray]
                      ) -> None:
        try:
            req = recv(conn, clients[conn])
        except (ControlError, OSError):
            req = None
        if req is None:
            clients.pop(conn).clear()
            conn.close()
            return
        try:
            reply = {"ok": True, "result": self.handle(req)}
        except ArmlpError as exc:
            reply = {"ok": False, "error": str(exc)}
        try:
            send(conn, reply)
        except OSError:      # the client went away: the work stands, the reply is lost
            clients.pop(conn, None)
            conn.close()
