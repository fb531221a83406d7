"""Live processes end to end through the real CLI (issue 5): ``armlp run``
under qemu-arm in the background, ``armlp patch``/``unpatch``/``status`` as
separate processes, refusals that leave the target's memory unchanged,
faults (the program exits mid-command, a client goes away, the controller or
qemu is killed) and the control socket's privacy.

Every test gets its own runtime directory (``ARMLP_RUNTIME_DIR``), so the
controllers of parallel tests never see each other, and every process a
test starts is killed (by process group) in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from armlp.build import build_program
from armlp.control.protocol import request
from armlp.control.qemu_live import first_address
from armlp.elf.image import ElfImage
from armlp.machine.qemu import HostMemory
from armlp.toolchain import patch_cflags, tool

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
ARMLP = [sys.executable, "-m", "armlp.cli.main"]

#: live_service.c's prices for 10, 11 and 12 items, before and after the fix.
OLD = (1030, 1144, 1260)
NEW = (927, 1030, 1134)
SERVICE_LINE = re.compile(r"^line (\d+): price\(10\) = (\d+), price\(11\) = (\d+), "
                          r"price\(12\) = (\d+)$")
TARGET_LINE = re.compile(r"^line (\d+): price=(\d+) untraced=(\d+)$")

#: Runs a subprocess (Python) that becomes the subreaper of what it starts:
#: when `armlp run` is SIGKILLed its orphaned qemu-arm is reparented to this
#: process, which reaps it and reports every exit status it collected.
REAPER = r"""
import ctypes, json, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
out = open(sys.argv[1], "w")
child = subprocess.Popen(sys.argv[2:])
statuses = {}
while True:
    try:
        pid, st = os.wait()
    except ChildProcessError:
        break
    statuses[pid] = os.waitstatus_to_exitcode(st)
