"""``armlp attach`` to a real gdbserver (issue 5: "a device's gdbserver").

gdbserver cannot run under qemu-user (no ptrace emulation), so the device is
a whole 32-bit ARM Linux: Debian's armhf kernel under qemu-system-arm,
booting an initramfs that runs Debian's gdbserver on the test's program
(tests/vm/gdbserver-vm.sh; ``./run.sh setup`` fetches the packages).  The
program (tests/programs/threads.c: four threads calling work() until 20 s
have passed, exit status 3) is patched, checked, unpatched, and its exit
status comes back through ``attach``.  Unlike qemu-user's stub, gdbserver is
all-stop: armlp frees a disabled patch's memory there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from armlp.control.protocol import request
from armlp.elf.image import ElfImage
from conftest import program_and_patch

HERE = Path(__file__).resolve().parent
VM = HERE / "vm" / "gdbserver-vm.sh"
ARMLP = [sys.executable, "-m", "armlp.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """The program and its patch, and the port of a gdbserver serving it."""
    prog, fix = program_and_patch(HERE / "programs" / "threads.c",
                                  HERE / "patches" / "threads_work.c", tmp_path)
    port, run = _free_port(), tmp_path / "vm"
    boot = subprocess.run([str(VM), "boot", str(prog), str(port), str(run)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert boot.returncode == 0 and f"READY {port}" in boot.stdout, boot.stderr
    try:
        yield prog, fix, port
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((run / "qemu.pid").read_text()), 9)


def _counters(sock: str, address: int) -> list[int]:
    data = bytes.fromhex(request(sock, {"op": "read", "address": address, "size": 16})["data"])
    return list(struct.unpack("<4I", data))


@pytest.mark.slow
def test_attach_patch_unpatch_through_a_real_gdbserver(device: tuple[Path, Path, int],
                                                       tmp_path: Path) -> None:
    prog, fix, port = device
    env = {**os.environ, "ARMLP_RUNTIME_DIR": str(tmp_path / "rt")}
    att = subprocess.Popen([*ARMLP, "attach", f"127.0.0.1:{port}", str(prog)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ARMLP, *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    try:
        deadline = time.monotonic() + 60
        while True:
            st = cli("status", "--json")
            targets = json.loads(st.stdout)["targets"] if st.returncode == 0 else []
            if targets:
                break
            assert att.poll() is None, att.communicate()[1]
            assert time.monotonic() < deadline, "the controller never came up"
            time.sleep(0.2)
        (t,) = targets
        assert t["all_stop"] is True and t["sites"]["total"] == 3   # main, worker, work
        sock = t["target"]["socket"]
        counters = int(ElfImage(prog).symbols.by_name["counters"][0].value)

        res = cli("patch", str(fix), "--json", "--wait", "10")
        if res.returncode == 1:        # the same for the enable
            assert cli("force", "work-fix").returncode == 0
        else:
            assert res.returncode == 0, res.stderr
        pinned = [0xC0DE0000 + i for i in range(4)]
        time.sleep(0.5)
        assert _counters(sock, counters) == pinned      # every thread runs work_v2
        time.sleep(0.5)
        assert _counters(sock, counters) == pinned

        res = cli("unpatch", "work-fix", "--json", "--wait", "10")
        if res.returncode == 1:
            # The workers spin through work_v2 and the handler without a
            # system call: their stacks are rarely provable, as in the
            # kernel for a CPU-bound task; force them.
            assert json.loads(res.stdout)["transition"] is True, res.stdout
            assert cli("force", "work-fix").returncode == 0
        else:
            assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 20
        while json.loads(cli("status", "--json").stdout)["targets"][0]["deferred_frees"]:
            assert time.monotonic() < deadline, "the patch's memory was never freed"
            time.sleep(0.5)
        time.sleep(0.5)
        counting = _counters(sock, counters)      # counting again
        assert all(c != p for c, p in zip(counting, pinned, strict=True))

        _out, err = att.communicate(timeout=60)      # the program ends after 20 s
    finally:
        if att.poll() is None:
            att.kill()
    assert att.returncode == 3, err
    assert "no authentication" in err and "Traceback" not in err
