"""Live processes end to end through the real CLI (issue 5): ``armlp run``
under qemu-arm in the background, ``armlp patch``/``unpatch``/``status`` as
separate processes, refusals that leave the target's memory unchanged, and
unpatch freeing (or deferring the free of) a disabled patch's memory.

Faults and the control socket's privacy are in test_live_faults.py; the
helpers and fixtures shared by both are in live_helpers.py and conftest.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from armlp.control.protocol import request
from armlp.control.qemu_live import first_address
from armlp.elf.image import ElfImage
from armlp.machine.qemu import HostMemory
from armlp.program_build import build_program
from live_helpers import (
    TESTS,
    Built,
    Live,
    Run,
    collapse,
    compile_patch,
    no_traceback,
    one_line_error,
    phases,
    service_values,
    target_prices,
    wait_until,
)

# --- 1. the demo flow -------------------------------------------------------------


@pytest.mark.slow
def test_demo_patch_status_unpatch_through_the_cli(built: Built, live: Live) -> None:
    lines = 30
    a = live.run("a", built.service, str(lines))
    b = live.run("b", built.service, "6")
    ia, ib = a.info(), b.info()

    # Two targets: both listed, neither patched; omitting --target is an error.
    st = live.cli("status", "--json")
    assert st.code == 0, st.err
    targets = {t["target"]["id"]: t for t in st.json()["targets"]}
    assert set(targets) == {ia["id"], ib["id"]}
    for t in targets.values():
        assert t["patches"] == [] and t["sites"]["in_use"] == []
        assert t["sites"]["total"] == 4       # main, worker, price, unit_price
    assert targets[ia["id"]]["target"]["pid"] == ia["pid"]
    err = one_line_error(live.cli("patch", built.fix))
    assert ia["id"] in err and ib["id"] in err and "--target" in err
    one_line_error(live.cli("unpatch", "fix-price"))

    # b ends on its own: exit 0, its lines all unpatched; its entry is gone.
    assert b.wait() == 0, b.err()
    assert phases(service_values(b.out())) == ["old"] * 6
    assert not (live.runtime / ib["id"]).exists()

    # One target: --target may be omitted.
    wait_until("3 lines", lambda: len(service_values(a.out())) >= 3)
    res = live.cli("patch", built.fix, "--json")
    assert res.code == 0, res.err
    assert res.json()["name"] == "fix-price" and res.json()["functions"] == ["price"]
    n_patch = len(service_values(a.out()))
    wait_until("patched lines", lambda: phases(service_values(a.out()))[-2:] == ["new"] * 2)

    st = live.cli("status", "--json")
    assert st.code == 0, st.err
    (t,) = st.json()["targets"]
    assert t["target"]["id"] == ia["id"]
    (p,) = t["patches"]
    assert (p["name"], p["enabled"], p["transition"]) == ("fix-price", True, False)
    (o,) = p["objects"]
    assert o["patched"] is True
    (f,) = o["functions"]
    assert (f["name"], f["sympos"], f["new"], f["active"]) == ("price", 0, "price_fixed", True)
    (site,) = t["sites"]["in_use"]
    assert site["function"] == "price" and site["users"] == ["livepatch:price"]
    assert site["site_word"] == "b klp_tramp[price]"
    assert site["entry_word"] == "b price_fixed"
    text = live.cli("status")
    assert text.code == 0 and "fix-price: enabled=1 transition=0" in text.out
    assert "price,0 -> price_fixed" in text.out

    res = live.cli("unpatch", "fix-price", "--target", ia["id"])
    assert res.code == 0, res.err
    n_unpatch = len(service_values(a.out()))
    assert a.wait() == 0, a.err()                         # the controller's status
    no_traceback(a.err())

    out = a.out()
    assert out.splitlines()[0] == "orders of 10+ items get 10% off"
    kinds = phases(service_values(out))
    assert len(kinds) == lines
    # Unpatched, then patched, then unpatched again; a line printed while a
    # switch happened may mix (each worker switches on its next call).
    shape = [k for k in collapse(kinds) if k != "mixed"]
    assert shape == ["old", "new", "old"], kinds
    assert kinds.count("mixed") <= 2, kinds
    assert "new" not in kinds[:n_patch - 1] and "new" not in kinds[n_unpatch + 2:]
    assert kinds[n_patch + 1:n_unpatch - 1] == ["new"] * (n_unpatch - n_patch - 2)
    err = a.err()
    assert "patch fix-price enabled" in err
    # Disabled at once, or once the threads have switched back.
    assert "patch fix-price disabled" in err or (
        "patch fix-price disabling" in err
        and "patch fix-price: transition to unpatched finished" in err), err
    assert not (live.runtime / ia["id"]).exists()
    assert live.cli("status").out.strip() == "no running targets"


# --- 2. refusals leave memory unchanged ------------------------------------------------


def _ranges(program: Path, status: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Every range a patch of *program* could touch."""
    out: list[tuple[str, int, int]] = []
    with open(program, "rb") as fh:
        elf = ELFFile(fh)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1:
                out.append(("text segment", seg["p_vaddr"], seg["p_memsz"]))
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        for name in ("price", "untraced", "main"):
            syms = symtab.get_symbol_by_name(name)
            assert syms is not None and len(syms) == 1, name
            sym = syms[0]
            out.append((name, sym["st_value"] & ~1, 64))
    rt = status["runtime"]
    for key in ("module", "site_records", "site_table"):
        addr, size = rt[key]
        out.append((f"runtime {key}", addr, size))
    for site in rt["sites"]:
        out.append((f"site of {site['function']}", site["site"], 4))
    return out


