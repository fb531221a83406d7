"""armlp's stops are invisible to the program (issue 9, item 1).

``tests/programs/blocking.c`` keeps a thread in each kind of blocking system
call (``read`` on its standard input, ``write`` to a full pipe, ``accept``,
``poll``, ``nanosleep``, ``futex``, ``select``, ``recv``, ``waitpid``) and
prints any sign of a stop: a call that fails with ``EINTR``, a sleep or
timeout that ends early.  While its input is fed slowly, ``status``,
``patch`` and ``unpatch`` are sent to its controller in a loop; the program
must echo every line, report nothing, and end normally at end of input.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from armlp.control.protocol import request
from conftest import program_and_patch, settle, wait_for_target
from live_helpers import started

TESTS = Path(__file__).resolve().parent
LINES = 25


@pytest.fixture(scope="module", params=["", "arm-linux-gnueabihf-gcc"],
                ids=["static-arm", "armhf-thumb2"])
def blocking(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The program and its patch: static ARM, and Debian armhf's Thumb-2 PIE."""
    return program_and_patch(TESTS / "programs" / "blocking.c",
                             TESTS / "patches" / "price_x3.c",
                             tmp_path_factory.mktemp("blocking"), request.param)


@pytest.mark.parametrize("handler", ["restart", "norestart"])
def test_stops_interrupt_no_system_call(blocking: tuple[Path, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, handler: str) -> None:
    prog, patch = blocking
    monkeypatch.setenv("ARMLP_RUNTIME_DIR", str(tmp_path / "rt"))
    with started([sys.executable, "-m", "armlp.cli.main", "run", str(prog), "--", handler],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 env=os.environ.copy()) as proc:
        info = wait_for_target(proc)
        assert proc.stdin is not None
        stdin = proc.stdin

        def feed() -> None:
            for i in range(LINES):
                stdin.write(f"input {i}\n")
                stdin.flush()
                time.sleep(0.08)

        feeder = threading.Thread(target=feed)
        feeder.start()
        cycles = 0
        while feeder.is_alive():
            request(info.socket, {"op": "status"})
            request(info.socket, {"op": "patch", "path": str(patch)})
            request(info.socket, {"op": "status"})
            settle(info.socket)
            request(info.socket, {"op": "unpatch", "name": "price-x3"})
            settle(info.socket)
            cycles += 1
        feeder.join()
        stdin.close()
        proc.stdin = None
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert [ln for ln in lines if ln.startswith(("EINTR", "SHORT", "ERROR"))] == []
    assert [ln for ln in lines if ln.startswith("line ")] == \
        [f"line input {i}" for i in range(LINES)]
    assert lines[-1] == "done"
    assert cycles >= 5, f"only {cycles} patch/unpatch cycles while the input was fed"
