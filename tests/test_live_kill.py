"""The controller SIGKILLed while it has the program paused to enable a
100-function patch: the program keeps running, every call returns the old
or the new result (whatever was fully applied), and it ends normally.

The kill lands inside the pause: the test watches qemu's threads until one
is parked in the GDB stub (blocked reading the stub's Unix socket), then
waits *delay_ms* more.  Delays span the whole pause (80-100 ms for this
first patch here, which also maps and links the module), so
runs die with the patch not started, half written and fully applied.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from armlp.control.protocol import encode
from conftest import program_and_patch, wait_for_target

HERE = Path(__file__).resolve().parent


def _parked(pid: int) -> bool:
    """Whether a thread of qemu *pid* is parked in its stub (reading the socket)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() == "unix_stream_read_generic":
                return True
        except OSError:
            continue
    return False


#: (delay, compiler): static armel builds at every delay, and an armhf
#: dynamic PIE (Thumb-2, as Debian armhf builds, and a Thumb-2 patch) at three.
CASES = [*((d, "") for d in (0, 5, 10, 20, 30, 45, 60, 70, 80, 90, 100, 115, 140)),
         *((d, "arm-linux-gnueabihf-gcc") for d in (0, 45, 100))]


@pytest.mark.slow
@pytest.mark.parametrize(("delay_ms", "gcc"), CASES,
                         ids=[f"{d}ms{'-armhf-thumb2-dynamic' if g else ''}" for d, g in CASES])
def test_controller_killed_mid_enable(delay_ms: int, gcc: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    prog, fix = program_and_patch(HERE / "programs" / "many.c",
                                  HERE / "patches" / "many_fix.c", tmp_path, gcc)
    monkeypatch.setenv("ARMLP_RUNTIME_DIR", str(tmp_path / "rt"))
    done, result = tmp_path / "done", tmp_path / "result"
    ctl = subprocess.Popen([sys.executable, "-m", "armlp.cli.main", "run", str(prog),
                            str(done), str(result)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        info = wait_for_target(ctl)
        time.sleep(0.2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(info.socket)
            s.sendall(encode({"op": "patch", "path": str(fix)}))
            deadline = time.monotonic() + 20
            while not _parked(info.pid):
                assert time.monotonic() < deadline, "the controller never paused the program"
                time.sleep(0.0005)
            time.sleep(delay_ms / 1000)
            os.kill(ctl.pid, signal.SIGKILL)      # the controller dies, qemu lives on
        ctl.wait(timeout=10)
        time.sleep(0.3)                           # the program keeps running ...
        done.touch()
        deadline = time.monotonic() + 60
        while not result.exists() or not result.read_text().endswith("\n"):
            assert time.monotonic() < deadline, "the program did not finish"
            time.sleep(0.05)
    finally:
        done.touch()
        if ctl.poll() is None:
            ctl.kill()
        with contextlib.suppress(NameError, ProcessLookupError):
            deadline = time.monotonic() + 10       # a program that hangs is killed
            while os.path.exists(f"/proc/{info.pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(info.pid, signal.SIGKILL)
    m = re.fullmatch(r"calls (\d+) new (\d+) bad (\d+)\n", result.read_text())
    assert m, result.read_text()
    calls, fresh, bad = map(int, m.groups())
    print(f"killed {delay_ms} ms into the pause: {calls} calls, {fresh} new, {bad} bad")
    assert bad == 0 and calls > 10_000
