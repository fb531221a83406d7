"""The controller: owns one live target, serves its control socket.

It stops the target for each request, does the work through the livepatch
core, and lets it run again; between requests it waits on the stub for the
program's exit.

Nothing a client does can take the target down or hold the controller up:

* requests are typed and bounded (:mod:`armlp.control.protocol`) and every
  handler's failure, expected or not, is one error line to that client,
  with the target resumed exactly as it was (the livepatch core rolls back
  a half-done enable or disable);
* clients are read without blocking, each with its own buffer and a
  deadline for a message it started (:mod:`armlp.control.clients`): a slow
  or silent client is dropped, the program's stops are answered meanwhile;
  a ``wait`` is answered when its transition ends;
* a client that disconnects mid-command loses only the reply; a trace ends
  with the connection that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from armlp.control.clients import Client, Clients
from armlp.control.paths import ControlError, TargetInfo, runtime_dir
from armlp.control.protocol import (
    Force,
    Patch,
    Read,
    Request,
    Status,
    TraceRead,
    TraceStart,
    TraceStop,
    Unpatch,
    Wait,
    decode,
    parse_request,
)
from armlp.errors import ArmlpError
from armlp.ftrace.tracer import FunctionTracer
from armlp.livepatch import Livepatch
from armlp.livepatch.sysfs import livepatch_status
from armlp.livepatch.transition import STATE_NAMES
from armlp.machine.base import read_word
from armlp.runtime.layout import KLP_UNPATCHED, SITE, SITE_TABLE
from armlp.target import Target

#: sun_path of a Unix socket: 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


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

    def poll_interval(self) -> float | None:
        """How often :meth:`poll_exit` must run even when :meth:`fileno` is
        quiet (None: only when it is readable)."""
        ...

    def held_s(self) -> float | None:
        """Seconds the program's own threads have been held stopped so far,
        when :meth:`interrupt` stops only armlp's agent (the threads run
        while armlp talks to it); None when it stops them all."""
        ...


#: First try of a deferred free, and the longest back-off (seconds).  A free
#: costs the program a stop (and qemu's translations: the agent leaves the
#: stub), so frees wait a moment and go together.
RELEASE_FIRST, RELEASE_MAX = 0.5, 5.0
#: Transition retries: every 10 ms for the first attempts (a running thread
#: switches on a clean scan once it has run since the code writes, and one
#: caught in the trampoline just waits for the next), then backing off to
#: once a second, as the kernel's klp_transition_work does.
TRANSITION_FIRST, TRANSITION_MAX = 0.01, 1.0
TRANSITION_QUICK_ATTEMPTS = 20
#: What a handler returns for a reply it gives later (Clients.answer).
_LATER = object()
#: A transition still open after this long is reported.
STALL_AFTER = 60.0
#: How long code written stale-ok (a transition's fast paths) may wait for
#: qemu's translations to be dropped, when no other code update does it.
STALE_AFTER = 0.1


def target_id(program: str, pid: int) -> str:
    """The id of a target: its program's name (safe characters, at most 32)
    and its pid."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(program).name)[:32] or "program"
    return f"{name}-{pid}"


