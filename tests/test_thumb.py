"""Thumb functions are patched like ARM ones (issue 12, item 3): ``armlp
verify`` proves the redirect of every patchable Thumb function of the
corpus at every -O level, of Debian armhf's Thumb-2 build of zlib and of a
hard-float program, on the generic path (the regs trampoline, entered
with ``blx`` from the Thumb site) and the fast path (a T32 trampoline the
site reaches with ``b.w``); the site words armlp writes are the ones the
T32 encoding gives; and a Thumb function whose prologue armlp does not
read stays unpatchable with its reason."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from armlp.elf.image import ElfImage
from armlp.machine.emulator import Emulator
from armlp.target import Target
from armlp.toolchain import patch_cflags
from conftest import CORPUS, OLEVELS, Builder, armlp, cross
from zlib_build import ZLIB_CFLAGS, ZLIB_DIR, zlib_sources

HF = "arm-linux-gnueabihf-gcc"
#: The corpus's Thumb builds: Debian armhf's (Thumb-2, hard-float) and
#: armel's (-mthumb there is Thumb-1 code, which armlp rewrites with the same
#: T32 instructions: an ARMv7 CPU, as qemu-arm's, runs both); and armhf's
#: ARM build beside them.
BUILDS = {"armhf-thumb2": (HF, ("-mthumb", "-pg")),
          "armel-thumb1": ("", ("-mthumb", "-pg")),
          "armhf-arm": (HF, ("-marm", "-pg", "-mapcs-frame"))}


def verify(path: Path) -> dict[str, Any]:
    res = armlp("verify", "--json", path)
    assert res.code == 0, (res.out[-2000:], res.err)
    doc: dict[str, Any] = json.loads(res.out)
    return doc


def library(builder: Builder, name: str, gcc: str, flags: tuple[str, ...],
            sources: list[Path], extra: tuple[str, ...] = ()) -> Path:
    """*sources* as a shared library (verify maps a library's code)."""
    return builder.build(name, [gcc or cross("gcc"), *flags, *extra, "-fPIC", "-shared",
                                *map(str, sources), "-o", "{out}"], sources)


@pytest.mark.parametrize("olevel", OLEVELS)
@pytest.mark.parametrize("build", list(BUILDS))
def test_corpus_every_patchable_function_verified(builder: Builder, build: str,
                                                  olevel: str) -> None:
    gcc, flags = BUILDS[build]
    lib = library(builder, f"corpus-{build}{olevel}.so", gcc, (*flags, olevel),
                  [CORPUS / "funcs.c", CORPUS / "other.c"])
    doc = verify(lib)
    s, funcs = doc["summary"], doc["functions"]
    thumb = "thumb" in build
    assert [f["name"] for f in funcs if not f["verified"]] == []
    assert s["failed"] == 0 and s["verified"] == s["patchable"] == len(funcs)
    # Every function with a site is proven or named with its reason; most
    # are proven (Thumb: all but the large frames' literal-pool loads).
    assert s["patchable"] + s["skipped"] == s["with_mcount_site"]
    assert s["patchable"] >= 0.7 * s["with_mcount_site"], doc["skipped"]
    assert {k["reason"] for k in doc["skipped"]} <= {"unknown_instruction"}
    # A Thumb entry is never rewritten: no entry path, the other two proven.
    paths = ["generic", "fast"] if thumb else ["generic", "fast", "entry"]
    for f in funcs:
        assert list(f["paths"]) == paths, f
        counts = {k: r["instructions"] for k, r in f["paths"].items()}
        assert 20 < counts["generic"] < 400 and counts["fast"] < counts["generic"], f


@pytest.mark.slow
def test_zlib_thumb2_library_every_patchable_function_verified(builder: Builder) -> None:
    """Debian armhf's default code for a real library: zlib, Thumb-2,
    hard-float, -O2, as libz.so.1."""
    lib = library(builder, "libz-thumb2.so.1", HF, ("-mthumb", "-pg", "-O2"),
                  zlib_sources(), (f"-I{ZLIB_DIR}", *ZLIB_CFLAGS))
    doc = verify(lib)
    s, funcs = doc["summary"], doc["functions"]
    assert len(funcs) > 50 and [f["name"] for f in funcs if not f["verified"]] == []
    assert s["failed"] == 0 and s["patchable"] >= 0.9 * s["with_mcount_site"], doc["skipped"]
    assert {"deflate", "inflate", "longest_match", "adler32"} <= {f["name"] for f in funcs}


def test_hard_float_thumb2_program_keeps_the_vfp_arguments(builder: Builder) -> None:
    """s0-s15 and FPSCR at the new function are the caller's, on both
    paths, for Thumb functions with VFP arguments (the proof compares them)."""
    src = Path(__file__).parent / "programs" / "hardfloat.c"
    prog = builder.build("hardfloat-thumb2", [HF, "-mthumb", "-pg", "-O2", "-static",
                                              str(src), "-o", "{out}"], [src])
    doc = verify(prog)
    proven = {f["name"] for f in doc["functions"] if f["verified"]}
    assert {"mix", "scale", "main"} <= proven and doc["summary"]["failed"] == 0


def test_site_words_are_t32(builder: Builder) -> None:
    """What a Thumb site holds in each state, read back from the emulated
    program's memory: the NOP ``add.w sp, sp, #4``; ``blx`` to the ARM
    regs trampoline (bit 0 of lr set: the trampoline returns to Thumb)."""
    src = CORPUS / "thumb2.c"
    lib = library(builder, "thumb2.so", HF, ("-mthumb", "-pg", "-O2"), [src])
    target = Target.emulate(lib, code_only=True)
    emu = target.machine
    assert isinstance(emu, Emulator)
    ft = target.ftrace
    rec = ft.find_function("bare_leaf")
    assert rec.thumb and rec.ip % 4 == 2           # a halfword-aligned site
    ft.ftrace_init()
    assert emu.read(rec.ip, 4) == bytes.fromhex("0df1040d")      # add.w sp, sp, #4
    assert emu.read(rec.report.fn.address, 2) == bytes.fromhex("00b5")    # push {lr}
    from armlp.ftrace.core import FtraceOps
    from armlp.runtime.layout import FTRACE_OPS_FL_SAVE_REGS
    ops = FtraceOps("t", target.runtime.symbol("armlp_redirect_func"),
                    flags=FTRACE_OPS_FL_SAVE_REGS, private=0, ips={rec.ip})
    ft.register_ftrace_function(ops)
    hw1, hw2 = struct.unpack("<HH", emu.read(rec.ip, 4))
    assert hw1 >> 11 == 0b11110 and hw2 & 0xD001 == 0xC000      # BLX (immediate), T2
    ft.unregister_ftrace_function(ops)
    assert emu.read(rec.ip, 4) == bytes.fromhex("0df1040d")


def test_unknown_thumb_prologue_is_refused_with_its_instruction(builder: Builder) -> None:
    """armel's Thumb-1 code for a frame over 1 KiB loads its size from a
    literal pool: not a prologue armlp can undo; scan says which
    instruction stops it."""
    obj = builder.compile(CORPUS / "funcs.c", ["-mthumb", "-pg", "-O2"], name="funcs-t1.o")
    res = armlp("scan", "--function", "frame_4k", obj)
    assert res.code == 0 and "not patchable" in res.out
    assert "Thumb prologue instruction 'ldr r7, [pc" in res.out


def test_emulator_traces_and_patches_a_thumb2_glibc_program(builder: Builder,
                                                            tmp_path: Path) -> None:
    """armlp's emulator runs a static Thumb-2 armhf glibc program: the
    tracer sees its Thumb functions, and a Thumb patch with hard-float
    arguments (d0, s0-s3) replaces one of them from the first call."""
    src = Path(__file__).parent / "programs" / "hardfloat.c"
    prog = builder.build("hardfloat-thumb2", [HF, "-mthumb", "-pg", "-O2", "-static",
                                              str(src), "-o", "{out}"], [src])
    res = armlp("trace", prog, "--filter", "mix", "--filter", "scale")
    assert res.code == 0, res.err
    assert "5.750 8.000\n" in res.err                 # the program's own output
    assert res.out.startswith("mix <- main\nscale <- main\n# 2 calls traced")
    fix = tmp_path / "fix.c"
    fix.write_text('#include <armlp/livepatch.h>\nARMLP_PATCH("scale-fix");\n'
                   "float scale_v2(float x, float y, float z, float w, double e)\n"
                   "{ return x * y * z * w + (float)e; }\n"
                   "ARMLP_REPLACE(scale, scale_v2);\n")
    patch = tmp_path / "fix.o"
    subprocess.run([HF, *patch_cflags(ElfImage(prog).build_id, thumb=True), "-c", str(fix),
                    "-o", str(patch)], check=True)
    # The program writes to the process's own stdout: a child's, captured.
    run = subprocess.run([sys.executable, "-m", "armlp.cli.main", "run", "--machine", "emu",
                          str(prog), "--patch", str(patch)], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "5.750 29.000\n"              # scale: 1*2*3*4 + 5


def test_a_patch_of_an_unreadable_thumb_prologue_is_refused(builder: Builder,
                                                            tmp_path: Path) -> None:
    """Replacing a Thumb function whose prologue armlp cannot undo (it sets
    r3 with a movw before its mcount site) is refused before any write, in
    one line that names the function and the instruction."""
    src = Path(__file__).parent / "programs" / "thumb_odd_prologue.c"
    prog = builder.build("thumb-odd-prologue", [HF, "-mthumb", "-pg", "-O2", "-static",
                                                str(src), "-o", "{out}"], [src])
    fix = tmp_path / "fix.c"
    fix.write_text('#include <armlp/livepatch.h>\nARMLP_PATCH("odd");\n'
                   "int odd_prologue_v2(void) { return 8; }\n"
                   "ARMLP_REPLACE(odd_prologue, odd_prologue_v2);\n")
    patch = tmp_path / "fix.o"
    subprocess.run([HF, *patch_cflags(ElfImage(prog).build_id, thumb=True), "-c", str(fix),
                    "-o", str(patch)], check=True)
    res = armlp("run", "--machine", "emu", prog, "--patch", patch)
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert "odd_prologue is not patchable" in res.err
    assert "Thumb prologue instruction 'movw r3" in res.err


def test_a_thumb2_program_without_pg_is_refused_with_the_fix(builder: Builder) -> None:
    """Debian armhf's default build has no mcount site: the one line says
    so and which flags give one."""
    src = Path(__file__).parent / "programs" / "hardfloat.c"
    prog = builder.build("hardfloat-nopg", [HF, "-mthumb", "-O2", "-static", str(src), "-o",
                                            "{out}"], [src])
    res = armlp("run", "--machine", "emu", prog)
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert "not built with -pg" in res.err and "-mthumb -funwind-tables" in res.err
