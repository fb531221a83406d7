"""Shared libraries as patch objects (issue 12, in part): zlib built as
``libz.so.1`` (``-marm -pg -mapcs-frame -O2 -fPIC``, the soname as zlib's
Makefile sets it) and ``tests/programs/zstream.c`` linked against it as a
PIE (Debian's default), run by ``armlp run`` with ``LD_LIBRARY_PATH``.

One patch changes both objects (``tests/patches/zlib_shared.c``): the
program's ``report`` (its lines say "patched") and, after
``ARMLP_OBJECT("libz.so.1")``, zlib's static ``longest_match`` (no match:
literals only), and calls libc's ``printf`` through what libc exports.
The stream stays a valid zlib stream of the same input; it is the
reference up to the patch point and larger while patched; status shows the
two objects patched, as sysfs does.  The same again as Debian armhf builds
it: library, program and patch Thumb-2 and hard-float.
"""

from __future__ import annotations

import json
import re
import subprocess
import zlib
from pathlib import Path

import pytest

from armlp.elf.image import ElfImage
from armlp.livepatch.module import read_patch
from armlp.target import Target
from armlp.toolchain import patch_cflags
from conftest import Builder, armlp, cross
from live_helpers import TESTS, Live, compile_patch, wait_until
from zlib_build import ZLIB_CFLAGS, ZLIB_DIR, zlib_input, zlib_sources

pytestmark = pytest.mark.slow

FLAGS = ["-marm", "-pg", "-mapcs-frame", "-O2"]
SYSROOT = "/usr/arm-linux-gnueabi"
HF = "arm-linux-gnueabihf-gcc"
#: Debian armel's ARM build and Debian armhf's own (Thumb-2, hard-float):
#: (compiler, flags, sysroot, patch in Thumb).
ABIS = {"armel-arm": ("", FLAGS, SYSROOT, False),
        "armhf-thumb2": (HF, ["-mthumb", "-pg", "-O2"], "/usr/arm-linux-gnueabihf", True)}


def _library(builder: Builder, abi: str = "armel-arm") -> Path:
    gcc, flags, _, _ = ABIS[abi]
    sources = zlib_sources()
    lib = builder.build(f"libz.so.1-{abi}", [gcc or cross("gcc"), *flags, "-fPIC", "-shared",
                                             "-Wl,-soname,libz.so.1", f"-I{ZLIB_DIR}",
                                             *ZLIB_CFLAGS, *sources, "-o", "{out}"], sources)
    return lib


def _program(builder: Builder, lib: Path, where: Path, abi: str = "armel-arm") -> Path:
    """zstream linked against *lib*, which is copied next to it as libz.so.1."""
    gcc, flags, _, _ = ABIS[abi]
    libdir = where / "lib"
    libdir.mkdir(exist_ok=True)
    (libdir / "libz.so.1").write_bytes(lib.read_bytes())
    obj = builder.compile(TESTS / "programs" / "zstream.c", [*flags, f"-I{ZLIB_DIR}"],
                          name=f"zstream-dyn-{abi}.o", compiler=gcc or None)
    prog = where / "zs"             # a short name: the control socket's path holds it
    subprocess.run([gcc or cross("gcc"), str(obj), str(libdir / "libz.so.1"), "-o", str(prog)],
                   check=True)
    return prog


