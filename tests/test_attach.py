"""``armlp attach``: a program already waiting under ``qemu-arm -g``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from armlp.program_build import build_program
from armlp.toolchain import patch_cflags, tool

HERE = Path(__file__).resolve().parent
ARMLP = [sys.executable, "-m", "armlp.cli.main"]


def test_attach_to_a_waiting_program_and_patch_it(tmp_path: Path) -> None:
    prog = build_program([HERE / "programs" / "live_target.c"], tmp_path / "live_target",
                         freestanding=False, ldflags=["-pthread"])
    from armlp.elf.image import ElfImage
    patch = tmp_path / "price.o"
    subprocess.run([tool("gcc"), *patch_cflags(ElfImage(prog).build_id), "-c",
                    str(HERE / "patches" / "live_price.c"), "-o", str(patch)], check=True)
    sock = tmp_path / "stub.sock"
    env = dict(os.environ, ARMLP_RUNTIME_DIR=str(tmp_path / "rt"))
    # 30 lines 100 ms apart: the patch, due 0.6 s in, has 2.4 s to finish
    # before the program ends (1.5 s was not enough on a loaded machine:
    # "patch failed: stub connection lost", the program done first).
    qemu = subprocess.Popen(["qemu-arm", "-g", str(sock), str(prog), "30", "100", "7"],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "qemu-arm did not create its stub socket"
            time.sleep(0.01)
        ctl = subprocess.Popen([*ARMLP, "attach", f"unix:{sock}", str(prog),
                                "--patch", f"{patch}@0.6"], env=env,
                               stderr=subprocess.PIPE, text=True)
        assert qemu.stdout is not None
        out = qemu.stdout.read()        # to the end, the process not reaped yet:
        # the controller ends with the program and reads its status (the stub
        # reports none behind armlp's shut door) before qemu's parent reaps it
        assert ctl.wait(timeout=30) == 7
        assert qemu.wait(timeout=30) == 7
        err = ctl.stderr.read() if ctl.stderr else ""
        assert "patch live-price enabled" in err and "Traceback" not in err
    finally:
        for p in (qemu,):
            if p.poll() is None:
                p.kill()
    prices = [int(ln.split("price=")[1].split()[0]) for ln in out.splitlines()
              if ln.startswith("line")]
    assert len(prices) == 30 and prices[0] == 1000 and prices[-1] == 1001
    assert prices == sorted(prices) and set(prices) == {1000, 1001}


def test_attach_bad_address(tmp_path: Path) -> None:
    prog = build_program([HERE / "programs" / "live_target.c"], tmp_path / "lt",
                         freestanding=False, ldflags=["-pthread"])
    res = subprocess.run([*ARMLP, "attach", "nonsense", str(prog)], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "expected unix:PATH or HOST:PORT" in res.stderr
