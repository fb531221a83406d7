"""Helpers of the live tests (tests/test_live*.py): building the programs and
patches, running ``armlp run`` in the background and the ``armlp`` client
as separate processes, and reading the programs' output.

Every test gets its own runtime directory (``ARMLP_RUNTIME_DIR``), so the
controllers of parallel tests never see each other, and every process a
test starts is killed (by process group) in teardown (the ``built`` and
``live`` fixtures are in conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from armlp.elf.image import ElfImage
from armlp.program_build import build_program
from armlp.toolchain import patch_cflags, tool

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ARMLP = [sys.executable, "-m", "armlp.cli.main"]

#: live_service.c's prices for 10, 11 and 12 items, before and after the fix.
OLD = (1030, 1144, 1260)
NEW = (927, 1030, 1134)
SERVICE_LINE = re.compile(r"^line (\d+): price\(10\) = (\d+), price\(11\) = (\d+), "
                          r"price\(12\) = (\d+)$")
TARGET_LINE = re.compile(r"^line (\d+): price=(\d+) untraced=(\d+)$")

#: Runs a subprocess (Python) that becomes the subreaper of what it starts:
#: when `armlp run` is SIGKILLed its orphaned qemu-arm is reparented to this
#: process, which reaps it and reports every exit status it collected.
REAPER = r"""
import ctypes, json, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
out = open(sys.argv[1], "w")
child = subprocess.Popen(sys.argv[2:])
statuses = {}
while True:
    try:
        pid, st = os.wait()
    except ChildProcessError:
        break
    statuses[pid] = os.waitstatus_to_exitcode(st)
out.write(json.dumps({"child": child.pid, "statuses": statuses}))
out.close()
"""


# --- building ------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    service: Path       # examples/programs/live_service.c
    fix: Path           # examples/patches/fix_price.c, bound to service
    target: Path        # tests/programs/live_target.c
    price: Path         # tests/patches/live_price.c, bound to target
    missing: Path       # calls a function target lacks
    untraced: Path      # replaces a no_instrument_function function
    other: Path         # live_price.c bound to service's build-id
    host: Path          # live_price.c built by the host's gcc


def compile_patch(src: Path, program: Path, out: Path) -> Path:
    build_id = ElfImage(program).build_id
    subprocess.run([tool("gcc"), *patch_cflags(build_id), "-c", str(src), "-o", str(out)],
                   check=True)
    return out


def build_live(d: Path) -> Built:
    """Every program and patch of the live tests, built into directory *d*."""
    service = build_program([REPO / "examples" / "programs" / "live_service.c"],
                            d / "live_service", freestanding=False, ldflags=["-pthread"])
    target = build_program([TESTS / "programs" / "live_target.c"], d / "live_target",
                           freestanding=False, cflags=["-pthread"], ldflags=["-pthread"])
    patches = TESTS / "patches"
    host = d / "host.o"
    subprocess.run(["gcc", f"-I{REPO / 'src' / 'armlp' / 'include'}", "-c",
                    str(patches / "live_price.c"), "-o", str(host)], check=True)
    return Built(
        service=service,
        fix=compile_patch(REPO / "examples" / "patches" / "fix_price.c", service, d / "fix.o"),
        target=target,
        price=compile_patch(patches / "live_price.c", target, d / "price.o"),
        missing=compile_patch(patches / "live_missing.c", target, d / "missing.o"),
        untraced=compile_patch(patches / "live_untraced.c", target, d / "untraced.o"),
        other=compile_patch(patches / "live_price.c", service, d / "other.o"),
        host=host,
    )


# --- running -----------------------------------------------------------------------


@dataclass
class Cli:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """One background ``armlp run`` (or anything else) with its output in files."""

    def __init__(self, live: Live, name: str, cmd: list[str]) -> None:
        self.live = live
        self.out_path = live.dir / f"{name}.out"
        self.err_path = live.dir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # As from an interactive shell: SIGINT not ignored, whatever an
            # earlier test in this process did (an ignored SIGINT is
            # inherited, down to the program under qemu).
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=live.env, start_new_session=True,
                                         preexec_fn=_default_sigint)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.out_path.read_text()

    def err(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"armlp run did not end within {timeout} s:\n"
                        f"{task_states(self.pid)}\n{self.err()}")

    def info(self, timeout: float = 20.0) -> dict[str, Any]:
        """The target's info.json once its controller serves (controller_pid
        is this process, or a child of it for the reaper)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in self.live.runtime.glob("*/info.json"):
                try:
                    data: dict[str, Any] = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                if data["controller_pid"] in (self.pid, *_children(self.pid)):
                    return data
            if self.proc.poll() is not None:
                pytest.fail(f"armlp run ended ({self.proc.returncode}) before serving:\n"
                            f"{self.err()}")
            time.sleep(0.02)
        pytest.fail(f"no controller after {timeout} s:\n{self.err()}")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def task_states(pid: int) -> str:
    """What each thread of *pid* and of its descendants is doing (state,
    tracer, kernel wait channel, system call): for a test that gives up on
    a process that did not end, so that a hang seen once says where."""
    lines = []
    todo = [pid]
    while todo:
        p = todo.pop(0)
        todo.extend(_children(p))
        for task in sorted(Path(f"/proc/{p}/task").glob("*")):
            def field(name: str, task: Path = task) -> str:
                with contextlib.suppress(OSError):
                    return (task / name).read_text().strip()
                return "?"
            status = dict(ln.split(":\t", 1) for ln in field("status").splitlines()
                          if ":\t" in ln)
            lines.append(f"{p}/{task.name} {field('comm')}: {status.get('State', '?')}, "
                         f"tracer {status.get('TracerPid', '?')}, wchan {field('wchan')}, "
                         f"syscall {field('syscall').split(' ')[0]}")
    return "\n".join(lines)


