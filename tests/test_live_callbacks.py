"""Callbacks in a live program under qemu-arm: run in the target by
``armlp patch``, at the kernel's points; a refusing pre_patch leaves the
program as it was."""

from __future__ import annotations

import pytest

from live_helpers import TESTS, Built, Live, compile_patch, one_line_error, wait_until

pytestmark = pytest.mark.slow


def test_callbacks_run_live_and_a_refusal_changes_nothing(built: Built, live: Live) -> None:
    r = live.run("t", built.target, "400", "20")
    info = r.info()
    refuse = compile_patch(TESTS / "patches" / "live_refuse.c", built.target,
                           live.dir / "refuse.o")
    err = one_line_error(live.cli("patch", refuse, "--target", info["id"]))
    assert "pre_patch callback refused the patch (-1); nothing changed" in err
    st = live.cli("status", "--target", info["id"], "--json").json()
    assert st["targets"][0]["patches"] == []
    cb = compile_patch(TESTS / "patches" / "live_callbacks.c", built.target, live.dir / "cb.o")
    assert live.cli("patch", cb, "--target", info["id"]).code == 0
    wait_until("the patched price with both callbacks", lambda: "price=1027" in r.out())
    assert "price=-10" not in r.out()          # the refused patch never ran
    assert live.cli("unpatch", "live-callbacks", "--target", info["id"]).code == 0
    assert r.wait(60) == 0


def test_atomic_replace_live(built: Built, live: Live) -> None:
    """A cumulative patch through `armlp patch`: the enabled patch goes in
    the same pause, and `status` shows the cumulative one alone."""
    r = live.run("t", built.target, "400", "20")
    info = r.info()
    cb = compile_patch(TESTS / "patches" / "live_callbacks.c", built.target, live.dir / "cb.o")
    assert live.cli("patch", cb, "--target", info["id"]).code == 0
    cumulative = live.dir / "cumulative.c"
    cumulative.write_text("#include <armlp/livepatch.h>\nARMLP_PATCH(\"live-cumulative\");\n"
                          "ARMLP_ATOMIC_REPLACE;\nint untraced(int x);\n"
                          "int price_c(int items) { return items * 100 + 5; }\n"
                          "ARMLP_REPLACE(price, price_c);\n")
    obj = compile_patch(cumulative, built.target, live.dir / "cumulative.o")
    res = live.cli("patch", obj, "--target", info["id"])
    assert res.code == 0 and "replacing live-callbacks" in res.out, res.out
    wait_until("the cumulative price", lambda: "price=1005" in r.out())
    st = live.cli("status", "--target", info["id"], "--json").json()
    assert [p["name"] for p in st["targets"][0]["patches"]] == ["live-cumulative"]
    assert live.cli("unpatch", "live-cumulative", "--target", info["id"]).code == 0
    assert r.wait(60) == 0