def _snapshot(sock: str, ranges: list[tuple[str, int, int]]) -> dict[str, str]:
    return {f"{name}@{addr:#x}": request(sock, {"op": "read", "address": addr,
                                                "size": size})["data"]
            for name, addr, size in ranges}


def test_refused_patches_leave_the_target_unchanged(built: Built, live: Live) -> None:
    # 120 lines of 50 ms: time for every refusal even on a loaded machine.
    run = live.run("t", built.target, "120", "50")
    _refusals(built, live, run)


def _refusals(built: Built, live: Live, run: Run) -> None:
    info = run.info()
    status0 = request(info["socket"], {"op": "status"})
    ranges = _ranges(built.target, status0)
    assert {n for n, _, _ in ranges} >= {"text segment", "price", "untraced",
                                          "runtime site_records", "site of price"}
    before = _snapshot(info["socket"], ranges)
    cases = [
        (built.missing, ["no_such_function", "undefined"]),
        (built.untraced, ["untraced", "not patchable"]),
        (built.other, ["build-id", ElfImage(built.service).build_id or "?"]),
        (built.host, ["32-bit ARM"]),
    ]
    for patch, words in cases:
        err = one_line_error(live.cli("patch", patch))
        for w in words:
            assert w in err, err
        assert _snapshot(info["socket"], ranges) == before, f"{patch.name} changed memory"
        st = request(info["socket"], {"op": "status"})
        assert st["patches"] == [] and st["sites"]["in_use"] == []
    # The target is still fine: a good patch applies, the program ends well.
    res = live.cli("patch", built.price)
    assert res.code == 0, res.err
    assert _snapshot(info["socket"], ranges) != before
    assert run.wait() == 0, run.err()
    prices = target_prices(run.out())
    assert len(prices) == 120 and run.out().endswith("done\n")
    assert set(prices) <= {1000, 1001} and prices[-1] == 1001
    assert prices == sorted(prices)        # 1000s, then 1001s: never back, never else


# --- freeing a disabled patch (all threads stopped, registers and stacks scanned) ---------


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("free")
    target = build_program([TESTS / "programs" / "live_target.c"], d / "live_target",
                           freestanding=False, cflags=["-pthread"], ldflags=["-pthread"])
    return (target, compile_patch(TESTS / "patches" / "live_price.c", target, d / "price.o"),
            compile_patch(TESTS / "patches" / "live_slow.c", target, d / "slow.o"))


def _new_address(live: Live) -> int:
    st = live.cli("status", "--json")
    assert st.code == 0, st.err
    (t,) = st.json()["targets"]
    (p,) = t["patches"]
    return int(p["objects"][0]["functions"][0]["new_address"])


def _mapped(pid: int, program: Path, address: int) -> bool:
    """Whether guest *address* is mapped in qemu *pid* (its /proc/PID/maps)."""
    host = HostMemory.find(pid, program, first_address(ElfImage(program)))
    assert host is not None
    try:
        return any(r.start <= address < r.end for r in host.regions())
    finally:
        host.close()


def _run_patched(live: Live, target: Path, patch: Path, lines: int = 60) -> tuple[Run, int, int]:
    """live_target running with *patch* applied: the run, qemu's pid, and the
    address of the patch's new function."""
    r = live.run("t", target, str(lines), "50")
    pid = r.info()["pid"]
    wait_until("2 lines", lambda: len(target_prices(r.out())) >= 2)
    assert live.cli("patch", "--wait", patch).code == 0      # the word after --wait
    return r, pid, _new_address(live)


