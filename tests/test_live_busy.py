"""The consistency model with threads that never make a system call
(issue 11): under qemu-user their registers are never exact, so they are
judged by a conservative scan of their registers and stack, twice in
successive attempts.  Eight busy workers outside the patched function let
the transition finish unforced; a thread that never leaves a patched
function holds it, is named with the function, and only force ends it."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from armlp.elf.image import ElfImage
from armlp.toolchain import patch_cflags, tool
from conftest import program_and_patch
from live_helpers import TESTS, Live, wait_until

pytestmark = pytest.mark.slow


Busy = tuple[Path, Path, str]


@pytest.fixture(scope="module", params=["", "arm-linux-gnueabihf-gcc"],
                ids=["static-arm", "armhf-thumb2"])
def busy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Busy:
    """The program, its patch and the compiler (see program_and_patch):
    static ARM (APCS frames: a function is seen on a stack by its frame's
    saved pc), and Debian armhf's Thumb-2 PIE (no frames: by the words that
    may return into it)."""
    gcc: str = request.param
    prog, fix = program_and_patch(TESTS / "programs" / "busy.c",
                                  TESTS / "patches" / "busy_fix.c",
                                  tmp_path_factory.mktemp("busy"), gcc)
    return prog, fix, gcc


def test_busy_threads_switch_without_force(busy: Busy, live: Live) -> None:
    prog, fix, _ = busy
    r = live.run("busy", prog, "6")
    target = r.info()["id"]
    wait_until("the workers", lambda: "ready" in r.out())
    t0 = time.monotonic()
    res = live.cli("patch", fix, "--target", target, "--wait", "10", "--json")
    assert res.code == 0, (res.out, res.err)      # finished, nothing forced
    assert res.json()["transition"] is False
    assert time.monotonic() - t0 < 10
    assert r.wait(60) == 0
    m = re.search(r"fresh (\d+) bad (\d+)", r.out())
    assert m and int(m[1]) > 0 and int(m[2]) == 0, r.out()
    assert "forced" not in r.err()


def test_a_thread_inside_a_patched_function_holds_the_transition(
        busy: Busy, live: Live) -> None:
    prog, _, gcc = busy
    patch = live.dir / "forever.o"          # built as program_and_patch builds the first
    subprocess.run([gcc or tool("gcc"), *patch_cflags(ElfImage(prog).build_id, thumb=bool(gcc)),
                    "-c", str(TESTS / "patches" / "busy_forever.c"), "-o", str(patch)],
                   check=True)
    r = live.run("stuck", prog, "8", "stuck")
    target = r.info()["id"]
    wait_until("the workers", lambda: "ready" in r.out())
    res = live.cli("patch", patch, "--target", target, "--wait", "1.5", "--json")
    assert res.code == 1, (res.out, res.err)       # still in transition

    def blocked() -> list[dict[str, str]]:
        st = live.cli("status", "--target", target, "--json").json()["targets"][0]
        return list(st["transition"]["blocked"])

    # The eight workers switch (each on a clean scan once it ran; one
    # caught on its way through tick's handler waits for the next attempt,
    # a second apart at most): only the stuck thread is left.
    wait_until("the workers to switch", lambda: len(blocked()) == 1, timeout=30)
    assert "forever" in blocked()[0]["reason"], blocked()
    assert live.cli("force", "busy-forever", "--target", target).code == 0
    assert r.wait(60) == 0
    m = re.search(r"fresh (\d+) bad (\d+)", r.out())
    assert m and int(m[1]) > 0 and int(m[2]) == 0, r.out()
