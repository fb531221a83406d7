"""Dynamically linked programs under ``armlp run`` (issue 12, in part): the
sysroot comes from the program's interpreter, the first system call uses
ld.so's svc (the program's text has none), mcount is reached through the
PLT, for the program's sites and the patch's own; status shows the sites, a
patch goes in and out, and the program ends normally.  The same for a
position-independent executable (what Debian's gcc builds by default),
whose load bias comes from the running program: under ``armlp run`` and
``armlp attach``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from armlp.analysis.scan import scan
from armlp.elf.image import ElfImage
from conftest import Builder
from live_helpers import TESTS, Live, compile_patch, wait_until

pytestmark = pytest.mark.slow

FLAGS = ["-marm", "-pg", "-mapcs-frame", "-O2"]


def dynamic(builder: Builder, link: str, gcc: str = "") -> Path:
    """live_target, dynamically linked (*link* -pie or -no-pie) by armel's
    compiler, or by *gcc* (armhf's: ARM-mode -pg code against Debian's
    Thumb-2 libc, whose __gnu_mcount_nc the PLT reaches)."""
    src = TESTS / "programs" / "live_target.c"
    pic = "-fPIE" if link == "-pie" else "-fno-pie"
    if not gcc:
        obj = builder.compile(src, [*FLAGS, pic], name=f"live_target{link}.o")
        return builder.link([obj], [link, "-pthread"], f"live_target_dyn{link}")
    obj = builder.build(f"live_target{link}-hf.o", [gcc, *FLAGS, pic, "-c", str(src), "-o",
                                                    "{out}"], [src])
    return builder.build(f"live_target_dyn{link}-hf", [gcc, str(obj), link, "-pthread", "-o",
                                                       "{out}"], [obj])


@pytest.mark.parametrize(("link", "gcc"), [("-no-pie", ""), ("-pie", ""),
                                          ("-pie", "arm-linux-gnueabihf-gcc")])
def test_dynamic_program_runs_shows_its_sites_and_is_patched(builder: Builder, live: Live,
                                                             link: str, gcc: str) -> None:
    prog = live.dir / "ltd"          # a short name: the control socket's path holds it
    shutil.copy(dynamic(builder, link, gcc), prog)
    r = live.run("dyn", prog, "400", "20")
    info = r.info()
    st = live.cli("status", "--target", info["id"], "--json").json()["targets"][0]
    assert st["sites"]["total"] == 3            # main, worker, price: through the PLT
    entries = {s["function"]: s["entry"] for s in st["runtime"]["sites"]}
    linked = {f.name: f.address for f in ElfImage(prog).symbols.functions()}
    bias = entries["price"] - linked["price"]
    # Where the program runs: a PIE wherever qemu's loader put it, the same
    # distance from its link address for every function.
    assert (bias != 0) == (link == "-pie")
    assert {name: entries[name] - linked[name] for name in entries} == dict.fromkeys(entries, bias)
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
    assert r.wait(60) == 0, r.err()
    out = r.out()
    assert out.endswith("done\n") and "price=1001" in out


def test_pie_waiting_under_a_stub_is_attached_and_patched(builder: Builder,
                                                          tmp_path: Path) -> None:
    prog = tmp_path / "ltp"          # a short name: the control socket's path holds it
    shutil.copy(dynamic(builder, "-pie"), prog)
    patch = compile_patch(TESTS / "patches" / "live_price.c", prog, tmp_path / "p.o")
    sock = tmp_path / "stub.sock"
    qemu = subprocess.Popen(["qemu-arm", "-L", "/usr/arm-linux-gnueabi", "-g", str(sock),
                             str(prog), "30", "50", "7"], stdout=subprocess.PIPE, text=True)
    try:
        wait_until("the stub's socket", sock.exists)
        ctl = subprocess.Popen([sys.executable, "-m", "armlp.cli.main", "attach",
                                f"unix:{sock}", str(prog), "--patch", f"{patch}@0.6"],
                               env=dict(os.environ, ARMLP_RUNTIME_DIR=str(tmp_path / "rt")),
                               stderr=subprocess.PIPE, text=True)
        assert qemu.stdout is not None
        out = qemu.stdout.read()        # to the end; reaped only after the controller
        status = ctl.wait(timeout=30)
        err = ctl.stderr.read() if ctl.stderr else ""
        assert (qemu.wait(timeout=30), status) == (7, 7), err
        assert "patch live-price enabled" in err and "Traceback" not in err
    finally:
        if qemu.poll() is None:
            qemu.kill()
    prices = [int(ln.split("price=")[1].split()[0]) for ln in out.splitlines()
              if ln.startswith("line")]
    assert len(prices) == 30 and prices[0] == 1000 and prices[-1] == 1001
    assert prices == sorted(prices)


def test_a_pie_rebased_is_the_same_image_moved(builder: Builder) -> None:
    """ElfImage.rebased moves every address a PIE's tables hold and nothing
    else: the scan of the moved image is the scan of the file, moved."""
    image = ElfImage(dynamic(builder, "-pie"))
    assert image.kind == "pie"
    bias = 0x40000000
    moved = image.rebased(bias)
    assert moved.entry == image.entry + bias
    assert [(s.name, s.addr + bias if s.is_alloc else s.addr) for s in image.sections] == \
        [(s.name, s.addr) for s in moved.sections]
    assert [s.vaddr + bias for s in image.segments] == [s.vaddr for s in moved.segments]
    before, after = scan(image), scan(moved)
    assert len(before.functions) == len(after.functions) > 0
    for a, b in zip(before.functions, after.functions, strict=True):
        assert (a.fn.name, a.fn.address + bias, a.site and a.site + bias, a.verdict.rule) == \
            (b.fn.name, b.fn.address, b.site, b.verdict.rule)
    assert {"main", "price", "worker"} <= {r.fn.name for r in after.functions if r.site}


def test_a_gprof_linked_program_runs_and_is_served(builder: Builder, live: Live) -> None:
    """Linked with -pg (gcrt1.o), a program's SIGPROF timer fires 100 times a
    second in every thread; behind the stub's shut door (armlp.machine.door)
    none of them enters qemu's stub, so armlp serves the program while the
    timer runs, without the warning it gives when it has no door."""
    obj = builder.compile(TESTS / "programs" / "live_target.c", [*FLAGS, "-fno-pie"],
                          name="live_target-gprof.o")
    for flags in (["-no-pie", "-pg"], ["-static", "-pg"], ["-no-pie"]):
        prog = live.dir / "lg"
        shutil.copy(builder.link([obj], [*flags, "-pthread"], f"lt-gprof{''.join(flags)}"),
                    prog)
        # 60 lines, 3 s: five status commands fit on a loaded machine.
        r = live.run(f"g{''.join(flags)}", prog, "60", "50")
        target = r.info()["id"]
        for _ in range(5):
            assert live.cli("status", "--target", target).code == 0
        assert r.wait(60) == 0, r.err()
        assert "warning" not in r.err(), flags


def test_sysroot_option_gives_the_root_a_dynamic_program_runs_from(builder: Builder,
                                                                   live: Live) -> None:
    """``armlp run --sysroot DIR``: the dynamic linker and libc come from
    DIR (a copy of Debian's armhf root in a place qemu-arm would never look
    for by itself), qemu-arm is given it, and the program is patched as
    with the default; a root without the program's dynamic linker, a static
    program and the emulator are refused in one line."""
    prog = live.dir / "lts"
    shutil.copy(dynamic(builder, "-pie", "arm-linux-gnueabihf-gcc"), prog)
    root = live.dir / "root"
    subprocess.run(["cp", "-rs", "/usr/arm-linux-gnueabihf", str(root)], check=True)
    r = live.run("sysroot", prog, "200", "20", options=("--sysroot", str(root)))
    info = r.info()
    cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"-L") + 1] == str(root).encode()
    patch = compile_patch(TESTS / "patches" / "live_price.c", prog, live.dir / "p.o")
    res = live.cli("patch", patch, "--target", info["id"], "--wait", "10")
    assert res.code == 0, (res.out, res.err)
    wait_until("the patched price", lambda: "price=1001" in r.out())
    assert r.wait(60) == 0, r.err()
    bad: list[tuple[list[str | Path], str]] = [
        (["--sysroot", live.dir / "nowhere", prog], "not a directory"),
        (["--sysroot", "/usr/arm-linux-gnueabi", prog], "has no /lib/ld-linux-armhf.so.3"),
        (["--sysroot", root, "--machine", "emu", prog], "--machine qemu")]
    for args, message in bad:
        res = live.cli("run", *args)
        assert res.code == 2 and res.err.count("\n") == 1 and message in res.err, res.err
