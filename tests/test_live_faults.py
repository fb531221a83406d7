"""Live processes through the real CLI (issue 5), continued from
test_live.py: faults (the program exits mid-command, a client goes away,
the controller or qemu is killed) and the control socket's privacy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from live_helpers import (
    Built,
    Live,
    collapse,
    no_traceback,
    one_line_error,
    target_prices,
    wait_until,
)

# --- 3. faults ----------------------------------------------------------------------


def test_target_exits_while_patches_are_applied(built: Built, live: Live) -> None:
    # --patch P@DELAY at about the program's end (~0.5 s): applied or not,
    # the controller ends with the program's status and no traceback.
    runs = [live.run(f"d{i}", built.target, "5", "100", "3",
                     options=("--patch", f"{built.price}@{delay}"))
            for i, delay in enumerate((0.35, 0.45, 0.5, 0.55, 0.65))]
    for r in runs:
        assert r.wait() == 3, r.err()
        err = r.err()
        no_traceback(err)
        assert r.out().endswith("done\n")
        for ln in err.splitlines():
            assert ln.startswith("[armlp] "), err
        prices = target_prices(r.out())
        assert len(prices) == 5 and prices == sorted(prices) and set(prices) <= {1000, 1001}

    # Clients racing the exit: patch and unpatch until the program ends;
    # each either succeeds or fails with one line.
    r = live.run("race", built.target, "8", "50", "3")
    r.info()
    outcomes: list[Any] = []
    name = "live-price"
    while r.proc.poll() is None:
        res = live.cli("patch", built.price) if len(outcomes) % 2 == 0 else \
            live.cli("unpatch", name)
        if res.code != 0:
            one_line_error(res)
        outcomes.append(res.code)
    assert r.wait() == 3, r.err()
    no_traceback(r.err())
    assert r.out().endswith("done\n")
    assert outcomes
    assert not any((live.runtime).glob("*/ctl.sock"))


def test_client_disconnecting_mid_command(built: Built, live: Live) -> None:
    run = live.run("t", built.target, "40", "50")
    info = run.info()
    sock_path = info["socket"]
    wait_until("2 lines", lambda: len(target_prices(run.out())) >= 2)
    # A request cut in the middle, a connection closed at once, and a patch
    # request whose client goes away before the reply.
    for payload in (b'{"op": "pat', b"",
                    json.dumps({"op": "patch", "path": str(built.price)}).encode() + b"\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sock_path)
            if payload:
                s.sendall(payload)
    st = live.cli("status", "--json", "--target", info["id"])
    assert st.code == 0, st.err
    (t,) = st.json()["targets"]
    if t["patches"]:       # all of it
        (p,) = t["patches"]
        assert p["name"] == "live-price" and p["enabled"] and p["objects"][0]["patched"]
        assert [s["function"] for s in t["sites"]["in_use"]] == ["price"]
    else:                  # or none of it: it can be applied now
        assert t["sites"]["in_use"] == []
        res = live.cli("patch", built.price)
        assert res.code == 0, res.err
    wait_until("patched lines", lambda: target_prices(run.out())[-2:] == [1001, 1001])
    res = live.cli("unpatch", "live-price")
    assert res.code == 0, res.err
    assert run.wait() == 0, run.err()
    no_traceback(run.err())
    prices = target_prices(run.out())
    assert len(prices) == 40 and prices[-1] == 1000
    assert collapse([str(p) for p in prices]) == ["1000", "1001", "1000"]


@pytest.mark.slow
def test_controller_killed_leaves_the_patched_program_running(built: Built,
                                                               live: Live) -> None:
    run, report = live.reaped("t", built.target, "40", "50", "5")
    info = run.info()
    wait_until("an unpatched line", lambda: 1000 in target_prices(run.out()))
    res = live.cli("patch", built.price)
    assert res.code == 0, res.err
    wait_until("patched line", lambda: 1001 in target_prices(run.out()))
    n_killed = len(target_prices(run.out()))
    assert n_killed < 35, "the program ran too far before the kill"
    os.kill(info["controller_pid"], signal.SIGKILL)
    assert run.wait() == 0, run.err()
    reaped = json.loads(report.read_text())
    statuses = {int(k): v for k, v in reaped["statuses"].items()}
    assert statuses[info["controller_pid"]] == -signal.SIGKILL
    assert statuses[info["pid"]] == 5                    # qemu-arm: the program's status
    prices = target_prices(run.out())
    assert len(prices) == 40 and run.out().endswith("done\n")
    first = prices.index(1001)
    assert first < n_killed and prices[first:] == [1001] * (40 - first)
    assert set(prices[:first]) == {1000}
    # The dead controller's entry is not listed any more.
    assert live.cli("status").out.strip() == "no running targets"


def test_stub_connection_lost(built: Built, live: Live) -> None:
    """qemu-arm killed under armlp: the program is gone as if killed without
    armlp (its stub, behind the shut door, reports nothing): armlp ends with
    the program's status and cleans up."""
    run = live.run("t", built.target, "200", "50")
    info = run.info()
    wait_until("a line", lambda: bool(target_prices(run.out())))
    os.kill(info["pid"], signal.SIGKILL)                  # qemu-arm, not the controller
    assert run.wait() == 128 + signal.SIGKILL
    err = run.err()
    no_traceback(err)
    assert [ln for ln in err.splitlines() if not ln.startswith("[armlp] ")] == [], err
    assert not (live.runtime / info["id"]).exists()


# --- 4. security ------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", link)
        if m:
            out.add(int(m.group(1)))
    return out


def _tcp_listeners() -> set[int]:
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A":          # TCP_LISTEN
                inodes.add(int(f[9]))
    return inodes


def test_private_sockets_and_no_tcp(built: Built, live: Live) -> None:
    run = live.run("t", built.target, "40", "50")
    info = run.info()
    rt = live.runtime
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    tdir = rt / info["id"]
    assert stat.S_IMODE(tdir.stat().st_mode) == 0o700 and tdir.stat().st_uid == os.getuid()
    st = os.stat(info["socket"])
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    # qemu's stub socket is private too.
    cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes().split(b"\0")
    stub = Path(cmdline[cmdline.index(b"-g") + 1].decode())
    assert stat.S_IMODE(stub.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(stub.stat().st_mode) == 0o600
    # Nothing of the controller or qemu listens on TCP.
    mine = _socket_inodes(info["controller_pid"]) | _socket_inodes(info["pid"])
    assert mine, "no sockets found: /proc not readable?"
    assert not mine & _tcp_listeners()
    assert run.wait() == 0, run.err()


@pytest.mark.parametrize("problem", ["mode", "owner"])
def test_unsafe_runtime_dir_is_refused(built: Built, live: Live, problem: str) -> None:
    rt = live.runtime
    rt.mkdir()
    if problem == "mode":
        os.chmod(rt, 0o777)
    else:
        if os.getuid() != 0:
            pytest.skip("needs root to give the directory to another user")
        os.chown(rt, 65534, 65534)
    run = live.run("t", built.target, "3", "10")
    assert run.wait() == 2
    err = run.err()
    assert len(err.splitlines()) == 1 and err.startswith("armlp: error: "), err
    assert str(rt) in err and "private" in err
    assert "line" not in run.out()              # the program never ran
    for cmd in (["status"], ["patch", str(built.price)]):
        line = one_line_error(live.cli(*cmd))
        assert str(rt) in line
    assert os.listdir(rt) == []