@pytest.mark.parametrize("abi", list(ABIS))
def test_one_patch_changes_the_program_and_its_shared_zlib(builder: Builder,
                                                           live: Live, abi: str) -> None:
    gcc, _, sysroot, thumb = ABIS[abi]
    prog = _program(builder, _library(builder, abi), live.dir, abi)
    libdir = str(live.dir / "lib")
    data = zlib_input(live.dir / "in.bin", 3 << 20)
    ref = live.dir / "ref.z"
    subprocess.run(["qemu-arm", "-L", sysroot, "-E", f"LD_LIBRARY_PATH={libdir}", str(prog),
                    str(live.dir / "in.bin"), str(ref), "0"], check=True, capture_output=True,
                   timeout=120)
    reference = ref.read_bytes()
    assert zlib.decompress(reference) == data
    # Bound to the library's build (armlp cflags --target libz.so.1).
    patch = live.dir / "p.o"
    subprocess.run([gcc or cross("gcc"), *patch_cflags(ElfImage(libdir + "/libz.so.1").build_id,
                                                       thumb=thumb),
                    "-c", str(TESTS / "patches" / "zlib_shared.c"), "-o", str(patch)],
                   check=True)

    # ... and one bound to another build of it (the other ABI's), made
    # before the program starts (a fresh build of zlib takes a while).
    other = _library(builder, next(a for a in ABIS if a != abi))
    wrong = live.dir / "wrong.o"
    subprocess.run([gcc or cross("gcc"), *patch_cflags(ElfImage(other).build_id, thumb=thumb),
                    "-c", str(TESTS / "patches" / "zlib_shared.c"), "-o", str(wrong)],
                   check=True)

    live.env["LD_LIBRARY_PATH"] = libdir
    r = live.run("zs", prog, str(live.dir / "in.bin"), str(live.dir / "out.z"), "150000")
    info = r.info()
    st = live.cli("status", "--target", info["id"], "--json").json()["targets"][0]
    assert st["sites"]["total"] > 100            # the program's and libz's own
    # A patch bound to another build of libz.so.1 (the other ABI's): refused.
    res = live.cli("patch", wrong, "--target", info["id"])
    assert res.code == 2 and res.err.count("\n") == 1 and "build-id" in res.err, res.err

    wait_until("chunk 3", lambda: "chunk 3 " in r.out(), timeout=60)
    res = live.cli("patch", patch, "--target", info["id"], "--json", "--wait", "20")
    assert res.code == 0, res.err
    assert sorted(res.json()["functions"]) == ["longest_match", "report"]
    st = live.cli("status", "--target", info["id"], "--json").json()["targets"][0]
    (p,) = st["patches"]
    objects = {o["name"]: (o["patched"], [f["name"] for f in o["functions"]])
               for o in p["objects"]}
    assert objects == {"program": (True, ["report"]), "libz.so.1": (True, ["longest_match"])}
    wait_until("a patched chunk", lambda: " patched\n" in r.out(), timeout=60)
    res = live.cli("unpatch", "zlib-shared", "--target", info["id"], "--wait", "20")
    assert res.code == 0, res.err
    assert r.wait(120) == 0, r.err()

    lines = r.out().splitlines()
    patched = [ln for ln in lines if ln.endswith(" patched")]
    assert patched and lines[-1].startswith("done") and not lines[-2].endswith(" patched")
    first = int(patched[0].split()[1])            # the first chunk the new report printed
    out = (live.dir / "out.z").read_bytes()
    assert zlib.decompress(out) == data          # still the same input
    at = int(next(ln for ln in lines if ln.startswith(f"chunk {first - 1} ")).split()[-1])
    assert out[:at] == reference[:at] and out != reference
    assert len(out) > len(reference)             # literals only while patched


def test_objects_a_patch_names(builder: Builder, tmp_path: Path) -> None:
    """ARMLP_OBJECT scopes the ARMLP_REPLACEs below it in its file, 0 is
    the program again, ARMLP_REPLACE_IN names one object; a patch of a
    library the program has not loaded is refused before any write."""
    src = tmp_path / "objs.c"
    src.write_text('#include <armlp/livepatch.h>\n'
                   'ARMLP_PATCH("objs");\n'
                   'static int a(void) { return 1; }\n'
                   'static int b(void) { return 2; }\n'
                   'static int c(void) { return 3; }\n'
                   'ARMLP_OBJECT("libz.so.1");\n'
                   'ARMLP_REPLACE(longest_match, a);\n'
                   'ARMLP_OBJECT(0);\n'
                   'ARMLP_REPLACE(price, b);\n'
                   'ARMLP_REPLACE_IN("libfoo.so.2", foo, c);\n')
    prog = builder.link([builder.compile(TESTS / "programs" / "live_target.c",
                                         [*FLAGS, "-static"], name="lt-static.o")],
                        ["-static", "-pthread"], "lt-static")
    patch = compile_patch(src, prog, tmp_path / "objs.o")
    read = read_patch(patch, Target.emulate(prog).image, {})
    assert {o.name: [f.old_name for f in o.funcs] for o in read.objects} == \
        {"libz.so.1": ["longest_match"], "program": ["price"], "libfoo.so.2": ["foo"]}
    res = armlp("run", "--machine", "emu", prog, "1", "1", "--patch", patch)
    assert res.code == 2
    assert re.search(r"object '(libz\.so\.1|libfoo\.so\.2)' is not loaded in the program "
                     r"\(shared libraries: none\)", res.err)
    assert "Traceback" not in res.err


def _plugin_host(builder: Builder, where: Path, gcc: str) -> tuple[Path, Path, Path]:
    """dlopen_host and libplugin.so built by *gcc* (armel: ARM; armhf:
    Thumb-2, as Debian builds), and the patch plugin_fix.c for them."""
    thumb = gcc == HF
    flags = ABIS["armhf-thumb2" if thumb else "armel-arm"][1]
    plugin = where / "libplugin.so"
    src = TESTS / "programs" / "plugin.c"
    built = builder.build(f"libplugin-{gcc}.so", [gcc, *flags, "-fPIC", "-shared",
                                                  "-Wl,-soname,libplugin.so", str(src), "-o",
                                                  "{out}"], [src])
    plugin.write_bytes(built.read_bytes())
    host, obj = where / "dh", where / "dh.o"       # compiled with -pg, linked without
    subprocess.run([gcc, *flags, "-c", str(TESTS / "programs" / "dlopen_host.c"), "-o",
                    str(obj)], check=True)
    subprocess.run([gcc, str(obj), "-o", str(host)], check=True)
    patch = where / "p.o"
    subprocess.run([gcc, *patch_cflags(ElfImage(host).build_id, thumb=thumb), "-c",
                    str(TESTS / "patches" / "plugin_fix.c"), "-o", str(patch)], check=True)
    return host, plugin, patch


