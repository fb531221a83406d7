"""Nothing a careless or hostile user does costs the program its life
(issue 9): malformed, oversized and out-of-range requests, a silent client,
a trace whose client goes away, inputs that are not regular files,
replacements that cannot be right, nonsense numbers, another user's runtime
directory, stale entries.

The live target is ``tests/programs/blocking.c``: it runs until its
standard input ends, echoing each line, so a test can check it is alive and
unharmed (every line echoed, ``done``, exit 0) after the abuse.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from armlp.control.clients import CLIENT_DEADLINE
from armlp.control.paths import TargetInfo, list_targets, runtime_dir
from armlp.control.protocol import encode, request
from armlp.elf.image import ElfImage
from armlp.program_build import build_program
from armlp.toolchain import patch_cflags, tool
from conftest import armlp, program_and_patch, wait_for_target

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ARMLP = [sys.executable, "-m", "armlp.cli.main"]


@pytest.fixture(scope="module")
def blocking(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return program_and_patch(TESTS / "programs" / "blocking.c",
                             TESTS / "patches" / "price_x3.c",
                             tmp_path_factory.mktemp("robust"))


class Running:
    """``armlp run blocking`` in its own process group, fed line by line."""

    def __init__(self, prog: Path, tmp: Path) -> None:
        env = {**os.environ, "ARMLP_RUNTIME_DIR": str(tmp / "rt")}
        os.environ["ARMLP_RUNTIME_DIR"] = env["ARMLP_RUNTIME_DIR"]
        self.proc = subprocess.Popen([*ARMLP, "run", str(prog)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, start_new_session=True)
        self.info: TargetInfo = wait_for_target(self.proc)
        self.sent = 0

    def line(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"input {self.sent}\n".encode())
        self.proc.stdin.flush()
        self.sent += 1

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.stdin = None
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()

    def check_unharmed(self) -> None:
        code, out, err = self.finish()
        assert code == 0, err
        lines = out.splitlines()
        assert [ln for ln in lines if ln.startswith(("EINTR", "SHORT", "ERROR"))] == []
        assert [ln for ln in lines if ln.startswith("line ")] == \
            [f"line input {i}" for i in range(self.sent)]
        assert lines[-1] == "done"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def running(blocking: tuple[Path, Path], tmp_path: Path) -> Iterator[Running]:
    old = os.environ.get("ARMLP_RUNTIME_DIR")
    r = Running(blocking[0], tmp_path)
    try:
        yield r
    finally:
        r.kill()
        if old is None:
            os.environ.pop("ARMLP_RUNTIME_DIR", None)
        else:
            os.environ["ARMLP_RUNTIME_DIR"] = old


def raw(info: TargetInfo, line: bytes, timeout: float = 10.0) -> dict[str, Any]:
    """Send one raw line, return the decoded reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(info.socket)
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, f"connection closed without a reply to {line[:40]!r}"
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


BAD_LINES = [
    (b"[" * 200_000 + b"\n", "request longer than"),
    (b"[" * 60_000 + b"\n", "malformed message"),
    (encode({"op": "read", "address": 2**64, "size": 4}), "address below 2**32"),
    (encode({"op": "read", "address": 0, "size": 4}), "read"),
    (encode({"op": "read", "address": 0xFFFFFFFF, "size": 8}), "within it"),
    (encode({"op": "patch", "path": "fix.o"}), "absolute path"),
    (encode({"op": "patch", "path": "/dev/zero"}), "a device"),
    (encode({"op": "patch", "path": "/"}), "directory"),
    (encode({"op": "unpatch", "name": "x" * 10_000}), "at most 256"),
    (encode({"op": "unpatch", "name": "nope"}), "nope"),
    (encode({"op": "trace_start", "filters": 7}), "filters must be a list"),
    (encode({"op": "trace_read"}), "no trace is running"),
    (encode({"op": 1}), "unknown request"),
    (encode({"nothing": True}), "unknown request"),
    (b'{"op": "read", "address": NaN, "size": 4}\n', "malformed message"),
    (b"\xff\xfe not json\n", "malformed message"),
    (b"[1, 2]\n", "not an object"),
    (encode({"op": "wait", "name": "x", "timeout": -1}), "timeout of 0 to 86400"),
    (encode({"op": "wait", "name": "x", "timeout": True}), "timeout of 0 to 86400"),
    (encode({"op": "wait", "name": "x", "timeout": 1e9}), "timeout of 0 to 86400"),
    (encode({"op": "wait", "timeout": 1}), "'name' must be"),
]


