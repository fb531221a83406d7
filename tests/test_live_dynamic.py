"""Dynamically linked programs under ``armlp run`` (issue 12, in part): the
sysroot comes from the program's interpreter, the first system call uses
ld.so's svc (the program's text has none), mcount is reached through the
PLT, for the program's sites and the patch's own; status shows the sites, a
patch goes in and out, and the program ends normally.  PIE is refused
before anything starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import Builder, armlp
from live_helpers import TESTS, Live, compile_patch, wait_until

pytestmark = pytest.mark.slow

FLAGS = ["-marm", "-pg", "-mapcs-frame", "-O2"]


def dynamic(builder: Builder, link: str) -> Path:
    src = TESTS / "programs" / "live_target.c"
    obj = builder.compile(src, [*FLAGS, "-fPIE" if link == "-pie" else "-fno-pie"],
                          name=f"live_target{link}.o")
    return builder.link([obj], [link, "-pthread"], f"live_target_dyn{link}")


def test_dynamic_program_runs_shows_its_sites_and_is_patched(builder: Builder, live: Live) -> None:
    prog = live.dir / "ltd"          # a short name: the control socket's path holds it
    shutil.copy(dynamic(builder, "-no-pie"), prog)
    r = live.run("dyn", prog, "400", "20")
    info = r.info()
    st = live.cli("status", "--target", info["id"], "--json").json()["targets"][0]
    assert st["sites"]["total"] == 3            # main, worker, price: through the PLT
    patch = compile_patch(TESTS / "patches" / "live_price.c", prog, live.dir / "p.o")
    # The worker's walk ends in the stripped libc's start_thread, which is
    # not a known root: unreliable; the conservative scan of its stack lets
    # it switch (no force).
    res = live.cli("patch", patch, "--target", info["id"], "--wait", "10")
    assert res.code == 0, (res.out, res.err)
    wait_until("the patched price", lambda: "price=1001" in r.out())
    res = live.cli("unpatch", "live-price", "--target", info["id"], "--wait", "10")
    assert res.code == 0, (res.out, res.err)
    mark = len(r.out())
    wait_until("the original price again", lambda: "price=1000" in r.out()[mark:])
    assert r.wait(60) == 0
    out = r.out()
    assert out.endswith("done\n") and "price=1001" in out


def test_pie_is_refused_before_it_starts(builder: Builder) -> None:
    res = armlp("run", dynamic(builder, "-pie"), "1")
    assert res.code == 2
    assert "position independent (PIE)" in res.err and "-no-pie" in res.err