@pytest.mark.parametrize("gcc", ["arm-linux-gnueabi-gcc", HF])
def test_a_library_loaded_later_is_patched_as_it_loads(builder: Builder, live: Live,
                                                       gcc: str) -> None:
    """The patch names libplugin.so while it is not loaded (accepted, its
    object unpatched); every dlopen after that runs the new function from
    the first call; dlclose and dlopen again keep it right; unpatching
    while it is loaded gives the old one back.  armel's build is ARM code,
    armhf's Thumb-2; armel's ld.so is ARM code, armhf's Thumb (its
    _dl_debug_state gets a b.w to a Thumb veneer; its first system call
    borrows the program's ELF header for an ARM svc)."""
    host, plugin, patch = _plugin_host(builder, live.dir, gcc)
    r = live.run("dh", host, str(plugin), "30", "100000")
    info = r.info()
    wait_until("two rounds", lambda: "round 1 " in r.out())
    res = live.cli("patch", patch, "--target", info["id"], "--wait", "10")
    assert res.code == 0, res.err
    mark = r.out().count("\n")
    wait_until("three rounds patched", lambda: r.out().count("value 41") >= 3, timeout=30)
    res = live.cli("unpatch", "plugin-fix", "--target", info["id"], "--wait", "10")
    assert res.code == 0, res.err
    assert r.wait(60) == 0, r.err()
    lines = r.out().splitlines()
    assert lines[-1] == "done" and len(lines) == 31
    values = [int(ln.split()[-1]) for ln in lines[:-1]]
    # Old, then (from the first round that loaded it after the patch) new,
    # every one of them, then old again after the unpatch.
    first_new = values.index(41)
    last_new = len(values) - 1 - values[::-1].index(41)
    assert set(values[:first_new]) == {40} and first_new >= mark - 1
    assert set(values[first_new:last_new + 1]) == {41} and last_new - first_new >= 2
    assert set(values[last_new + 1:]) == {40} and last_new < len(values) - 1
    err = r.err()
    assert "library libplugin.so loaded: 1 mcount sites; patched by plugin-fix" in err
    assert "library libplugin.so unloaded (was patched by plugin-fix)" in err


def test_requests_wait_for_a_library_the_dynamic_linker_is_changing(builder: Builder,
                                                                   live: Live) -> None:
    """A program that loads and unloads a library every 5 ms is often
    mid-way through a dlopen or dlclose; a patch or unpatch that arrives
    then waits for ld.so to finish and applies to the library where it is
    now.  Before, such a request read the unmapped code (zeros) and was
    refused (6 runs in 6), and a refused unpatch left the patch on.  (Not
    without pause: a thread in ld.so, which has no unwind tables, or in
    armlp's hook has no reliable stack, and a transition waits for it; on
    a loaded machine that took longer than the 10 s of --wait.)"""
    host, plugin, patch = _plugin_host(builder, live.dir, "arm-linux-gnueabi-gcc")
    r = live.run("dh", host, str(plugin), "1000000", "5000")
    info = r.info()
    wait_until("a round", lambda: "round 1 " in r.out())
    for _ in range(10):
        for args in (("patch", patch), ("unpatch", "plugin-fix")):
            res = live.cli(*args, "--target", info["id"], "--wait", "10")
            assert res.code == 0, res.err
    values = {ln.split()[-1] for ln in r.out().splitlines()[:-1]}
    assert values == {"40", "41"} and r.proc.poll() is None, r.err()


def test_verify_proves_a_pie_and_a_shared_library(builder: Builder, tmp_path: Path) -> None:
    """``armlp verify`` maps a dynamic or position-independent file's code
    without running it (no dynamic linker in the emulator) and proves every
    patchable function: zstream as a PIE, and zlib as libz.so.1, whose sites
    call mcount through their own PLT."""
    lib = _library(builder)
    prog = _program(builder, lib, tmp_path)
    for path, functions in ((prog, {"main", "report"}), (lib, {"deflate", "longest_match"})):
        r = armlp("verify", path, "--json")
        assert r.code == 0, r.err
        doc = json.loads(r.out)
        verified = {f["name"] for f in doc["functions"] if f["verified"]}
        assert functions <= verified
        assert doc["summary"]["failed"] == 0
        assert doc["summary"]["verified"] == doc["summary"]["patchable"] == len(verified)