out.write(json.dumps({"child": child.pid, "statuses": statuses}))
out.close()
"""


# --- building ------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    service: Path       # examples/programs/live_service.c
    fix: Path           # examples/patches/fix_price.c, bound to service
    target: Path        # tests/programs/live_target.c
    price: Path         # tests/patches/live_price.c, bound to target
    missing: Path       # calls a function target lacks
    untraced: Path      # replaces a no_instrument_function function
    other: Path         # live_price.c bound to service's build-id
    host: Path          # live_price.c built by the host's gcc


def _patch(src: Path, program: Path, out: Path) -> Path:
    build_id = ElfImage(program).build_id
    subprocess.run([tool("gcc"), *patch_cflags(build_id), "-c", str(src), "-o", str(out)],
                   check=True)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    d = tmp_path_factory.mktemp("live")
    service = build_program([REPO / "examples" / "programs" / "live_service.c"],
                            d / "live_service", freestanding=False, ldflags=["-pthread"])
    target = build_program([TESTS / "programs" / "live_target.c"], d / "live_target",
                           freestanding=False, cflags=["-pthread"], ldflags=["-pthread"])
    patches = TESTS / "patches"
    host = d / "host.o"
    subprocess.run(["gcc", f"-I{REPO / 'src' / 'armlp' / 'include'}", "-c",
                    str(patches / "live_price.c"), "-o", str(host)], check=True)
    return Built(
        service=service,
        fix=_patch(REPO / "examples" / "patches" / "fix_price.c", service, d / "fix.o"),
        target=target,
        price=_patch(patches / "live_price.c", target, d / "price.o"),
        missing=_patch(patches / "live_missing.c", target, d / "missing.o"),
        untraced=_patch(patches / "live_untraced.c", target, d / "untraced.o"),
        other=_patch(patches / "live_price.c", service, d / "other.o"),
        host=host,
    )


# --- running -----------------------------------------------------------------------


@dataclass
class Cli:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Run:
    """One background ``armlp run`` (or anything else) with its output in files."""

    def __init__(self, live: Live, name: str, cmd: list[str]) -> None:
        self.live = live
        self.out_path = live.dir / f"{name}.out"
        self.err_path = live.dir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=live.env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.out_path.read_text()

    def err(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def info(self, timeout: float = 20.0) -> dict[str, Any]:
        """The target's info.json once its controller serves (controller_pid
        is this process, or a child of it for the reaper)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in self.live.runtime.glob("*/info.json"):
                try:
                    data: dict[str, Any] = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                if data["controller_pid"] in (self.pid, *_children(self.pid)):
                    return data
            if self.proc.poll() is not None:
                pytest.fail(f"armlp run ended ({self.proc.returncode}) before serving:\n"
                            f"{self.err()}")
            time.sleep(0.02)
        pytest.fail(f"no controller after {timeout} s:\n{self.err()}")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class Live:
    """A private runtime directory and the processes of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.runtime = tmp_path / "rt"
        self.env = {**os.environ, "ARMLP_RUNTIME_DIR": str(self.runtime),
                    "PYTHONPATH": str(REPO / "src")}
        self.runs: list[Run] = []

    def run(self, name: str, program: Path, *args: str, options: tuple[str, ...] = ()
            ) -> Run:
        r = Run(self, name, [*ARMLP, "run", *options, str(program), *args])
        self.runs.append(r)
        return r

    def reaped(self, name: str, program: Path, *args: str) -> tuple[Run, Path]:
        """``armlp run`` under the subreaper (see REAPER)."""
        report = self.dir / f"{name}.reaped"
        r = Run(self, name, [sys.executable, "-c", REAPER, str(report), *ARMLP, "run",
                             str(program), *args])
        self.runs.append(r)
        return r, report

    def cli(self, *args: str | Path, timeout: float = 60.0) -> Cli:
        p = subprocess.run([*ARMLP, *map(str, args)], capture_output=True, text=True,
                           env=self.env, timeout=timeout, check=False)
        return Cli(p.returncode, p.stdout, p.stderr)

    def kill_all(self) -> None:
        for r in self.runs:
            if r.proc.poll() is None or _group_alive(r.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.proc.wait(10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    lv = Live(tmp_path)
    try:
        yield lv
    finally:
        lv.kill_all()


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_line_error(res: Cli) -> str:
    """The client failed with exit 2 and exactly one line ``armlp: error: ...``."""
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.err
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("armlp: error: "), res.err
    return lines[0]


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Exception" not in text, text


def service_values(out: str) -> list[tuple[int, ...]]:
    rows: list[tuple[int, ...]] = []
    for ln in out.splitlines():
        m = SERVICE_LINE.match(ln)
        if m:
            assert int(m.group(1)) == len(rows), out
            rows.append(tuple(int(g) for g in m.groups()[1:]))
    return rows


def target_prices(out: str) -> list[int]:
    rows: list[int] = []
    for ln in out.splitlines():
        m = TARGET_LINE.match(ln)
        if m:
            assert int(m.group(1)) == len(rows), out
            assert int(m.group(3)) == 10, ln         # untraced(5) never changes
            rows.append(int(m.group(2)))
    return rows


def phases(rows: list[tuple[int, ...]]) -> list[str]:
    """'old', 'new' or 'mixed' per line; any other value fails."""
    out = []
    for row in rows:
        for i, v in enumerate(row):
            assert v in (OLD[i], NEW[i]), f"unexpected value {v} in {row}"
        out.append("old" if row == OLD else "new" if row == NEW else "mixed")
    return out


def collapse(seq: list[str]) -> list[str]:
    out: list[str] = []
    for s in seq:
        if not out or out[-1] != s:
            out.append(s)
    return out


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
    assert "patch fix-price enabled" in a.err() and "patch fix-price disabled" in a.err()
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
    run = live.run("t", built.target, "200", "50")
    info = run.info()
    wait_until("a line", lambda: bool(target_prices(run.out())))
    os.kill(info["pid"], signal.SIGKILL)                  # qemu-arm, not the controller
    code = run.wait()
    assert code != 0
    err = run.err()
    no_traceback(err)
    last = err.splitlines()[-1]
    assert last.startswith("armlp: error: ") and "qemu" in last, err
    assert [ln for ln in err.splitlines() if not ln.startswith("[armlp] ")] == [last]
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


# --- freeing a disabled patch (all threads stopped, registers and stacks scanned) ---------


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("free")
    target = build_program([TESTS / "programs" / "live_target.c"], d / "live_target",
                           freestanding=False, cflags=["-pthread"], ldflags=["-pthread"])
    return (target, _patch(TESTS / "patches" / "live_price.c", target, d / "price.o"),
            _patch(TESTS / "patches" / "live_slow.c", target, d / "slow.o"))


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


def _run_patched(live: Live, target: Path, patch: Path) -> tuple[Run, int, int]:
    """live_target running with *patch* applied: the run, qemu's pid, and the
    address of the patch's new function."""
    r = live.run("t", target, "60", "50")
    pid = r.info()["pid"]
    wait_until("2 lines", lambda: len(target_prices(r.out())) >= 2)
    assert live.cli("patch", patch).code == 0
    return r, pid, _new_address(live)


def test_unpatch_frees_the_memory_no_thread_is_in(progs: tuple[Path, Path, Path],
                                                  live: Live) -> None:
    target, price, _slow = progs
    r, pid, new = _run_patched(live, target, price)
    wait_until("patched lines", lambda: 1001 in target_prices(r.out()))
    res = live.cli("unpatch", "live-price", "--json")
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


def test_unpatch_defers_the_free_while_a_thread_is_inside(progs: tuple[Path, Path, Path],
                                                          live: Live) -> None:
    target, _price, slow = progs
    r, pid, new = _run_patched(live, target, slow)
    time.sleep(0.3)          # the worker is now asleep inside price_v2
    res = live.cli("unpatch", "live-slow", "--json")
    assert res.code == 0, res.err
    assert res.json()["memory_freed"] is False
    st = live.cli("status", "--json")
    (t,) = st.json()["targets"]
    assert t["deferred_frees"] == ["live-slow"] and t["all_stop"] is True
    assert _mapped(pid, target, new)
    text = live.cli("status").out
    assert "writes stop all threads" in text
    assert "kept until no thread can be in them: live-slow" in text
    # The worker wakes up 1.5 s after its call and returns through the kept
    # code: had the memory been freed, it would return into unmapped memory
    # and the program would die.  (Whether a later request frees it depends
    # on stale copies of its addresses in the worker's stack: the scan is
    # conservative.)
    time.sleep(1.5)
    assert live.cli("status").code == 0
    assert r.wait(60) == 0, r.err()
    prices = target_prices(r.out())
    assert prices[-1] == 1000, prices