def test_unpatch_frees_the_memory_no_thread_is_in(progs: tuple[Path, Path, Path],
                                                  live: Live) -> None:
    target, price, _slow = progs
    r, pid, new = _run_patched(live, target, price)
    wait_until("patched lines", lambda: 1001 in target_prices(r.out()))
    res = live.cli("unpatch", "--json", "--wait", "live-price")
    assert res.code == 0, res.err
    # Freed by the controller on its own (a register may hold a stale address
    # of the patch for a moment: it retries with a back-off).
    wait_until("the free", lambda: not _mapped(pid, target, new), timeout=15)
    if not res.json()["memory_freed"]:
        wait_until("the event", lambda: "patch live-price: memory freed" in r.err())
    (t,) = live.cli("status", "--json").json()["targets"]
    assert t["deferred_frees"] == [] and t["all_stop"] is True
    assert not _mapped(pid, target, new), "the disabled patch's memory is still mapped"
    assert r.wait(60) == 0, r.err()
    prices = target_prices(r.out())
    assert prices[-1] == 1000 and 1001 in prices


def test_a_request_leaves_the_stub_once(progs: tuple[Path, Path, Path], live: Live) -> None:
    """qemu-user 7.2 flushes every translation of the program each time a
    thread enters its GDB stub: a patch (the heap's, the module's mmap, the
    sites' mprotect) runs its system calls in one excursion of armlp's agent
    out of the stub (the mailbox), so the stub lets it go once."""
    target, price, _slow = progs
    log = live.dir / "rsp.log"
    live.env["ARMLP_RSP_LOG"] = str(log)
    r = live.run("t", target, "60", "50")
    wait_until("2 lines", lambda: len(target_prices(r.out())) >= 2)
    before = log.stat().st_size
    res = live.cli("patch", "--json", price)
    assert res.code == 0, res.err
    with open(log, "rb") as f:
        f.seek(before)
        sent = [line for line in f if line.split(b" ", 2)[1:2] == [b">"]]
    resumes = [line for line in sent if b"vCont;c" in line]
    assert len(resumes) == 1, resumes
    assert live.cli("unpatch", "--wait", "live-price").code == 0
    assert r.wait(60) == 0, r.err()


def test_unpatch_waits_for_a_thread_inside_and_keeps_its_memory(
        progs: tuple[Path, Path, Path], live: Live) -> None:
    """A worker asleep inside the new function when the patch is disabled:
    the unpatching transition waits for it (blocked "in price_v2", the
    consistency model; it is inside 1.5 s of every 1.5 s + 1 ms, so only
    force ends the transition), and once forced the patch's memory is kept
    until no thread can be in it (the deferred free)."""
    target, _price, slow = progs
    r, pid, new = _run_patched(live, target, slow, lines=120)
    time.sleep(0.3)          # the worker is now asleep inside price_v2
    res = live.cli("unpatch", "live-slow", "--json")
    assert res.code == 0, res.err
    j = res.json()
    assert j["memory_freed"] is False and j["transition"] is True, j
    assert any("in price_v2" in b["reason"] for b in j["blocked"]), j
    # A wait with a bound (what --wait SECONDS sends): the controller answers
    # at the bound, still in transition, with what holds it.
    t0 = time.monotonic()
    waited = request(r.info()["socket"], {"op": "wait", "name": "live-slow", "timeout": 0.4})
    assert 0.35 < time.monotonic() - t0 < 5
    assert waited["transition"] is True and any("in price_v2" in b["reason"]
                                                for b in waited["blocked"]), waited
    (t,) = live.cli("status", "--json").json()["targets"]
    assert t["transition"]["target"] == "unpatched" and t["all_stop"] is True
    assert _mapped(pid, target, new)
    assert live.cli("force", "live-slow").code == 0
    (t,) = live.cli("status", "--json").json()["targets"]
    assert t["transition"] is None and t["deferred_frees"] == ["live-slow"]
    assert _mapped(pid, target, new)
    text = live.cli("status").out
    assert "writes stop all threads" in text
    assert "kept until no thread can be in them: live-slow" in text
    # The worker wakes up 1.5 s after its call and returns through the kept
    # code: had the memory been freed, it would return into unmapped memory
    # and the program would die.
    time.sleep(1.5)
    assert live.cli("status").code == 0
    assert r.wait(60) == 0, r.err()
    prices = target_prices(r.out())
    assert prices[-1] == 1000, prices
