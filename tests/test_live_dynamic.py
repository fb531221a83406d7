"""Dynamically linked programs under ``armlp run`` (issue 12, in part): the
sysroot comes from the program's interpreter, the first system call uses
ld.so's svc (the program's text has none), mcount is reached through the
PLT; status shows the sites, a patch is refused with a clear line, and the
program runs as without armlp.  PIE is refused before anything starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import Builder, armlp
from live_helpers import TESTS, Live, compile_patch, one_line_error

pytestmark = pytest.mark.slow

FLAGS = ["-marm", "-pg", "-mapcs-frame", "-O2"]


def dynamic(builder: Builder, link: str) -> Path:
    src = TESTS / "programs" / "live_target.c"
    obj = builder.compile(src, [*FLAGS, "-fPIE" if link == "-pie" else "-fno-pie"],
                          name=f"live_target{link}.o")
    return builder.link([obj], [link, "-pthread"], f"live_target_dyn{link}")


def test_dynamic_program_runs_and_shows_its_sites(builder: Builder, live: Live) -> None:
    prog = live.dir / "ltd"          # a short name: the control socket's path holds it
    shutil.copy(dynamic(builder, "-no-pie"), prog)
    r = live.run("dyn", prog, "40", "20")
    info = r.info()
    st = live.cli("status", "--target", info["id"], "--json").json()["targets"][0]
    assert st["sites"]["total"] == 3            # main, worker, price: through the PLT
    patch = compile_patch(TESTS / "patches" / "live_price.c", prog, live.dir / "p.o")
    err = one_line_error(live.cli("patch", patch, "--target", info["id"]))
    assert "dynamically linked" in err and "does not live patch it yet" in err
    assert r.wait(60) == 0
    out = r.out()
    assert out.count("price=1000 untraced=10") == 40 and out.endswith("done\n")


def test_pie_is_refused_before_it_starts(builder: Builder) -> None:
    res = armlp("run", dynamic(builder, "-pie"), "1")
    assert res.code == 2
    assert "position independent (PIE)" in res.err and "-no-pie" in res.err
