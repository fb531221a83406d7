"""The controller SIGKILLed in the middle of enabling a 100-function patch:
the program keeps running, every call returns the old or the new result
(whatever was fully applied), and it ends normally."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from armlp.build import build_program
from armlp.control.protocol import send
from armlp.elf.image import ElfImage
from armlp.toolchain import patch_cflags, tool
from conftest import wait_for_target

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("delay_ms", [0, 2, 4, 6, 8, 11, 15])
def test_controller_killed_mid_enable(delay_ms: int, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    prog = build_program([HERE / "programs" / "many.c"], tmp_path / "many",
                         freestanding=False, ldflags=["-pthread"])
    fix = tmp_path / "many_fix.o"
    subprocess.run([tool("gcc"), *patch_cflags(ElfImage(prog).build_id), "-c",
                    str(HERE / "patches" / "many_fix.c"), "-o", str(fix)], check=True)
    monkeypatch.setenv("ARMLP_RUNTIME_DIR", str(tmp_path / "rt"))
    done, result = tmp_path / "done", tmp_path / "result"
    ctl = subprocess.Popen([sys.executable, "-m", "armlp.cli.main", "run", str(prog),
                            str(done), str(result)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        info = wait_for_target(ctl)
        time.sleep(0.2)
        import socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(info.socket)
            send(s, {"op": "patch", "path": str(fix)})
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
    m = re.fullmatch(r"calls (\d+) new (\d+) bad (\d+)\n", result.read_text())
    assert m, result.read_text()
    calls, _fresh, bad = map(int, m.groups())
    assert bad == 0 and calls > 10_000