class Controller:
    """Serves requests for one target until its program exits."""

    def __init__(self, target: Target, process: LiveProcess, *, program: str, pid: int,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.process = process
        self.livepatch = Livepatch(target)
        self.livepatch.free_later = True    # by _retry_release, between transitions
        self.id = target_id(program, pid)
        self.dir = runtime_dir() / self.id
        self.socket_path = self.dir / "ctl.sock"
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise ControlError(f"the control socket path {self.socket_path} is longer than a "
                               f"Unix socket allows: set ARMLP_RUNTIME_DIR to a shorter "
                               f"directory")
        self.info = TargetInfo(self.id, str(program), pid, os.getpid(), str(self.socket_path))
        self.on_event = on_event or (lambda _msg: None)
        self._paused = False
        #: Whether serve() let the program go: before, it is stopped already.
        self._started = False
        #: The last request's pause as the program saw it (its threads held
        #: still), and the time armlp had the target stopped for its work.
        self.last_pause_ms = 0.0
        self.last_stopped_ms = 0.0
        self.tracer: FunctionTracer | None = None
        self._tracer_owner: Client | None = None
        self._timers: list[tuple[float, Request]] = []
        #: When to retry freeing disabled patches (None: nothing to free),
        #: with a back-off: a thread that was inside a patch has usually
        #: left it a moment later.
        self._release_at: float | None = None
        self._release_delay = RELEASE_FIRST
        #: When to try the open transition again, and the back-off.
        self._transition_at: float | None = None
        self._transition_delay = TRANSITION_FIRST
        self._stale_at: float | None = None
        #: A transition open this long is reported (``--stall-after``).
        self.stall_after = STALL_AFTER
        #: Whether every thread can be stopped (else no free is ever proven).
        self.stops_all = target.machine.stops_all
        self._handlers: dict[type, Callable[[Any, Client | None], Any]] = {
            Status: self._status, Patch: self._patch, Unpatch: self._unpatch, Force: self._force,
            TraceStart: self._trace_start, TraceRead: self._trace_read,
            TraceStop: self._trace_read, Read: self._read, Wait: self._wait,
        }
        self.clients = Clients(self._serve_line, self._client_gone)
        #: Clients waiting for a transition to end: (client, patch, deadline).
        self._waiters: list[tuple[Client, str, float]] = []

    def schedule(self, delay: float, request: Request) -> None:
        """Handle *request* *delay* seconds after serving starts (``--patch P@DELAY``)."""
        self._timers.append((delay, request))

    # -- requests -------------------------------------------------------------

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The target stopped for the duration (nests)."""
        if self._paused or not self._started:
            yield
            return
        held = self.process.held_s()
        t0 = time.perf_counter()
        self.process.interrupt()
        self._paused = True
        try:
            yield
        finally:
            self._paused = False
            self.process.resume()
            self.last_stopped_ms = (time.perf_counter() - t0) * 1e3
            after = self.process.held_s()
            self.last_pause_ms = (self.last_stopped_ms if held is None or after is None
                                  else (after - held) * 1e3)

    def _pause(self) -> dict[str, float]:
        return {"pause_ms": round(self.last_pause_ms, 3),
                "stopped_ms": round(self.last_stopped_ms, 3)}

    def handle(self, req: Request, client: Client | None = None) -> Any:
        """Serve one typed request (for *client*, None for a timer)."""
        return self._handlers[type(req)](req, client)

    def _status(self, _req: Status, _client: Client | None) -> Any:
        with self.paused():
            return {"target": self.info.to_json(), **livepatch_status(self.livepatch),
                    "all_stop": self.stops_all, "runtime": self._runtime_memory(),
                    "trace": self.tracer is not None}

    def _patch(self, req: Patch, _client: Client | None) -> Any:
        lp = self.livepatch
        patch = lp.read(req.path)             # the checks that need no stop first
        with self.paused():
            replaced = [p.name for p in lp.patches] if patch.replace else []
            lp.enable(patch)                  # then the target's, before the first write
        self.on_event(f"patch {patch.name} enabled ("
                      + ", ".join(f"{f.label} -> {f.new_name}" for f in patch.funcs) + ")"
                      + (f", replacing {', '.join(replaced)}" if replaced else ""))
        return {"name": patch.name, "functions": [f.label for f in patch.funcs],
                "replaced": replaced, **self._transition_result(patch.name),
                **self._pause()}

    def _unpatch(self, req: Unpatch, _client: Client | None) -> Any:
        lp = self.livepatch
        with self.paused():
            patch = lp.find(req.name)
            lp.disable(patch)
        deferred = patch in lp.deferred
        self.on_event(f"patch {patch.name} disabl" + ("ed" if lp.transition is None else "ing")
                      + (" (its memory is freed once no thread can be in it)" if deferred else ""))
        return {"name": patch.name, "memory_freed": patch.memory == 0,
                **self._transition_result(patch.name), **self._pause()}

    def _force(self, req: Force, _client: Client | None) -> Any:
        lp = self.livepatch
        t = lp.transition
        if t is None or t.patch.name != req.name:
            raise ControlError(f"patch {req.name!r} is not in transition")
        with self.paused():
            pending = t.blocked()
            lp.force()
        self.on_event(f"patch {req.name}: transition forced: the threads still blocked were "
                      f"switched unchecked; consistency is not guaranteed for them")
        return {"name": req.name, "forced": pending, "transition": False}

    def _transition_result(self, name: str) -> dict[str, Any]:
        """Whether the transition a request started has finished, and if
        not what holds it (retried in the background)."""
        state = self._in_transition(name)
        if state["transition"]:
            self._transition_at = time.monotonic() + self._transition_delay
        elif self.livepatch.transition is None:
            self._transition_delay, self._transition_at = TRANSITION_FIRST, None
        state.pop("name")
        return state

    def _retry_transition(self) -> None:
        """Try the open transition again (the kernel's klp_transition_work,
        backing off to once a second); report it once when it stalls."""
        lp = self.livepatch
        t = lp.transition
        self._transition_at = None
        if t is None:
            return
        try:
            with self.paused():
                done = lp.try_complete()
        except ArmlpError as exc:
            self.on_event(f"transition of patch {t.patch.name}: attempt failed: {exc}")
            done = False
        if done:
            self.on_event(f"patch {t.patch.name}: transition to {STATE_NAMES[t.target]} "
                          f"finished after {t.attempts} attempts, "
                          f"{(time.monotonic() - t.started) * 1e3:.0f} ms")
            if t.target == KLP_UNPATCHED and t.patch.memory == 0:
                self.on_event(f"patch {t.patch.name}: memory freed")
            self._transition_delay = TRANSITION_FIRST
            return
        age = time.monotonic() - t.started
        if age >= self.stall_after and not t.stall_reported:
            t.stall_reported = True
            who = "; ".join(f"thread {b['thread']}: {b['reason']}"
                            for b in t.blocked()) or "no thread can be checked"
            self.on_event(f"patch {t.patch.name}: transition stalled for {age:.0f} s ({who}); "
                          f"'armlp force {t.patch.name}' switches the rest")
        if t.attempts >= TRANSITION_QUICK_ATTEMPTS:
            self._transition_delay = min(self._transition_delay * 2, TRANSITION_MAX)
        self._transition_at = time.monotonic() + self._transition_delay

    def _trace_start(self, req: TraceStart, client: Client | None) -> Any:
        if self.tracer is not None:
            raise ControlError("a trace is already running on this target")
        with self.paused():
            tracer = FunctionTracer(self.target.ftrace, list(req.filters))
            tracer.start()
        self.tracer, self._tracer_owner = tracer, client
        return {"sites": [r.name for r in tracer.sites]}

    def _trace_read(self, req: TraceRead | TraceStop, _client: Client | None) -> Any:
        tracer = self.tracer
        if tracer is None:
            raise ControlError("no trace is running on this target")
        with self.paused():
            entries = tracer.read()
            if isinstance(req, TraceStop):
                tracer.stop()
                self.tracer = self._tracer_owner = None
        return {"calls": [[e.function, e.caller] for e in entries], "lost": tracer.lost}

    def _read(self, req: Read, _client: Client | None) -> Any:
        m = self.target.machine
        with self.paused():
            end = req.address + req.size
            at = req.address
            for r in sorted((r for r in m.regions() if r.readable), key=lambda r: r.start):
                if r.start <= at < r.end:
                    at = r.end
            if at < end:
                raise ControlError(f"read: [{req.address:#x}, {end:#x}) is not mapped readable "
                                   f"in the target")
            return {"address": req.address, "data": m.read(req.address, req.size).hex()}

    def _runtime_memory(self) -> dict[str, Any]:
        """Where armlp's own data lives in the target (diagnostics, tests):
        the runtime module, the site records and their lookup table, each
        ``[address, size]``, and every mcount site."""
        ft = self.livepatch.ftrace
        rt = ft.runtime
        recs = sorted(r.record for r in ft.records.values())
        m = self.target.machine
        bits, table = SITE_TABLE.unpack(m.read(read_word(m, rt.symbol("armlp_sites")),
                                               SITE_TABLE.size))
        return {
            "module": [rt.module.base, rt.module.size],
            "site_records": [recs[0], recs[-1] + SITE.size - recs[0]] if recs else [0, 0],
            "site_table": [table, 4 << bits],
            "sites": [{"function": r.name, "site": r.ip, "entry": r.report.fn.address}
                      for r in sorted(ft.records.values(), key=lambda r: r.ip)],
        }

    def _serve_line(self, line: bytes, client: Client) -> dict[str, Any] | None:
        try:
            return self._serve_request(parse_request(decode(line)), client)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}

    def _serve_request(self, req: Request, client: Client | None) -> dict[str, Any] | None:
        """The reply to one request (None: given later); no failure of a
        handler escapes."""
        try:
            result = self.handle(req, client)
            return None if result is _LATER else {"ok": True, "result": result}
        except ArmlpError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            what = type(req).__name__.lower()
            self.on_event(f"internal error in {what}: {type(exc).__name__}: {exc}")
            return {"ok": False, "error": f"internal error in {what} "
                                          f"({type(exc).__name__}: {exc}); the target is "
                                          f"unchanged"}

    # -- the loop -------------------------------------------------------------

    def listen(self) -> socket.socket:
        """The control socket, and the info file that lets clients find it."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()       # a stale one of a reused pid
            old_umask = os.umask(0o177)
            try:
                listener.bind(str(self.socket_path))
            finally:
                os.umask(old_umask)
            os.chmod(self.socket_path, 0o600)
            listener.listen(8)
            listener.setblocking(False)
            tmp = self.dir / "info.json.tmp"
            tmp.write_text(json.dumps(self.info.to_json()))
            tmp.replace(self.dir / "info.json")
        except OSError as exc:
            listener.close()
            self._remove_files()
            raise ControlError(f"cannot serve the control socket in {self.dir}: "
                               f"{exc.strerror or exc}") from None
        return listener

    def serve(self, listener: socket.socket | None = None) -> int:
        """Run the target, serving requests, until its program exits."""
        listener = listener or self.listen()
        start = time.monotonic()
        timers = sorted((start + d, i, r) for i, (d, r) in enumerate(self._timers))
        try:
            # Ordering: patches given without a delay are enabled while the
            # program is still stopped (under armlp run: before its first
            # instruction, or its entry point if dynamic), so no call of the
            # program's ever runs the old code.
            while timers and timers[0][0] <= start:
                self._run_timer(timers.pop(0)[2])
            self._started = True
            self.process.resume()
            while True:
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    self._run_timer(timers.pop(0)[2])
                    status = self.process.exited()
                    if status is not None:
                        return status
                if self._transition_at is not None and self._transition_at <= now:
                    self._retry_transition()
                    status = self.process.exited()
                    if status is not None:
                        return status
                if self._release_at is None and self.livepatch.deferred and self.stops_all:
                    self._release_at = now + self._release_delay
                # A free waits while a transition runs (it is no part of it).
                release_at = None if self.livepatch.transition else self._release_at
                if release_at is not None and release_at <= now:
                    self._retry_release()
                    status = self.process.exited()
                    if status is not None:
                        return status
                    release_at = self._release_at
                if self._stale_at is not None and self._stale_at <= now:
                    self._stale_at = None
                    status = self.process.poll_exit()
                    if status is not None:
                        return status
                    try:
                        with self.paused():
                            self.target.machine.flush_stale()
                    except (ArmlpError, OSError) as exc:   # old code runs on: correct
                        self.on_event(f"dropping old translations failed: {exc}")
                    status = self.process.exited()
                    if status is not None:
                        return status
                if self._stale_at is None and self.target.machine.stale:
                    self._stale_at = now + STALE_AFTER
                self._answer_waiters(now)
                self.clients.expire(now)        # too slow: dropped, nothing else waits
                due = [t[0] for t in timers[:1]] + \
                    ([release_at] if release_at is not None else []) + \
                    ([self._transition_at] if self._transition_at is not None else []) + \
                    ([self._stale_at] if self._stale_at is not None else []) + \
                    [w[2] for w in self._waiters] + self.clients.deadlines()
                wait = max(0.0, min(due) - now) if due else None
                interval = self.process.poll_interval()
                if interval is not None:
                    wait = interval if wait is None else min(wait, interval)
                # Ordering: pending() may find the connection ended and close
                # it; the descriptor handed to select() is taken after it.
                if self.process.pending():
                    wait = 0.0
                target_fd = self.process.fileno()
                readable, writable, _ = select.select(
                    [listener.fileno(), *([target_fd] if target_fd >= 0 else []),
                     *self.clients.by_fd], self.clients.writers(), [], wait)
                if target_fd in readable or self.process.pending() or interval is not None:
                    status = self.process.poll_exit()
                    if status is not None:
                        return status
                if listener.fileno() in readable:
                    self.clients.accept(listener)
                for fd in writable:
                    if fd in self.clients.by_fd:
                        self.clients.flush(self.clients.by_fd[fd])
                for fd in readable:
                    if fd in self.clients.by_fd:
                        self.clients.receive(self.clients.by_fd[fd])
                status = self.process.exited()      # ended while a request ran
                if status is not None:
                    return status
        finally:
            self.clients.close()
            listener.close()
            self._remove_files()

    def _remove_files(self) -> None:
        for f in (self.socket_path, self.dir / "info.json", self.dir / "info.json.tmp"):
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def _client_gone(self, client: Client) -> None:
        """A client went away: a trace it started ends with it, and a wait
        of its is forgotten."""
        self._waiters = [w for w in self._waiters if w[0] is not client]
        if self._tracer_owner is client and self.tracer is not None:
            try:
                with self.paused():
                    self.tracer.stop()
                self.on_event("trace stopped: its client went away")
            except ArmlpError as exc:
                self.on_event(f"stopping the trace of a client that went away failed: {exc}")
            self.tracer = self._tracer_owner = None

    def _wait(self, req: Wait, client: Client | None) -> Any:
        """Answered once patch *name* is not in transition (or at the
        request's timeout: still in transition, and what holds it)."""
        if client is None:
            return self._in_transition(req.name)
        self._waiters.append((client, req.name, time.monotonic() + req.timeout))
        return _LATER

    def _in_transition(self, name: str) -> dict[str, Any]:
        t = self.livepatch.transition
        if t is None or t.patch.name != name:
            return {"name": name, "transition": False}
        return {"name": name, "transition": True, "blocked": t.blocked()}

    def _answer_waiters(self, now: float) -> None:
        for w in list(self._waiters):
            client, name, deadline = w
            result = self._in_transition(name)
            if result["transition"] and deadline > now:
                continue
            self._waiters.remove(w)
            self.clients.answer(client, {"ok": True, "result": result})

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

    def _run_timer(self, req: Request) -> None:
        reply = self._serve_request(req, None)
        if reply is not None and not reply["ok"]:
            self.on_event(f"{type(req).__name__.lower()} failed: {reply['error']}")
