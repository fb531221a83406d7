"""Stopping every thread of a local qemu-user process with ptrace.

qemu-user 7.2's GDB stub is not all-stop: while one guest thread is parked
in the stub, the program's other threads keep running.  armlp wants every
code write into the target, and the scan of every thread's registers and
stack that decides whether old code may be freed, to happen with *all*
threads stopped.  qemu-user runs each guest thread as a host thread of the
qemu process, so a controller with the same uid (usually qemu's parent) can
stop them all itself: :class:`Freezer` applies ``PTRACE_SEIZE`` and
``PTRACE_INTERRUPT`` to every task in ``/proc/PID/task`` and lets them go
with ``PTRACE_DETACH``.

Why this cannot deadlock or break the program:

* A ptrace stop takes no lock of qemu's: a thread stops where the kernel
  finds it (in guest code, in qemu's translator, in a system call, which is
  restarted after the thaw).  While frozen, armlp reads and writes guest
  memory through ``/proc/PID/mem`` (:class:`armlp.machine.qemu.HostMemory`),
  which is kernel work only, so it never waits for a frozen thread.  The
  GDB stub, served by the one thread left running, is another matter: it
  is qemu code and can wait for a host lock a frozen thread holds (seen:
  about one freeze in 500 under load).  The GDB machine bounds every stub
  reply while frozen and thaws on a stall
  (:meth:`armlp.machine.gdb.GdbMachine.all_stopped`).
* Nothing is left behind if the controller dies: the kernel detaches the
  tracees of a tracer that exits, even by SIGKILL, and they go on.
* A signal the program gets while frozen stays pending and is delivered
  after the thaw; one that the kernel had already handed to a tracee (a
  signal-delivery-stop instead of the interrupt stop) is given back to it
  by the detach.
* Exits are not stolen: a thread that ends while seized is reaped (an
  unreaped traced thread would hold back the exit report of the whole
  process), except the thread-group leader of our own child, whose exit
  status belongs to the ``waitpid`` of its parent (us).  That is why
  :meth:`Freezer.freeze` looks at each task with ``waitid(WNOWAIT)`` before
  it consumes anything.

Rules for the caller: ptrace binds a tracee to the tracer *thread*, so
:meth:`Freezer.thaw` must run on the thread that called
:meth:`Freezer.freeze`; and nothing else in the process may ``waitpid`` the
target (``Popen.poll``) while it is frozen, or it could consume the stop
report of the main thread, which is the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence

from armlp.errors import MachineError

PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_DETACH = 17
#: waitpid/waitid option: wait for any child, clone or not (threads are clones).
WALL = 0x40000000
#: How often the freezer looks whether the leader it interrupted has stopped.
STOP_POLL = 0.00005
#: After how long a leader that has not stopped makes the freezer look for
#: held tasks the process's end has killed (a task stops in microseconds).
DYING_AFTER = 0.005
PTRACE_EVENT_STOP = 128

#: freeze() re-lists the tasks after each stop round, because a thread can
#: create a thread while we list; this bounds that loop (only a thread the
#: caller keeps running can create threads for ever).
MAX_ROUNDS = 100
#: How long thaw() waits for a task that died while frozen to be reapable.
REAP_TIMEOUT = 2.0
#: The nice value of the freezing thread while it holds the process, when
#: the system allows it (see Freezer.freeze).
HOLD_NICE = -10

_libc: ctypes.CDLL | None = None


def raise_priority(tid: int) -> int | None:
    """Run host thread *tid* at nice HOLD_NICE; its nice before (None when it
    was that high already, or the system does not allow it: not root)."""
    try:
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        if nice > HOLD_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, HOLD_NICE)
            return nice
    except OSError:
        pass                # not allowed: only slower
    return None


def restore_priority(tid: int, nice: int | None) -> None:
    """Undo :func:`raise_priority` (*nice*: what it returned)."""
    if nice is not None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def _ptrace(request: int, tid: int, data: int = 0) -> int:
    """ptrace(request, tid, 0, data); 0 or the errno."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        lib.ptrace.restype = ctypes.c_long
        _libc = lib
    if _libc.ptrace(request, tid, None, ctypes.c_void_p(data) if data else None) == -1:
        return ctypes.get_errno()
    return 0


