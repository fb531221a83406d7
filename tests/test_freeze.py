"""armlp.machine.freeze against a real multi-threaded ARM program under plain
qemu-arm (no GDB stub): eight workers increment their own counter in tight
loops; the test reads guest memory through /proc/PID/mem.

Frozen means no counter moves; thawed means every one moves again; the
program always ends with its normal status, even when the freezing process
is SIGKILLed while it holds the threads, when signals arrive around the
freezes, and when the program exits in the middle of a freeze.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from armlp.elf.image import ElfImage
from armlp.errors import MachineError
from armlp.machine.freeze import Freezer
from armlp.machine.qemu import HostMemory
from armlp.program_build import build_program

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NTHREADS = 8          # as in programs/freeze_counters.c
EXIT_BY_FLAG = 7
FROZEN_FOR = 0.1      # how long counters must stay still while frozen
DEADLINE = 10.0       # generous bound for anything that must *eventually* happen


@dataclass(frozen=True)
class Program:
    path: Path
    first_vaddr: int
    symbols: dict[str, int]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Program:
    out = tmp_path_factory.mktemp("freeze") / "freeze_counters"
    path = build_program([HERE / "programs" / "freeze_counters.c"], out, freestanding=False,
                         ldflags=["-pthread"])
    image = ElfImage(path)
    first = min(seg["p_vaddr"] for seg in image.elffile.iter_segments()
                if seg["p_type"] == "PT_LOAD")
    names = ("counters", "tids", "stop_flag", "ready", "usr1_count")
    return Program(path, first, {n: image.symbols.lookup(n).value for n in names})


def wait_until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


class Target:
    """The running program and a view of its memory."""

    def __init__(self, prog: Program, pid: int) -> None:
        self.prog = prog
        self.pid = pid
        mem: HostMemory | None = None
        deadline = time.monotonic() + DEADLINE
        while mem is None:       # qemu maps the program a moment after it starts
            mem = HostMemory.find(pid, prog.path, prog.first_vaddr)
            if mem is None:
                if time.monotonic() > deadline:
                    pytest.fail("qemu-arm never mapped the program")
                time.sleep(0.005)
        self.mem = mem
        wait_until(lambda: self.word("ready") == 1 and all(self.tids())
                   and all(self.counters()), "the workers to start")

    def words(self, name: str, count: int) -> list[int]:
        data = self.mem.read(self.prog.symbols[name], 4 * count)
        return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]

    def word(self, name: str) -> int:
        return self.words(name, 1)[0]

    def counters(self) -> list[int]:
        return self.words("counters", NTHREADS)

    def tids(self) -> list[int]:
        return self.words("tids", NTHREADS)

    def tasks(self) -> set[int]:
        return {int(t) for t in os.listdir(f"/proc/{self.pid}/task")}

    def tracers(self) -> set[int]:
        """The TracerPid of every task (the tracing *thread*'s id; 0: none)."""
        out = set()
        for tid in self.tasks():
            with open(f"/proc/{self.pid}/task/{tid}/status") as f:
                out |= {int(line.split()[1]) for line in f if line.startswith("TracerPid:")}
        return out

    def assert_still(self) -> list[int]:
        """The counters do not move for FROZEN_FOR seconds."""
        before = self.counters()
        time.sleep(FROZEN_FOR)
        assert self.counters() == before
        return before

    def assert_all_advance(self, since: list[int]) -> None:
        wait_until(lambda: all(a > b for a, b in zip(self.counters(), since, strict=True)),
                   "every counter to advance")

    def stop(self) -> None:
        self.mem.write(self.prog.symbols["stop_flag"], (1).to_bytes(4, "little"))


@pytest.fixture
def target(program: Program) -> Iterator[tuple[Target, subprocess.Popen[str]]]:
    proc = subprocess.Popen(["qemu-arm", str(program.path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        t = Target(program, proc.pid)
        yield t, proc
        t.mem.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(t: Target, proc: subprocess.Popen[str]) -> str:
    """Let the program end by its flag; it must exit normally."""
    t.stop()
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == EXIT_BY_FLAG, (out, err)
    assert out.startswith("done"), (out, err)
    return out


def test_freeze_stops_every_thread_and_thaw_lets_them_go(
        target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    f = Freezer(t.pid)
    assert not f.is_frozen
    tids = f.freeze()
    try:
        assert f.is_frozen
        # Every task: the workers, main, and qemu's own threads (RCU).
        assert set(tids) == t.tasks()
        assert set(t.tids()) < set(tids) and t.pid in tids
        assert t.tracers() == {os.getpid()}
        frozen_at = t.assert_still()
    finally:
        f.thaw()
    assert not f.is_frozen
    assert t.tracers() == {0}            # nothing left attached
    f.thaw()                             # idempotent
    t.assert_all_advance(frozen_at)
    finish(t, proc)


def test_freeze_and_thaw_are_fast(target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    f = Freezer(t.pid)
    freezes, thaws = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        tids = f.freeze()
        t1 = time.perf_counter()
        f.thaw()
        t2 = time.perf_counter()
        freezes.append(t1 - t0)
        thaws.append(t2 - t1)
        time.sleep(0.002)
    fmed, tmed = statistics.median(freezes), statistics.median(thaws)
    print(f"\n{len(tids)} tasks: freeze median {fmed * 1e3:.3f} ms (max "
          f"{max(freezes) * 1e3:.3f}), thaw median {tmed * 1e3:.3f} ms (max "
          f"{max(thaws) * 1e3:.3f})")
    # A few ms on an idle machine; generous for a loaded 2-core one.
    assert fmed < 0.05 and tmed < 0.05
    finish(t, proc)


def test_hold_is_timed_and_the_priority_given_back(
        target: tuple[Target, subprocess.Popen[str]]) -> None:
    """held_s is the time the program's threads were held (what a request's
    pause_ms reports); the freezing thread runs at a raised priority only
    while it holds them, and gets its own back, also after a failed freeze."""
    t, proc = target
    f = Freezer(t.pid)
    me = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, me)
    t0 = time.perf_counter()
    with f.frozen():
        held_nice = os.getpriority(os.PRIO_PROCESS, me)
        time.sleep(FROZEN_FOR)
    outside = time.perf_counter() - t0
    assert FROZEN_FOR <= f.held_s <= outside
    assert os.getpriority(os.PRIO_PROCESS, me) == before
    if os.geteuid() == 0:                # allowed to raise it
        assert held_nice < before
    with f.frozen():
        time.sleep(FROZEN_FOR)
    assert 2 * FROZEN_FOR <= f.held_s <= outside + (time.perf_counter() - t0)
    gone = Freezer(2 ** 22 + 7)          # no such process: the freeze fails
    with pytest.raises(MachineError):
        gone.freeze()
    assert os.getpriority(os.PRIO_PROCESS, me) == before
    finish(t, proc)


def test_kept_thread_keeps_running(target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    runner = t.tids()[0]
    f = Freezer(t.pid)
    with f.frozen(keep={runner}) as tids:
        assert runner not in tids and set(tids) == t.tasks() - {runner}
        before = t.counters()
        wait_until(lambda: t.counters()[0] > before[0], "the kept thread to count")
        time.sleep(FROZEN_FOR)
        assert t.counters()[1:] == before[1:]
    assert not f.is_frozen
    t.assert_all_advance(before)
    finish(t, proc)


def test_frozen_thaws_on_exception(target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    f = Freezer(t.pid)
    with pytest.raises(RuntimeError, match="boom"), f.frozen():
        frozen_at = t.assert_still()
        raise RuntimeError("boom")
    assert not f.is_frozen and t.tracers() == {0}
    t.assert_all_advance(frozen_at)
    with f.frozen():                     # the same Freezer can freeze again
        t.assert_still()
    finish(t, proc)


def test_freeze_twice_refused(target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    f = Freezer(t.pid)
    with f.frozen(), pytest.raises(MachineError, match="already frozen"):
        f.freeze()
    assert t.tracers() == {0}
    finish(t, proc)


def test_signals_around_freezes_are_delivered(
        target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    f = Freezer(t.pid)
    # A signal sent while frozen waits: the guest handler cannot run...
    with f.frozen():
        os.kill(t.pid, signal.SIGUSR1)
        time.sleep(FROZEN_FOR)
        assert t.word("usr1_count") == 0
    # ...and runs after the thaw.
    wait_until(lambda: t.word("usr1_count") == 1, "the SIGUSR1 handler")

    # Signals racing the freezes (some become signal-delivery-stops, which
    # thaw hands back): the program sees them and survives.
    stop = threading.Event()

    def sender() -> None:
        while not stop.is_set():
            os.kill(t.pid, signal.SIGUSR1)
            time.sleep(0.0005)

    th = threading.Thread(target=sender)
    th.start()
    try:
        for _ in range(40):
            with f.frozen():
                pass
    finally:
        stop.set()
        th.join()
    last = t.word("usr1_count")
    os.kill(t.pid, signal.SIGUSR1)        # the last one is not coalesced away
    wait_until(lambda: t.word("usr1_count") > last, "the last SIGUSR1")
    assert t.tracers() == {0}
    finish(t, proc)


def test_program_exits_in_the_middle_of_freezes(
        target: tuple[Target, subprocess.Popen[str]]) -> None:
    """Threads exiting while seized are skipped, and the exit status of the
    program (our child) is left for our waitpid, not consumed by the
    freezer's."""
    t, proc = target
    f = Freezer(t.pid)
    t.stop()
    deadline = time.monotonic() + DEADLINE
    while f.freeze():          # [] once only the zombie leader is left
        f.thaw()
        assert time.monotonic() < deadline, "the program never ended"
    assert not f.is_frozen
    assert proc.wait(timeout=DEADLINE) == EXIT_BY_FLAG


def test_target_killed_while_frozen(target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    f = Freezer(t.pid)
    f.freeze()
    proc.kill()
    time.sleep(0.05)
    f.thaw()                   # the tasks died stopped: reaped, not detached
    assert not f.is_frozen
    assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL


_HELPER = r"""
import os, signal, subprocess, sys
from armlp.machine.freeze import Freezer
with open(sys.argv[2], "w") as out:
    qemu = subprocess.Popen(["qemu-arm", sys.argv[1]], stdout=out)
print(qemu.pid, flush=True)
sys.stdin.readline()
tids = Freezer(qemu.pid).freeze()
print(len(tids), flush=True)
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGKILL)
"""

PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Make this process adopt its orphaned descendants, so it can wait for
    a qemu whose parent (the freezer) it killed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.fail(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_sigkilled_freezer_leaves_the_program_running(program: Program,
                                                      tmp_path: Path) -> None:
    """The freezer is qemu's parent (so Yama's ptrace_scope 1 allows it) and
    dies by SIGKILL while it holds every thread: the kernel detaches them,
    the program goes on and exits normally (we adopted it as subreaper)."""
    stdout = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    with subreaper():
        helper = subprocess.Popen([sys.executable, "-c", _HELPER, str(program.path),
                                   str(stdout)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        qemu_pid = 0
        try:
            assert helper.stdin and helper.stdout
            qemu_pid = int(helper.stdout.readline())
            t = Target(program, qemu_pid)
            helper.stdin.write("freeze\n")
            helper.stdin.flush()
            assert int(helper.stdout.readline()) == len(t.tasks())
            frozen_at = t.assert_still()
            assert t.tracers() == {helper.pid}
            with pytest.raises(MachineError, match=f"already traced by process {helper.pid}"):
                Freezer(qemu_pid).freeze()
            assert not Freezer.available(qemu_pid)
            helper.stdin.write("die\n")
            helper.stdin.flush()
            assert helper.wait(timeout=DEADLINE) == -signal.SIGKILL
            t.assert_all_advance(frozen_at)
            assert t.tracers() == {0}
            t.stop()
            deadline = time.monotonic() + DEADLINE
            while True:                 # qemu is now our child: wait for it
                pid, status = os.waitpid(qemu_pid, os.WNOHANG)
                if pid:
                    break
                assert time.monotonic() < deadline, "the program never ended"
                time.sleep(0.01)
            qemu_pid = 0
            assert os.waitstatus_to_exitcode(status) == EXIT_BY_FLAG
            assert stdout.read_text().startswith("done")
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
            if qemu_pid:
                with contextlib.suppress(OSError):
                    os.kill(qemu_pid, signal.SIGKILL)
                    os.waitpid(qemu_pid, 0)


def test_partial_freeze_failure_detaches_what_it_got(
        target: tuple[Target, subprocess.Popen[str]]) -> None:
    """Another thread of ours holds the last task: a freeze here seizes the
    others, fails on that one and lets the others go again; a thaw from a
    thread that did not freeze is refused (ptrace would not obey it)."""
    t, proc = target
    last = max(t.tasks())
    other = Freezer(t.pid)
    held, release, done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with other.frozen(keep=t.tasks() - {last}) as tids:
                assert tids == [last]
                held.set()
                release.wait(DEADLINE)
        except BaseException as exc:
            errors.append(exc)
        finally:
            held.set()
            done.set()

    th = threading.Thread(target=hold)
    th.start()
    try:
        assert held.wait(DEADLINE) and not errors
        with pytest.raises(MachineError, match="another thread"):
            other.thaw()
        f = Freezer(t.pid)
        with pytest.raises(MachineError,
                           match=f"cannot ptrace process {t.pid}: EPERM .*this process"):
            f.freeze()
        assert not f.is_frozen
        for tid in t.tasks():
            with open(f"/proc/{t.pid}/task/{tid}/status") as st:
                tracer = [int(x.split()[1]) for x in st if x.startswith("TracerPid:")]
            assert tracer == [th.native_id if tid == last else 0], tid
    finally:
        release.set()
        th.join()
    assert not errors
    assert t.tracers() == {0}
    t.assert_all_advance([0] * NTHREADS)
    finish(t, proc)


def test_missing_process(target: tuple[Target, subprocess.Popen[str]]) -> None:
    t, proc = target
    assert Freezer.available(t.pid)
    assert t.tracers() == {0}            # the probe left nothing attached
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not Freezer.available(gone.pid)
    with pytest.raises(MachineError, match=f"process {gone.pid} does not exist"):
        Freezer(gone.pid).freeze()
    finish(t, proc)


def test_cpu_times_hold_still_while_frozen_and_grow_while_running(
        target: tuple[Target, subprocess.Popen[str]]) -> None:
    """What the consistency model measures a running thread's progress by
    (armlp.livepatch.transition): each worker's run time, exact while it is
    held, grows once it runs again."""
    t, proc = target
    workers = set(t.tids())
    f = Freezer(t.pid)
    with f.frozen():
        first = f.cpu_times()
        time.sleep(FROZEN_FOR)
        again = f.cpu_times()
    assert workers <= first.keys()
    assert all(again[w] == first[w] for w in workers)
    time.sleep(0.2)
    with f.frozen():
        later = f.cpu_times()
    assert all(later[w] - first[w] >= 500_000 for w in workers), (first, later)
    finish(t, proc)
