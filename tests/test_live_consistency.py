"""The consistency model on a real program (issue 11): a thread never mixes
the old and the new functions of one patch.

``consistency.c``'s workers hold an encoded value across a sleep inside
roundtrip(); the patch changes encode, decode and roundtrip together.  A
thread asleep inside the old roundtrip must decode with the old decode, so
it switches only once it has left; forcing the transition instead breaks
exactly that, which the second test shows (it is what the immediate model
did on every patch).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from armlp.control.protocol import request
from conftest import force_transition, program_and_patch, settle, wait_for_target
from live_helpers import started

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def consistency(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return program_and_patch(TESTS / "programs" / "consistency.c",
                             TESTS / "patches" / "consistency_fix.c",
                             tmp_path_factory.mktemp("consistency"))


def _cycles(prog: Path, patch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            *, force: bool) -> tuple[int, int, list[str]]:
    monkeypatch.setenv("ARMLP_RUNTIME_DIR", str(tmp_path / "rt"))
    # The events go to a file: a pipe nobody reads until the end fills up
    # (hundreds of cycles) and blocks the controller.
    err_path = tmp_path / "armlp.err"
    reasons: list[str] = []
    with open(err_path, "w") as err_file, \
            started([sys.executable, "-m", "armlp.cli.main", "run", str(prog), "--", "12"],
                    stdout=subprocess.PIPE, stderr=err_file, env=os.environ.copy()) as proc:
        info = wait_for_target(proc)
        time.sleep(0.5)
        deadline = time.monotonic() + 5     # the program runs 12 s: a slow last cycle fits
        while time.monotonic() < deadline:
            for req in ({"op": "patch", "path": str(patch)},
                        {"op": "unpatch", "name": "consistency-fix"}):
                res = request(info.socket, req)
                reasons += [b["reason"] for b in res.get("blocked", [])]
                if force and res["transition"]:
                    force_transition(info.socket, "consistency-fix")
                settle(info.socket)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, err_path.read_text()
    m = re.search(r"rounds (\d+) mismatches (\d+)", out)
    assert m, out
    return int(m[1]), int(m[2]), reasons


@pytest.mark.slow
def test_no_thread_mixes_old_and_new_functions(consistency: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rounds, mismatches, reasons = _cycles(*consistency, tmp_path, monkeypatch, force=False)
    assert rounds > 50 and mismatches == 0
    # The model was at work: threads were held back inside roundtrip.
    assert any("in roundtrip" in r for r in reasons), reasons


@pytest.mark.slow
def test_forcing_the_transition_mixes_them(consistency: tuple[Path, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rounds, mismatches, _ = _cycles(*consistency, tmp_path, monkeypatch, force=True)
    assert rounds > 50 and mismatches > 0