def test_bad_requests_get_one_line_and_the_program_runs_on(running: Running) -> None:
    for line, message in BAD_LINES:
        reply = raw(running.info, line)
        assert reply["ok"] is False, line[:60]
        assert message in reply["error"] and "\n" not in reply["error"], (line[:60], reply)
        running.line()
    status = request(running.info.socket, {"op": "status"})
    assert status["patches"] == []
    running.check_unharmed()


def test_a_silent_client_holds_nothing_up(running: Running, blocking: tuple[Path, Path]
                                          ) -> None:
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(running.info.socket)
    slow.sendall(b'{"op": "sta')                     # ... and nothing more
    t0 = time.monotonic()
    res = request(running.info.socket, {"op": "patch", "path": str(blocking[1])})
    assert res["name"] == "price-x3"
    request(running.info.socket, {"op": "unpatch", "name": "price-x3"})
    assert time.monotonic() - t0 < CLIENT_DEADLINE / 2
    running.line()
    slow.settimeout(CLIENT_DEADLINE * 3)
    assert slow.recv(100) == b""                     # dropped after its deadline
    slow.close()
    running.check_unharmed()


def test_a_wait_without_a_transition_is_answered_at_once(running: Running) -> None:
    """``wait`` on a patch that is not in transition returns at once, and a
    second request on the same connection is answered after it."""
    waiter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiter.connect(running.info.socket)
    waiter.settimeout(10)
    t0 = time.monotonic()
    waiter.sendall(encode({"op": "wait", "name": "nope", "timeout": 30})
                   + encode({"op": "status"}))
    buf = b""
    while buf.count(b"\n") < 2:
        chunk = waiter.recv(65536)
        assert chunk, buf
        buf += chunk
    first, second = (json.loads(line) for line in buf.splitlines())
    assert time.monotonic() - t0 < 5
    assert first == {"ok": True, "result": {"name": "nope", "transition": False}}
    assert second["ok"] and second["result"]["patches"] == []
    waiter.close()
    running.check_unharmed()


def test_a_trace_ends_with_its_client(running: Running) -> None:
    env = {**os.environ}
    trace = subprocess.Popen([*ARMLP, "trace", "--target", running.info.id, "--filter",
                              "price"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert trace.stdout is not None
    first = [trace.stdout.readline() for _ in range(3)]
    assert all(ln.startswith(b"price <- ") for ln in first), first
    trace.stdout.close()                             # as `| head -3` does
    assert trace.wait(20) in (0, 1, 2)
    deadline = time.monotonic() + 10
    while request(running.info.socket, {"op": "status"})["trace"]:
        assert time.monotonic() < deadline, "the trace outlived its client"
        time.sleep(0.1)
    res = request(running.info.socket, {"op": "trace_start", "filters": ["price"]})
    assert res["sites"] == ["price"]                 # a new trace is accepted
    running.line()
    running.check_unharmed()


# --- inputs that are not regular files ------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("args", [
    ["scan", "{x}"], ["scan", "--json", "{x}"], ["verify", "{x}"], ["cflags", "--target", "{x}"],
    ["trace", "{x}"], ["patch", "{x}"], ["run", "--machine", "emu", "{x}"],
])
@pytest.mark.parametrize("what", ["/dev/zero", "fifo", "directory"])
def test_inputs_that_are_not_regular_files_are_refused(args: list[str], what: str, fifo: Path,
                                                       tmp_path: Path) -> None:
    x = {"/dev/zero": "/dev/zero", "fifo": str(fifo), "directory": str(tmp_path)}[what]
    t0 = time.monotonic()
    res = armlp(*[a.replace("{x}", x) for a in args])
    assert time.monotonic() - t0 < 5
    assert res.code == 2
    assert res.err.count("\n") == 1 and res.err.startswith("armlp: error: "), res.err
    assert {"/dev/zero": "a device", "fifo": "a FIFO", "directory": "directory"}[what] in res.err
    assert res.err.rstrip().endswith(("not an ELF file", "not a patch module")), res.err


# --- arguments -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("svc")
    prog = build_program([REPO / "examples" / "programs" / "service.c"], d / "service")
    fix = d / "fix.o"
    subprocess.run([tool("gcc"), *patch_cflags(ElfImage(prog).build_id), "-c",
                    str(REPO / "examples" / "patches" / "fix_price.c"), "-o", str(fix)],
                   check=True)
    return prog, fix


