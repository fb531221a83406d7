"""``armlp run`` and ``armlp cflags``: the demo's path end to end."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

from armlp.program_build import build_program
from armlp.toolchain import tool
from conftest import armlp

REPO = Path(__file__).resolve().parent.parent


def _build(tmp_path: Path) -> tuple[Path, Path]:
    service = build_program([REPO / "examples" / "programs" / "service.c"], tmp_path / "service")
    res = armlp("cflags", "--target", service)
    assert res.code == 0
    assert "-pg" in res.out.split() and "-mapcs-frame" in res.out.split()
    assert re.search(r"-DARMLP_TARGET_BUILD_ID=[0-9a-f]{40}", res.out)
    fix = tmp_path / "fix.o"
    subprocess.run([tool("gcc"), *res.out.split(), "-c",
                    str(REPO / "examples" / "patches" / "fix_price.c"), "-o", str(fix)],
                   check=True)
    return service, fix


def test_run_applies_and_removes_the_fix(tmp_path: Path) -> None:
    service, fix = _build(tmp_path)
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "armlp"), "run", "--machine", "emu",
                           str(service), "--patch", str(fix), "--after", "450",
                           "--unpatch-after", "400", "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("tick")]
    prices = [int(ln.rsplit("=", 1)[1]) for ln in lines]
    unpatched = [1030, 1144, 1260] * 4
    # ticks sleep 100 ms each: the fix is in for ticks 5-8 and out again after.
    fixed = [p - p * 10 // 100 for p in unpatched]
    assert prices == unpatched[:5] + fixed[5:9] + unpatched[9:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert [e["event"] for e in summary["events"]] == ["enabled", "disabled"]
    assert summary["exit_status"] == 0


def test_run_refuses_a_patch_before_running(tmp_path: Path) -> None:
    service, _ = _build(tmp_path)
    other = build_program([REPO / "examples" / "programs" / "calls.c"], tmp_path / "calls")
    res = armlp("cflags", "--target", other)
    bad = tmp_path / "bad.o"
    subprocess.run([tool("gcc"), *res.out.split(), "-c",
                    str(REPO / "examples" / "patches" / "fix_price.c"), "-o", str(bad)],
                   check=True)
    res = armlp("run", "--machine", "emu", service, "--patch", bad)
    assert res.code == 2 and "build-id" in res.err and res.err.count("\n") == 1
    assert "tick" not in res.out


def test_run_gives_its_caller_back_the_sigint_handler(tmp_path: Path) -> None:
    """While it serves a running program ``armlp run`` ignores SIGINT (a
    terminal's ^C is the program's); called in-process (a script, a test)
    it puts the caller's handler back when it returns, so that the caller
    and every program it starts later can still be interrupted."""
    prog = build_program([REPO / "examples" / "programs" / "calls.c"], tmp_path / "calls")
    before = signal.getsignal(signal.SIGINT)
    res = armlp("run", prog)
    assert res.code == 0, res.err
    assert signal.getsignal(signal.SIGINT) is before