class Live:
    """A private runtime directory and the processes of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.runtime = tmp_path / "rt"
        self.env = {**os.environ, "ARMLP_RUNTIME_DIR": str(self.runtime),
                    "PYTHONPATH": str(REPO / "src")}
        self.runs: list[Run] = []

    def run(self, name: str, program: Path, *args: str, options: tuple[str, ...] = ()
            ) -> Run:
        r = Run(self, name, [*ARMLP, "run", *options, str(program), *args])
        self.runs.append(r)
        return r

    def reaped(self, name: str, program: Path, *args: str) -> tuple[Run, Path]:
        """``armlp run`` under the subreaper (see REAPER)."""
        report = self.dir / f"{name}.reaped"
        r = Run(self, name, [sys.executable, "-c", REAPER, str(report), *ARMLP, "run",
                             str(program), *args])
        self.runs.append(r)
        return r, report

    def cli(self, *args: str | Path, timeout: float = 60.0) -> Cli:
        p = subprocess.run([*ARMLP, *map(str, args)], capture_output=True, text=True,
                           env=self.env, timeout=timeout, check=False)
        return Cli(p.returncode, p.stdout, p.stderr)

    def kill_all(self) -> None:
        for r in self.runs:
            kill_group(r.proc)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill what is left of *proc*'s process group (it leads one of its own)
    and reap *proc*: ``armlp run`` killed alone leaves its program running,
    as it must, and a failed test would leave it behind."""
    if proc.poll() is None or _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def started(cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """*cmd* in the background, in a process group of its own that
    :func:`kill_group` ends on the way out, whatever the test did."""
    proc = subprocess.Popen(cmd, text=True, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        kill_group(proc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_line_error(res: Cli) -> str:
    """The client failed with exit 2 and exactly one line ``armlp: error: ...``."""
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.err
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("armlp: error: "), res.err
    return lines[0]


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Exception" not in text, text


def service_values(out: str) -> list[tuple[int, ...]]:
    rows: list[tuple[int, ...]] = []
    for ln in out.splitlines():
        m = SERVICE_LINE.match(ln)
        if m:
            assert int(m.group(1)) == len(rows), out
            rows.append(tuple(int(g) for g in m.groups()[1:]))
    return rows


def target_prices(out: str) -> list[int]:
    rows: list[int] = []
    for ln in out.splitlines():
        m = TARGET_LINE.match(ln)
        if m:
            assert int(m.group(1)) == len(rows), out
            assert int(m.group(3)) == 10, ln         # untraced(5) never changes
            rows.append(int(m.group(2)))
    return rows


def phases(rows: list[tuple[int, ...]]) -> list[str]:
    """'old', 'new' or 'mixed' per line; any other value fails."""
    out = []
    for row in rows:
        for i, v in enumerate(row):
            assert v in (OLD[i], NEW[i]), f"unexpected value {v} in {row}"
        out.append("old" if row == OLD else "new" if row == NEW else "mixed")
    return out


def collapse(seq: list[str]) -> list[str]:
    out: list[str] = []
    for s in seq:
        if not out or out[-1] != s:
            out.append(s)
    return out