def _strerror(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


class Freezer:
    """Stops every thread of a local process with ptrace (see module doc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        #: tid -> signal to give back at detach (0: none), for each stopped task.
        self._stopped: dict[int, int] = {}
        #: Seized tasks whose stop has not been waited for yet.
        self._pending: list[int] = []
        self._owner: int | None = None
        #: Seconds the process's threads have been held in all, each hold
        #: from the first interrupt to the last detach: the pause the
        #: program itself sees (its threads run while armlp talks to the
        #: stub's agent thread).
        self.held_s = 0.0
        self._since = 0.0
        self._nice: int | None = None

    # --- public --------------------------------------------------------------

    @classmethod
    def available(cls, pid: int) -> bool:
        """Whether this process may ptrace *pid*: the only sure test under
        Yama, seccomp and LSMs is to do it, so this stops one task of *pid*
        for a moment (tens of microseconds) and lets it go.  Leaves nothing
        attached."""
        probe = cls(pid)
        probe._owner = threading.get_ident()
        try:
            tids = probe._list_tasks()
        except MachineError:
            return False
        for tid in tids:            # the first that is alive enough to stop
            try:
                probe._grab([tid])
            except MachineError:
                return False
            finally:
                stopped = bool(probe._stopped)
                probe._settle_pending(reinterrupt=True)
                probe.thaw()
            if stopped:
                return True
        return False

    @property
    def is_frozen(self) -> bool:
        """Whether tasks of the process are held stopped by this Freezer."""
        return bool(self._stopped or self._pending)

    def freeze(self, keep: Collection[int] = ()) -> list[int]:
        """Stop every task of the process except those in *keep*; returns the
        tids stopped.

        Re-lists ``/proc/PID/task`` after stopping until no new task appears
        (a thread being created while we list).  A task that exits meanwhile
        is skipped.  On any other failure, detaches what it attached and
        raises MachineError (one line).

        All tasks are interrupted before any is waited for, so they stop in
        parallel.  A task in an uninterruptible sleep stops when the sleep
        ends: freeze waits for it (it cannot detach a task that is not
        stopped).

        While it holds the process the calling thread runs at nice
        :data:`HOLD_NICE` where the system lets it (root, or an
        ``RLIMIT_NICE``): each task :meth:`thaw` lets go is woken, and on a
        busy machine a woken task preempts the thread that woke it, so the
        tasks not yet let go would wait a scheduler tick (4 ms measured with
        eight spinning threads on two cores) for the rest of the thaw.
        """
        if self.is_frozen:
            raise MachineError(f"process {self.pid} is already frozen")
        self._owner = threading.get_ident()
        self._since = time.perf_counter()
        self._raise_priority()
        kept = set(keep)
        seen: set[int] = set()
        try:
            for round_ in range(MAX_ROUNDS):
                tids = self._list_tasks(must_exist=round_ == 0)
                new = [t for t in tids if t not in seen and t not in kept]
                seen.update(tids)
                if not new:
                    return sorted(self._stopped)
                self._grab(new)
            raise MachineError(f"process {self.pid} kept creating threads while being "
                               f"frozen ({MAX_ROUNDS} rounds)")
        except BaseException:
            self._settle_pending(reinterrupt=True)
            with contextlib.suppress(MachineError):   # the first error says more
                self.thaw()
            raise

    def thaw(self) -> None:
        """Detach every frozen task.

        A signal that arrived while a task was being stopped (the kernel
        reported a signal-delivery-stop instead of the PTRACE_EVENT_STOP) is
        handed back with PTRACE_DETACH's data argument so the program does
        not lose it.  Idempotent: a second call, or a call when nothing is
        frozen, does nothing.
        """
        if not self.is_frozen:
            if self._owner == threading.get_ident():
                self._restore_priority()     # a freeze that stopped nothing
            return
        if self._owner != threading.get_ident():
            raise MachineError(f"thaw of process {self.pid} from another thread than the "
                               f"one that froze it (ptrace binds tracees to a thread)")
        self._settle_pending()
        failures: list[str] = []
        dead: list[int] = []
        for tid, sig in list(self._stopped.items()):
            err = _ptrace(PTRACE_DETACH, tid, sig)
            if err == errno.ESRCH:
                dead.append(tid)      # killed while stopped: no longer in a ptrace-stop
            elif err:
                failures.append(f"{tid}: {_strerror(err)}")
            del self._stopped[tid]
        self.held_s += time.perf_counter() - self._since
        self._restore_priority()
        for tid in self._leader_last(dead):
            self._reap(tid, timeout=REAP_TIMEOUT)
        if failures:
            raise MachineError(f"cannot detach from threads of process {self.pid}: "
                               f"{', '.join(failures)}")

    @contextlib.contextmanager
    def frozen(self, keep: Collection[int] = ()) -> Iterator[list[int]]:
        """``with freezer.frozen(keep) as tids:`` the process is stopped
        (except *keep*) inside the block and let go however it is left."""
        tids = self.freeze(keep)
        try:
            yield tids
        finally:
            self.thaw()

    @contextlib.contextmanager
    def holding(self, tid: int) -> Iterator[None]:
        """``with freezer.holding(tid):`` task *tid* alone is held still (armlp's
        own agent, see :meth:`armlp.machine.gdb.GdbMachine.hand_back`): not a
        pause of the program, so not counted in :attr:`held_s`.  Inside a
        freeze the task is held already."""
        if self.is_frozen:
            yield
            return
        held = self.held_s
        self._owner = threading.get_ident()
        try:
            self._grab([tid])
            yield
        finally:
            self.thaw()
            self.held_s = held

    def tasks(self) -> list[int]:
        """The process's host threads now (``/proc/PID/task``: no stub)."""
        return self._list_tasks()

    def in_syscall(self, tid: int) -> bool:
        """Whether host thread *tid* is inside a system call (its
        ``/proc/PID/task/TID/syscall`` names one)."""
        try:
            with open(f"/proc/{self.pid}/task/{tid}/syscall") as f:
                first = f.read().split(maxsplit=1)[:1]
        except OSError:
            return False
        return bool(first) and first[0].lstrip("-").isdigit() and int(first[0]) >= 0

    def cpu_times(self) -> dict[int, int]:
        """Nanoseconds each host thread has run (``schedstat``); a thread
        gone meanwhile is left out."""
        out = {}
        for tid in self._list_tasks():
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    out[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return out

    # --- internals -----------------------------------------------------------

    def _raise_priority(self) -> None:
        self._nice = raise_priority(threading.get_native_id())

    def _restore_priority(self) -> None:
        if self._nice is not None:
            restore_priority(threading.get_native_id(), self._nice)
            self._nice = None

    def _list_tasks(self, must_exist: bool = True) -> list[int]:
        try:
            return sorted(int(name) for name in os.listdir(f"/proc/{self.pid}/task"))
        except FileNotFoundError:
            if must_exist:
                raise MachineError(f"process {self.pid} does not exist") from None
            return []          # the process ended (and was reaped) while we froze it
        except (OSError, ValueError) as exc:
            raise MachineError(f"cannot list the threads of process {self.pid}: "
                               f"{exc}") from None

    def _grab(self, tids: Sequence[int]) -> None:
        """Seize and interrupt *tids*, then wait until each one is stopped
        (kept in ``_stopped``) or gone.  Interrupting them all before waiting
        for any lets them stop in parallel."""
        for tid in tids:
            err = _ptrace(PTRACE_SEIZE, tid)
            if err == errno.ESRCH:
                continue                                   # exited meanwhile
            if err == errno.EPERM and self._is_dead(tid):
                continue                                   # a zombie cannot be seized
            if err:
                raise self._seize_error(tid, err)
            self._pending.append(tid)
            err = _ptrace(PTRACE_INTERRUPT, tid)
            if err not in (0, errno.ESRCH):                # ESRCH: dying; the wait sees it
                raise MachineError(f"PTRACE_INTERRUPT of thread {tid} of process "
                                   f"{self.pid}: {_strerror(err)}")
        self._settle_pending()

    def _settle_pending(self, reinterrupt: bool = False) -> None:
        """Wait for the stop (or exit) of every seized task not waited for
        yet.  The leader goes last: while a traced thread of ours is an
        unreaped zombie the kernel would not report the leader's exit.
        *reinterrupt* (cleanup after an error) interrupts them again first,
        in case the error came between a seize and its interrupt; a second
        interrupt of a task is harmless (one pending stop, cleared by the
        detach)."""
        pending, self._pending = self._leader_last(self._pending), []
        if reinterrupt:
            for tid in pending:
                _ptrace(PTRACE_INTERRUPT, tid)
        for i, tid in enumerate(pending):
            try:
                self._wait_stop(tid)
            except BaseException:
                self._pending = pending[i:]
                raise

    def _wait_stop(self, tid: int) -> None:
        # A blocking wait returns the moment the task stops, or exits: the
        # tracer hears of a thread's exit.  Not of the leader's while a held
        # thread the process's end killed is unreaped: for the leader
        # (waited for last) the freezer looks and naps, reaping those.
        flags = os.WEXITED | os.WSTOPPED | os.WNOWAIT | WALL
        waited = 0.0
        while True:
            try:
                info = os.waitid(os.P_PID, tid, flags | (os.WNOHANG if tid == self.pid else 0))
            except ChildProcessError:
                return          # not (or no longer) ours to wait for: reaped already
            if info is not None:
                break
            if waited > DYING_AFTER:
                # The process is ending (its own fatal signal): a task held
                # already is killed out of its stop and stays a zombie
                # until armlp reaps it.  (A blocking wait here hung armlp
                # when a program died of its own signal as its agent was
                # parked.)
                for held in [t for t in self._stopped if self._is_dead(t)]:
                    self._reap(held, timeout=0.0)
                    del self._stopped[held]
            time.sleep(STOP_POLL)
            waited += STOP_POLL
        if info.si_code in (os.CLD_TRAPPED, os.CLD_STOPPED):
            # Consume the stop we peeked at; WSTOPPED alone cannot reap an exit.
            os.waitid(os.P_PID, tid, os.WSTOPPED | os.WNOHANG | WALL)
            # si_status is waitpid's status >> 8: the signal, and the event
            # in the next byte (waitpid's status >> 16).
            sig, event = info.si_status & 0xFF, info.si_status >> 8
            if info.si_code == os.CLD_TRAPPED and event == 0:
                # A signal-delivery-stop (the signal came before the
                # interrupt): the signal is ours to hand back at detach.
                self._stopped[tid] = sig
            else:
                # PTRACE_EVENT_STOP: the interrupt (SIGTRAP) or a group stop
                # (SIGSTOP...), which the kernel re-enters after the detach.
                # No other event is possible without PTRACE_O_* options.
                assert event in (0, PTRACE_EVENT_STOP), f"ptrace event {event}"
                self._stopped[tid] = 0
            return
        self._reap(tid, timeout=0.0)     # exited or killed: drop it

    def _reap(self, tid: int, timeout: float) -> None:
        """Reap the exit of traced task *tid*, unless it is the leader of our
        own child (then its parent, us, must see the status).  Waits up to
        *timeout* for the exit to become reportable."""
        if tid == self.pid and self._is_our_child():
            return
        deadline = time.monotonic() + timeout
        delay = 0.0001
        while True:
            try:
                if os.waitid(os.P_PID, tid, os.WEXITED | os.WNOHANG | WALL) is not None:
                    return
            except ChildProcessError:
                return
            if time.monotonic() >= deadline:
                return          # the kernel releases it when this process ends
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _leader_last(self, tids: Sequence[int]) -> list[int]:
        return sorted(tids, key=lambda t: t == self.pid)

    def _is_our_child(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
        except (OSError, ValueError, IndexError):
            return False

    def _is_dead(self, tid: int) -> bool:
        try:
            with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X", "x")
        except FileNotFoundError:
            return True
        except (OSError, IndexError):
            return False

    def _seize_error(self, tid: int, err: int) -> MachineError:
        why = _strerror(err)
        if err != errno.EPERM:
            return MachineError(f"cannot ptrace process {self.pid} (thread {tid}): {why}")
        tracer = 0
        with (contextlib.suppress(OSError, ValueError),
              open(f"/proc/{self.pid}/task/{tid}/status") as f):
            for line in f:
                if line.startswith("TracerPid:"):
                    tracer = int(line.split()[1])
        if tracer and os.path.exists(f"/proc/self/task/{tracer}"):   # TracerPid is a tid
            hint = "already traced by this process: another Freezer, or another thread?"
        elif tracer:
            hint = f"already traced by process {tracer}"
        else:
            scope = "absent"
            with contextlib.suppress(OSError), open("/proc/sys/kernel/yama/ptrace_scope") as f:
                scope = f.read().strip()
            hint = f"kernel.yama.ptrace_scope is {scope}, or a container's seccomp?"
        return MachineError(f"cannot ptrace process {self.pid}: {why} ({hint})")
