"""Eight threads call the patched functions in tight loops while the patch
is enabled and disabled 200 times in a row on a live process under
qemu-arm: only old or new results, never garbage, and the program keeps
running to a normal exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from armlp.control.protocol import request
from conftest import force_transition, program_and_patch, settle, wait_for_target

HERE = Path(__file__).resolve().parent
CYCLES = 200


def stress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patch: str,
           drive: Callable[[str, Path], None], gcc: str = "") -> tuple[int, int, int, str]:
    """Run tests/programs/stress.c under ``armlp run``; *drive(socket, fix)*
    works the controller meanwhile.  The program's counts: calls, new, bad.
    *gcc*: see conftest.program_and_patch."""
    prog, fix = program_and_patch(HERE / "programs" / "stress.c", HERE / "patches" / patch,
                                  tmp_path, gcc)
    monkeypatch.setenv("ARMLP_RUNTIME_DIR", str(tmp_path / "rt"))
    done = tmp_path / "done"
    # armlp's event notes go to a file: 400 of them would fill a pipe nobody
    # reads until the end, and block the controller on its own stderr.
    log = tmp_path / "armlp.err"
    with open(log, "w") as err_file:
        run = subprocess.Popen([sys.executable, "-m", "armlp.cli.main", "run", str(prog),
                                str(done)], stdout=subprocess.PIPE, stderr=err_file, text=True,
                               env=dict(os.environ))
    try:
        try:
            drive(wait_for_target(run).socket, fix)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-2000:]}") from exc
        assert run.poll() is None, "the program stopped while armlp worked on it"
        done.touch()
        out, _ = run.communicate(timeout=120)
    finally:
        done.touch()        # the program ends on its own, also without its controller
        if run.poll() is None:
            run.kill()
    err = log.read_text()
    assert run.returncode == 0, (out, err[-2000:])
    assert "Traceback" not in err
    m = re.search(r"calls (\d+) new (\d+) bad (\d+)", out)
    assert m, out
    calls, fresh, bad = map(int, m.groups())
    return calls, fresh, bad, out


@pytest.mark.slow
@pytest.mark.parametrize("gcc", ["", "arm-linux-gnueabihf-gcc"],
                         ids=["static", "armhf-thumb2-dynamic-pie"])
def test_200_enable_disable_cycles_under_8_hammering_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gcc: str) -> None:
    pauses: list[float] = []
    work: list[float] = []

    def cycles(socket: str, fix: Path) -> None:
        for _ in range(CYCLES):
            # The hammering threads are nearly always inside f or g (or
            # the trampoline on their way in): each transition still open is
            # forced (as the kernel's force), 200 times under load.
            res = request(socket, {"op": "patch", "path": str(fix)})
            pauses.append(res["pause_ms"])
            work.append(res["stopped_ms"])
            st = request(socket, {"op": "status"})
            assert [p["name"] for p in st["patches"]] == ["stress"]
            if res["transition"]:
                force_transition(socket, "stress")
            res = request(socket, {"op": "unpatch", "name": "stress"})
            pauses.append(res["pause_ms"])
            work.append(res["stopped_ms"])
            if res["transition"]:
                force_transition(socket, "stress")

    calls, fresh, bad, _ = stress(tmp_path, monkeypatch, "stress_fix.c", cycles, gcc)
    assert bad == 0
    assert calls > 1_000_000 and 0 < fresh < calls       # both old and new results seen
    assert len(pauses) == 2 * CYCLES
    # The program's pause is the time its threads were held (code writes,
    # stack checks), a part of armlp's stop of its agent thread.
    assert all(0 < p <= w for p, w in zip(pauses, work, strict=True))


@pytest.mark.slow
def test_shadow_variables_under_8_threads(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's shadow table, hammered by eight real threads (qemu-user
    runs them in parallel host threads): every lookup finds the one datum
    its object got, no thread hangs on the lock, the program exits 0."""
    def drive(socket: str, fix: Path) -> None:
        request(socket, {"op": "patch", "path": str(fix)})
        settle(socket, 0.05, force=True)
        time.sleep(3)           # the threads call f() through the table meanwhile
        request(socket, {"op": "unpatch", "name": "stress-shadow"})
        settle(socket, 0.05, force=True)

    _calls, fresh, bad, out = stress(tmp_path, monkeypatch, "stress_shadow.c", drive)
    assert bad == 0 and fresh > 500, out      # slow under qemu: see README