@pytest.mark.parametrize("args,message", [
    (["--patch", "{fix}@nan"], "finite number"),
    (["--patch", "{fix}@inf"], "finite number"),
    (["--patch", "{fix}@-5"], "finite number"),
    (["--patch", "{fix}@soon"], "PATCH.o@SECONDS"),
    (["--machine", "emu", "--after", "nan"], "--after"),
    (["--machine", "emu", "--unpatch-after", "-1"], "--unpatch-after"),
    (["--machine", "emu", "--max-instructions", "-1"], "--max-instructions"),
])
def test_nonsense_numbers_are_refused(service: tuple[Path, Path], args: list[str],
                                      message: str) -> None:
    prog, fix = service
    res = armlp("run", *[a.replace("{fix}", str(fix)) for a in args], prog)
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert message in res.err


@pytest.mark.parametrize("args,message", [
    (["patch", "--wait"], "required: PATCH.o"),
    (["patch", "--wait", "5x"], "'5x' is not a number"),
    (["patch", "--wait", "-5", "fix.o"], "at least 0"),
    (["patch", "--wait", "a.o", "b.o"], "one PATCH.o expected"),
    (["unpatch", "--wait"], "required: NAME"),
    (["patch", "--wait", "/nonexistent/fix.o"], "/nonexistent/fix.o"),
])
def test_wait_takes_a_number_or_leaves_the_word(args: list[str], message: str) -> None:
    """``--wait [SECONDS]`` before the positional: a word that is no number
    is the positional (the last case gets as far as reading the patch)."""
    res = armlp(*args)
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert message in res.err


def test_program_arguments_go_after_double_dash(service: tuple[Path, Path]) -> None:
    prog, fix = service
    res = armlp("run", "--machine", "emu", prog, "--patch", str(fix), "--", "ignored", "args")
    assert res.code == 0, res.err
    res = armlp("scan", prog, "--", "x")
    assert res.code == 2 and "no program arguments" in res.err


# --- replacements that cannot be right, names that cannot be shown ------------------------


@pytest.mark.parametrize("body,message", [
    ("ARMLP_PATCH(\"null\");\nARMLP_REPLACE(price, 0);", "is NULL"),
    ("ARMLP_PATCH(\"data\");\nint table[4] = {1};\nARMLP_REPLACE(price, table);",
     "not a function of the patch"),
    ("ARMLP_PATCH(\"self\");\nextern int price(int);\nARMLP_REPLACE(price, price);",
     "not a function of the patch"),
    ("ARMLP_PATCH(\"bad\\nname\\x1b[2J\");\nint f(int x) { return x; }\nARMLP_REPLACE(price, f);",
     "patch name"),
    ("ARMLP_PATCH(\"ctor\");\nint hits;\n"
     "__attribute__((constructor)) void init(void) { hits = 1; }\n"
     "int f(int x) { return x; }\nARMLP_REPLACE(price, f);", "constructors"),
])
def test_replacements_that_cannot_be_right_are_refused(service: tuple[Path, Path],
                                                       tmp_path: Path, body: str,
                                                       message: str) -> None:
    prog, _ = service
    src = tmp_path / "bad.c"
    src.write_text("#include <armlp/livepatch.h>\n" + body + "\n")
    obj = tmp_path / "bad.o"
    subprocess.run([tool("gcc"), *patch_cflags(), "-c", str(src), "-o", str(obj)], check=True)
    res = armlp("run", "--machine", "emu", prog, "--patch", obj)
    assert res.code == 2, res.err
    assert res.err.count("\n") == 1 and message in res.err, res.err
    assert "\x1b" not in res.err


# --- the runtime directory -------------------------------------------------------------------


def test_a_runtime_directory_of_another_user_is_skipped(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "armlp").mkdir(parents=True)
    os.chown(xdg / "armlp", 65534, 65534)            # another user got there first
    monkeypatch.delenv("ARMLP_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    chosen = runtime_dir()
    assert chosen != xdg / "armlp"
    assert chosen.stat().st_uid == os.getuid() and chosen.stat().st_mode & 0o077 == 0


def test_stale_entries_are_removed_and_do_not_break_status(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("ARMLP_RUNTIME_DIR", str(tmp_path / "rt"))
    rt = runtime_dir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, pid in (("gone-1", dead.pid), ("reused-2", os.getpid())):
        d = rt / name
        d.mkdir()
        (d / "info.json").write_text(json.dumps({
            "id": name, "program": "/x", "pid": 1, "controller_pid": pid,
            "socket": str(d / "ctl.sock")}))
    (rt / "garbage").mkdir()
    (rt / "garbage" / "info.json").write_text("{not json")
    assert list_targets() == []
    assert not (rt / "gone-1").exists() and not (rt / "garbage").exists()
    res = armlp("status")
    assert res.code == 0 and "no running targets" in res.out
