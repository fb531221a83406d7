"""The program's own signals, from several threads at once (issue 9, item
2): armlp keeps them out of qemu-user's stub (``armlp.machine.door``), so
they cannot corrupt it, whatever armlp does meanwhile.

The target is ``tests/programs/sigstorm.c``: four threads each signal
themselves every millisecond and count what arrives; it exits 0 only when
every signal arrived.  Before the door, 4 of 4 runs lost the controller
within 200 ms with no patch at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from armlp.program_build import build_program
from conftest import program_and_patch
from live_helpers import Live, Run, one_line_error

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    out = tmp_path_factory.mktemp("storm")
    prog, x3 = program_and_patch(TESTS / "programs" / "sigstorm.c",
                                 TESTS / "patches" / "price_x3.c", out)
    _, fault = program_and_patch(TESTS / "programs" / "sigstorm.c",
                                 TESTS / "patches" / "price_fault.c", out)
    return prog, x3, fault


def _ready(run: Run) -> str:
    """The target's id once its controller serves."""
    return str(run.info()["id"])


def test_signals_of_many_threads_while_patching(storm: tuple[Path, Path, Path],
                                                live: Live) -> None:
    prog, x3, _ = storm
    run = live.run("storm", prog, "10")     # cycles for 3 s: a slow last one fits
    sock = _ready(run)
    cycles = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and run.proc.poll() is None:
        assert live.cli("patch", "--target", sock, x3, "--wait", "10").code == 0
        assert live.cli("status", "--target", sock).code == 0
        assert live.cli("unpatch", "--target", sock, "price-x3", "--wait", "10").code == 0
        cycles += 1
    code = run.wait(60)
    assert code == 0, (run.out(), run.err())
    sent, got = (int(w) for w in run.out().split()[-3::2])
    assert sent == got and sent > 1000, run.out()
    assert cycles >= 3
    assert "error" not in run.err(), run.err()


def test_a_patch_that_faults_in_every_thread_ends_the_program_by_its_signal(
        storm: tuple[Path, Path, Path], live: Live) -> None:
    prog, _, fault = storm
    run = live.run("fault", prog, "30")
    sock = _ready(run)
    live.cli("patch", "--target", sock, fault)
    assert run.wait(30) == 128 + signal.SIGSEGV, run.err()
    assert "sent" not in run.out()


def test_the_terminals_interrupt_ends_the_program_during_patching(
        storm: tuple[Path, Path, Path], live: Live) -> None:
    prog, x3, _ = storm
    run = live.run("intr", prog, "30")
    sock = _ready(run)
    for _ in range(3):
        live.cli("patch", "--target", sock, x3, "--wait", "10")
        live.cli("unpatch", "--target", sock, "price-x3", "--wait", "10")
    os.killpg(run.pid, signal.SIGINT)       # as a terminal's ^C: the whole group
    assert run.wait(30) == 128 + signal.SIGINT, run.err()
    res = live.cli("status", "--target", sock)
    one_line_error(res)


@pytest.mark.parametrize("sig", [signal.SIGBUS, signal.SIGUSR1, signal.SIGSYS])
def test_a_program_killed_by_a_signal_ends_armlp_as_it_ends_qemu(
        sig: signal.Signals, live: Live, tmp_path_factory: pytest.TempPathFactory) -> None:
    # The stub reports a death by signal in GDB's numbering: armlp said 138
    # for a SIGBUS (GDB's 10) when it heard of the end from the stub first,
    # 135 when from the process.  Now 128 + the program's own number.
    prog = build_program([TESTS / "programs" / "die_by.c"],
                         tmp_path_factory.mktemp("die") / "die_by", freestanding=False)
    plain = subprocess.run(["qemu-arm", str(prog), str(int(sig))], check=False)
    assert plain.returncode == -sig
    for _ in range(3):          # either way of hearing of the end
        run = live.run(f"die-{sig.name}", prog, str(int(sig)))
        assert run.wait(30) == 128 + sig, run.err()
