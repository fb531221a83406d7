"""Thumb-2 programs and patches live under ``armlp run`` (issue 12, item 3):
a running program's Thumb function is replaced by an ARM or a Thumb
function, an ARM function by a Thumb one (calls interwork in every
direction), on the fast path (the site's ``b.w`` to a T32 trampoline) once
the transition is over; unpatched, the old function runs again, and the
program ends normally.  Debian armhf's default build of the live programs
(dynamic, PIE, Thumb-2) is also patched by the stress, kill and freeze
tests (see test_live_stress.py, test_live_kill.py, test_live_faults.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from armlp.elf.image import ElfImage
from armlp.toolchain import patch_cflags
from conftest import Builder
from live_helpers import TESTS, Live, wait_until

pytestmark = pytest.mark.slow

HF = "arm-linux-gnueabihf-gcc"
MODES = {"thumb": ["-mthumb", "-pg"], "arm": ["-marm", "-pg", "-mapcs-frame"]}


def program(builder: Builder, mode: str, link: str) -> Path:
    """live_target by armhf's compiler in *mode*, linked *link* (-static or -pie)."""
    src = TESTS / "programs" / "live_target.c"
    pic = ["-fPIE"] if link == "-pie" else []
    return builder.build(f"lt-{mode}{link}", [HF, *MODES[mode], *pic, "-O2", "-pthread", link,
                                              str(src), "-o", "{out}"], [src])


@pytest.mark.parametrize(("prog_mode", "link", "patch_mode"),
                         [("thumb", "-static", "arm"), ("thumb", "-static", "thumb"),
                          ("arm", "-static", "thumb"), ("thumb", "-pie", "thumb")],
                         ids=["thumb-prog-arm-patch", "thumb-prog-thumb-patch",
                              "arm-prog-thumb-patch", "thumb-pie-thumb-patch"])
def test_interworking_patch_in_and_out(builder: Builder, live: Live, prog_mode: str,
                                       link: str, patch_mode: str) -> None:
    prog = live.dir / "lt"           # a short name: the control socket's path holds it
    prog.write_bytes(program(builder, prog_mode, link).read_bytes())
    prog.chmod(0o755)
    patch = live.dir / "p.o"
    subprocess.run([HF, *patch_cflags(ElfImage(prog).build_id, thumb=patch_mode == "thumb"),
                    "-c", str(TESTS / "patches" / "live_price.c"), "-o", str(patch)],
                   check=True)
    r = live.run("lt", prog, "400", "20")
    info = r.info()
    wait_until("the first line", lambda: "price=1000" in r.out())
    res = live.cli("patch", patch, "--target", info["id"], "--wait", "10")
    assert res.code == 0, (res.out, res.err)
    wait_until("the patched price", lambda: "price=1001" in r.out())
    st = live.cli("status", "--target", info["id"], "--json").json()["targets"][0]
    (site,) = st["sites"]["in_use"]
    # The transition is over: the site branches to price's own trampoline.
    assert site["function"] == "price" and site["site_word"] == "b klp_tramp[price]", site
    # price_v2's own mcount site is the NOP of its instruction set: the
    # patch runs without calling mcount (a Thumb NOP would crash ARM code).
    res = live.cli("unpatch", "live-price", "--target", info["id"], "--wait", "10")
    assert res.code == 0, (res.out, res.err)
    mark = len(r.out())
    wait_until("the original price again", lambda: "price=1000" in r.out()[mark:])
    assert r.wait(60) == 0, r.err()
    out = r.out()
    assert out.endswith("done\n")
    prices = {int(ln.split("price=")[1].split()[0]) for ln in out.splitlines()
              if "price=" in ln}
    assert prices <= {0, 1000, 1001}, prices        # old or new, never anything else


@pytest.mark.parametrize("mode", ["thumb", "arm"])
def test_a_thread_a_signal_interrupted_in_a_patched_function_holds_the_transition(
        builder: Builder, live: Live, mode: str) -> None:
    """The worker of tests/programs/sighold.c sits in a signal handler
    (blocked in nanosleep) that interrupted it inside work(): its stack
    holds work() only below the signal frame.  It holds the transition,
    named with work, until the handler returns; then it switches, and
    work() returns the new value."""
    src = TESTS / "programs" / "sighold.c"
    prog = live.dir / "sh"
    prog.write_bytes(builder.build(f"sighold-{mode}", [HF, *MODES[mode], "-O2", "-pthread",
                                                       "-static", str(src), "-o", "{out}"],
                                   [src]).read_bytes())
    prog.chmod(0o755)
    patch = live.dir / "work.o"
    subprocess.run([HF, *patch_cflags(ElfImage(prog).build_id, thumb=mode == "thumb"), "-c",
                    str(TESTS / "patches" / "work_fix.c"), "-o", str(patch)], check=True)
    r = live.run("sh", prog, "4000")
    target = r.info()["id"]
    wait_until("the handler", lambda: "held" in r.out())
    res = live.cli("patch", patch, "--target", target, "--json")
    assert res.code == 0 and res.json()["transition"] is True, (res.out, res.err)
    st = live.cli("status", "--target", target, "--json").json()["targets"][0]
    assert st["transition"] is not None and \
        any("work" in b["reason"] for b in st["transition"]["blocked"]), (res.out, r.err())
    assert "released" not in r.out()

    def done() -> bool:
        doc = live.cli("status", "--target", target, "--json").json()["targets"][0]
        return doc["transition"] is None
    wait_until("the transition's end", done, timeout=30)
    assert "released" in r.out()
    assert r.wait(60) == 0, r.err()
    assert "result -1\ndone\n" in r.out()
