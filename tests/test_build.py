"""``armlp build`` (issue 13): live patches from source diffs, on real code.

zlib (Debian's source, ``build/zlib``) with ``tests/programs/zstream.c``,
built by ``tests/builds/zlib/Makefile.armlp`` as a user builds it (make, $CC
from the environment).  Each diff of ``tests/builds/zlib`` is turned into a
patch by ``armlp build``, applied under ``armlp run`` before the program's
first instruction, and the program's output compared with the same program
rebuilt from the patched source; the builder's report is compared with what
the diff changes.  ``tests/builds/asserts`` covers line-number-only changes
and the refusals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from live_helpers import started
from zlib_build import ZLIB_DIR, zlib_input, zlib_sources

REPO = Path(__file__).resolve().parent.parent
ARMLP = REPO / ".venv" / "bin" / "armlp"
BUILDS = REPO / "tests" / "builds"
CC = "arm-linux-gnueabi-gcc"
HF_CC = "arm-linux-gnueabihf-gcc"
MAKE_ZLIB = "make -f Makefile.armlp -j2"
#: The assert program as Debian's gcc builds by default: PIE, dynamic.
MAKE_PIE = "make CFLAGS='-marm -pg -mapcs-frame -O2 -fpie' LDFLAGS=-pie"
#: ... and as Debian armhf's does: Thumb-2 (static here).
MAKE_THUMB2 = "make CFLAGS='-mthumb -pg -O2 -fno-pie'"


def _tree(dest: Path, kind: str) -> Path:
    """A pristine source tree: zlib with zstream, or the assert program."""
    if kind == "zlib":
        zlib_sources()                    # fails with the set-up hint if missing
        dest.mkdir(parents=True)
        for f in [*ZLIB_DIR.glob("*.c"), *ZLIB_DIR.glob("*.h"),
                  REPO / "tests" / "programs" / "zstream.c",
                  BUILDS / "zlib" / "Makefile.armlp", BUILDS / "zlib" / "Makefile.shared"]:
            shutil.copy(f, dest / f.name)
    else:
        shutil.copytree(BUILDS / "asserts", dest, ignore=shutil.ignore_patterns("*.diff"))
    return dest


def _make(tree: Path, cmd: str, cc: str = CC) -> None:
    subprocess.run(cmd, shell=True, cwd=tree, env=dict(os.environ, CC=cc), check=True,
                   capture_output=True, timeout=600)


def _build(diff: Path, tree: Path, program: Path, cmd: str, out: Path,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ARMLP), "build", str(diff), "--source", str(tree),
                           "--program", str(program), "--build", cmd, "-o", str(out),
                           "--json"], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def zlib_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The pristine tree, the running binary built from it, and the input."""
    root = tmp_path_factory.mktemp("zbuild")
    src = _tree(root / "src", "zlib")
    built = _tree(root / "built", "zlib")
    _make(built, MAKE_ZLIB)
    data_in = root / "in.bin"
    zlib_input(data_in, 2 << 20)
    return {"src": src, "program": built / "zstream", "in": data_in, "root": root}


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _env(tmp: Path) -> dict[str, str]:
    rt = tmp / "rt"
    rt.mkdir(mode=0o700, exist_ok=True)
    return dict(os.environ, ARMLP_RUNTIME_DIR=str(rt))


def _functions(report: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["reason"] for f in report["functions"]}


#: Each zlib diff: the functions the report must name, with a word of the reason.
ZLIB_DIFFS = {
    # a changed static function (deflate.c's longest_match)
    "longest_match": {"longest_match": "changed"},
    # lm_init is inlined into deflateReset: its caller is what changes
    "lm_init": {"deflateReset": "inlines lm_init"},
    # a new static helper and a new string literal, in the program's own file
    "report_parity": {"report": "changed", "parity": "new"},
    # a changed constant table: a new copy, and every function that reads it
    "config_table": {"deflateReset": "uses configuration_table",
                     "deflate": "uses configuration_table",
                     "deflateParams": "uses configuration_table"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZLIB_DIFFS))
def test_zlib_diff_patch_matches_the_rebuilt_program(zlib_case: dict[str, Path], name: str,
                                                     tmp_path: Path) -> None:
    diff = BUILDS / "zlib" / f"{name}.diff"
    patch = tmp_path / f"{name}.o"
    proc = _build(diff, zlib_case["src"], zlib_case["program"], MAKE_ZLIB, patch)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # The base: every function of the 16 files rebuilt equals the binary's.
    assert report["base"]["objects"] == 16 and report["base"]["functions_proven"] > 100
    got = _functions(report)
    want = ZLIB_DIFFS[name]
    assert set(got) == set(want), got
    for func, word in want.items():
        assert word in got[func], (func, got[func])
    if name == "config_table":
        assert [d["name"] for d in report["data"]] == ["configuration_table"]
    # The reference: the program rebuilt from the patched source.
    ref_tree = _tree(tmp_path / "ref", "zlib")
    subprocess.run(["patch", "-s", "-p1", "-d", str(ref_tree), "-i", str(diff)], check=True)
    _make(ref_tree, MAKE_ZLIB)
    ref_out, out = tmp_path / "ref.z", tmp_path / "out.z"
    ref_lines = _run(["qemu-arm", str(ref_tree / "zstream"), str(zlib_case["in"]),
                      str(ref_out), "0"])
    orig_out = tmp_path / "orig.z"
    orig_lines = _run(["qemu-arm", str(zlib_case["program"]), str(zlib_case["in"]),
                       str(orig_out), "0"])
    lines = _run([str(ARMLP), "run", "--patch", str(patch), str(zlib_case["program"]), "--",
                  str(zlib_case["in"]), str(out), "0"], env=_env(tmp_path))
    assert lines == ref_lines
    assert out.read_bytes() == ref_out.read_bytes()
    assert zlib.decompress(out.read_bytes()) == zlib_case["in"].read_bytes()
    # ... and the patch made a difference the unpatched program does not.
    assert (lines, out.read_bytes()) != (orig_lines, orig_out.read_bytes())


#: zlib and zstream as Debian armhf builds them: Thumb-2, hard-float.
MAKE_ZLIB_THUMB2 = (f"{MAKE_ZLIB} CFLAGS='-mthumb -pg -O2 -fno-pie -fno-common "
                    f"-DHAVE_UNISTD_H -DHAVE_STDARG_H'")


#: The Thumb-2 diffs: two of the above, and one to gzlib.c, a file whose
#: recorded object differs from the binary (-ffunction-sections widens its
#: tail call b.n gz_open), so its base proof compiles it again: from the
#: tree before the diff, or the changed function would fail the proof.
THUMB2_DIFFS = {"longest_match": {"longest_match": "changed"},
                "lm_init": {"deflateReset": "inlines lm_init"},
                "gzbuffer_min": {"gzbuffer": "changed"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(THUMB2_DIFFS))
def test_zlib_thumb2_diff_patch_matches_the_rebuilt_program(zlib_case: dict[str, Path],
                                                            name: str, tmp_path: Path) -> None:
    """The same from a Thumb-2 armhf build: the compiler is armhf's (armlp
    build reads it from the binary), the replacements are Thumb code, and
    the program patched before its first instruction prints and writes what
    the program rebuilt from the patched source does."""
    built = _tree(tmp_path / "built", "zlib")
    _make(built, MAKE_ZLIB_THUMB2, HF_CC)
    program = built / "zstream"
    diff = BUILDS / "zlib" / f"{name}.diff"
    patch = tmp_path / f"{name}.o"
    proc = _build(diff, zlib_case["src"], program, MAKE_ZLIB_THUMB2, patch)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["base"]["objects"] == 16 and report["base"]["functions_proven"] > 100
    got = _functions(report)
    assert set(got) == set(THUMB2_DIFFS[name]), got
    for func, word in THUMB2_DIFFS[name].items():
        assert word in got[func], (func, got[func])
    ref_tree = _tree(tmp_path / "ref", "zlib")
    subprocess.run(["patch", "-s", "-p1", "-d", str(ref_tree), "-i", str(diff)], check=True)
    _make(ref_tree, MAKE_ZLIB_THUMB2, HF_CC)
    ref_out, out = tmp_path / "ref.z", tmp_path / "out.z"
    ref_lines = _run(["qemu-arm", str(ref_tree / "zstream"), str(zlib_case["in"]),
                      str(ref_out), "0"])
    lines = _run([str(ARMLP), "run", "--patch", str(patch), str(program), "--",
                  str(zlib_case["in"]), str(out), "0"], env=_env(tmp_path))
    assert lines == ref_lines
    assert out.read_bytes() == ref_out.read_bytes()
    assert zlib.decompress(out.read_bytes()) == zlib_case["in"].read_bytes()


MAKE_SHARED = "make -f Makefile.shared -j2"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["longest_match", "config_table"])
def test_zlib_shared_library_diff(zlib_case: dict[str, Path], name: str,
                                  tmp_path: Path) -> None:
    """--program libz.so.1: the patch names the library as its object, the
    library's statics by .klp.sym.libz.so.1.<name>; PIC code (GOT and
    pc-relative data references) is rebuilt -fno-pic for the patch."""
    built = _tree(tmp_path / "built", "zlib")
    _make(built, MAKE_SHARED)
    diff = BUILDS / "zlib" / f"{name}.diff"
    patch = tmp_path / "lib.o"
    proc = _build(diff, zlib_case["src"], built / "libz.so.1", MAKE_SHARED, patch)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["base"]["objects"] == 15          # the library's files, not zstream.c
    assert set(_functions(report)) == set(ZLIB_DIFFS[name])
    ref = _tree(tmp_path / "ref", "zlib")
    subprocess.run(["patch", "-s", "-p1", "-d", str(ref), "-i", str(diff)], check=True)
    _make(ref, MAKE_SHARED)
    lib_env = dict(os.environ, LD_LIBRARY_PATH=str(ref))
    want = _run(["qemu-arm", "-L", "/usr/arm-linux-gnueabi", str(built / "zstream"),
                 str(zlib_case["in"]), str(tmp_path / "ref.z"), "0"], env=lib_env)
    env = dict(_env(tmp_path), LD_LIBRARY_PATH=str(built))
    got = _run([str(ARMLP), "run", "--patch", str(patch), str(built / "zstream"), "--",
                str(zlib_case["in"]), str(tmp_path / "out.z"), "0"], env=env)
    assert got == want
    assert (tmp_path / "out.z").read_bytes() == (tmp_path / "ref.z").read_bytes()
    status_free = (tmp_path / "out.z").read_bytes()
    assert zlib.decompress(status_free) == zlib_case["in"].read_bytes()


@pytest.mark.slow
def test_zlib_diff_patch_applied_mid_stream(zlib_case: dict[str, Path], tmp_path: Path) -> None:
    """The new helper and string reach a program already running: the
    lines before the patch are the old format, the ones after the new."""
    patch = tmp_path / "parity.o"
    proc = _build(BUILDS / "zlib" / "report_parity.diff", zlib_case["src"],
                  zlib_case["program"], MAKE_ZLIB, patch)
    assert proc.returncode == 0, proc.stderr
    env = _env(tmp_path)
    # 8 chunks, half a second apart: the patch has 3 s from chunk 0 to land
    # before chunk 6 (a loaded CI machine took more than the 0.5 s that a
    # tenth of a second apart from chunk 2 gave, and the program had ended).
    lines = []
    with started([str(ARMLP), "run", str(zlib_case["program"]), "--", str(zlib_case["in"]),
                  str(tmp_path / "out.z"), "500000"],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as run:
        assert run.stdout is not None
        for line in run.stdout:
            lines.append(line)
            if line.startswith("chunk 0 "):
                r = subprocess.run([str(ARMLP), "patch", str(patch)], capture_output=True,
                                   text=True, env=env, timeout=60)
                assert r.returncode == 0, r.stderr
                # The sysfs view knows the built patch as any other.
                st = json.loads(_run([str(ARMLP), "status", "--json"], env=env))
                (p,) = st["targets"][0]["patches"]
                assert p["name"] == "report_parity" and p["enabled"]
                assert [(o["name"], [f["name"] for f in o["functions"]])
                        for o in p["objects"]] == [("program", ["report"])]
        run.communicate(timeout=120)
    assert run.returncode == 0
    chunks = [ln for ln in lines if ln.startswith("chunk ")]
    assert chunks[0].startswith("chunk 0 in ")
    last = len(chunks) - 1
    assert chunks[-1].startswith(f"chunk {last} ({'odd' if last % 2 else 'even'}) in ")
    assert chunks[last - 1].startswith(f"chunk {last - 1} ({'even' if last % 2 else 'odd'}) ")


@pytest.mark.slow
def test_zlib_refuses_a_change_to_existing_writable_data(zlib_case: dict[str, Path],
                                                         tmp_path: Path) -> None:
    patch = tmp_path / "inbuf.o"
    proc = _build(BUILDS / "zlib" / "inbuf_size.diff", zlib_case["src"],
                  zlib_case["program"], MAKE_ZLIB, patch)
    assert proc.returncode == 2
    assert proc.stderr.startswith("armlp: error: zstream.c: the diff changes the size or "
                                  "initial value of outbuf")
    assert "shadow variable" in proc.stderr and proc.stderr.count("\n") == 1
    assert not patch.exists()


@pytest.fixture(scope="module")
def asserts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("abuild")
    built = _tree(root / "built", "asserts")
    _make(built, "make")
    other = _tree(root / "o1", "asserts")
    _make(other, "make CFLAGS='-marm -pg -mapcs-frame -O1 -fno-pie'")
    pie = _tree(root / "pie", "asserts")
    _make(pie, MAKE_PIE)
    thumb2 = _tree(root / "thumb2", "asserts")
    _make(thumb2, MAKE_THUMB2, HF_CC)
    return {"src": _tree(root / "src", "asserts"), "program": built / "prog",
            "o1": other / "prog", "pie": pie / "prog", "thumb2": thumb2 / "prog"}


@pytest.mark.parametrize("kind", ["program", "pie", "thumb2"])
def test_line_numbers_that_only_moved_are_no_change(asserts: dict[str, Path], tmp_path: Path,
                                                    kind: str) -> None:
    patch = tmp_path / "moved.o"
    proc = _build(BUILDS / "asserts" / "moved.diff", asserts["src"], asserts[kind],
                  {"program": "make", "pie": MAKE_PIE, "thumb2": MAKE_THUMB2}[kind], patch)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # scan reads the patch as any object: its functions are patchable ones.
    scanned = json.loads(_run([str(ARMLP), "scan", "--json", str(patch)]))
    assert [(f["name"], f["patchable"]) for f in scanned["functions"]] == [("scale", True)]
    # scale changed (x * 4); checked_div's assert only moved down a line.
    assert _functions(report) == {"scale": "changed"}
    assert report["line_only"] == ["main.c:checked_div"]
    before = _run(["qemu-arm", "-L", "/usr/arm-linux-gnueabi", str(asserts[kind]), "3"])
    after = _run([str(ARMLP), "run", "--patch", str(patch), str(asserts[kind]), "--",
                  "3"], env=_env(tmp_path))
    assert before == "1 100 3\n2 50 6\n3 33 9\n"
    assert after == "1 100 4\n2 50 8\n3 33 12\n"


@pytest.mark.parametrize("diff, program, message", [
    ("comment.diff", "program", "the diff changes no function of {program} (2 differ only "
                                "by line numbers)"),
    ("unused.diff", "program", "unused.c: the diff changes a file {program} is not built "
                               "from"),
    ("moved.diff", "o1", "the tree does not rebuild {program}: 3 of 3 functions differ, "
                         "first checked_div (main.c: "),
])
def test_refusals(asserts: dict[str, Path], tmp_path: Path, diff: str, program: str,
                  message: str) -> None:
    patch = tmp_path / "p.o"
    prog = asserts[program]
    proc = _build(BUILDS / "asserts" / diff, asserts["src"], prog, "make", patch)
    assert proc.returncode == 2
    assert proc.stderr.startswith("armlp: error: " + message.format(program=prog)), proc.stderr
    assert proc.stderr.count("\n") == 1 and not patch.exists()


@pytest.mark.parametrize("args, message", [
    (["/nonexistent.diff"], "/nonexistent.diff: no such file"),
    (["{diff}", "--source", "/nonexistent"], "/nonexistent: not a directory"),
    (["{diff}", "--build", "exit 3"], "the original build failed (exit 3)"),
    (["{diff}", "--build", "true"], "the build command compiled no C file through $CC"),
    (["/dev/null"], "/dev/null: a device, not a diff"),
    (["{diff}", "--name", "bad name"], "--name 'bad name': 1-64 letters"),
])
def test_bad_input_is_one_line(asserts: dict[str, Path], tmp_path: Path, args: list[str],
                               message: str) -> None:
    base = {"--source": str(asserts["src"]), "--program": str(asserts["program"]),
            "--build": "make", "-o": str(tmp_path / "p.o")}
    argv = [a.format(diff=BUILDS / "asserts" / "moved.diff") for a in args]
    for opt, value in base.items():
        if opt not in argv:
            argv += [opt, value]
    proc = subprocess.run([str(ARMLP), "build", *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"armlp: error: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_gcc_clone_is_patched_by_its_own_name(tmp_path: Path) -> None:
    """scaled() exists only as scaled.constprop.0 at -O2: the diff to
    scaled() patches the clone, and the program prints what the rebuilt
    one prints."""
    src = BUILDS / "clones"
    built = tmp_path / "built"
    shutil.copytree(src, built, ignore=shutil.ignore_patterns("*.diff"))
    _make(built, "make")
    ref = tmp_path / "ref"
    shutil.copytree(src, ref, ignore=shutil.ignore_patterns("*.diff"))
    subprocess.run(["patch", "-s", "-p1", "-d", str(ref), "-i",
                    str(src / "constprop.diff")], check=True)
    _make(ref, "make")
    patch = tmp_path / "p.o"
    proc = _build(src / "constprop.diff", src, built / "prog", "make", patch)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["functions"] == [{"file": "clones.c", "name": "scaled.constprop.0",
                                    "reason": "changed",
                                    "replaces": {"name": "scaled.constprop.0", "sympos": 0}}]
    want = _run(["qemu-arm", str(ref / "prog")])
    assert want != _run(["qemu-arm", str(built / "prog")])
    assert _run([str(ARMLP), "run", "--patch", str(patch), str(built / "prog")],
                env=_env(tmp_path)) == want


def test_a_change_to_an_unpatchable_function_is_refused(tmp_path: Path) -> None:
    src = BUILDS / "clones"
    built = tmp_path / "built"
    shutil.copytree(src, built, ignore=shutil.ignore_patterns("*.diff"))
    _make(built, "make")
    patch = tmp_path / "p.o"
    proc = _build(src / "untraced.diff", src, built / "prog", "make", patch)
    assert proc.returncode == 2
    assert proc.stderr == ("armlp: error: clones.c: untraced changed but cannot be live "
                           "patched: no mcount site (notrace, built without -pg, or "
                           "assembly)\n")
    assert not patch.exists()


#: Small cases from two reviews of armlp build (tests/builds/cases/NAME: a
#: Makefile, sources, fix.diff): None when the patched program must print
#: what the program rebuilt from the fixed source prints, else the start of
#: the refusal.
CASES: dict[str, str | None] = {
    # a constant 10 -> 12 in a function whose lines also moved by 2
    "lineonly": None,
    # a datum at an odd offset (char after char, -O0)
    "odd": None,
    # x/util.c and y/util.c: two static helper()s, one file name
    "dup": None,
    # a local array initialised from anonymous .rodata, element 20 changed
    "anon": None,
    # a global's initial value changed, lines moved
    "dataline": "main.c: the diff changes the size or initial value of threshold",
    # the same in a file that has no function
    "datafile": "conf.c: the diff changes the size or initial value of threshold",
    # a new function-local static of a name that exists: GCC renumbers them;
    # each is matched by its function
    "statics": None,
    # a global constant another file reads, and that file's function changed too
    "rodata": None,
    # only the constant: its users in its own file and in another are patched
    "rodata2": None,
    # two changed constants, each read from the other's file
    "rodata3": None,
    # a weak definition another file overrides: not the program's
    "weak": "the diff changes no function of",
    # the same bytes calling another function and printing another string
    "proof": "the tree does not rebuild",
    # -fcommon: a common symbol is the program's, not new data
    "common2": None,
    # a git diff -M renaming a.c to a2.c: its functions replace the program's
    "ren2": None,
    # a C file compiled as -x c tbl.inc
    "xc": None,
    # a git diff adding a global function and a global variable to b.c for a.c
    "git1": None,
    # a thread-local variable: refused by name
    "tls": "a.c: compute uses a thread-local variable (tlocal)",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_review_cases(name: str, tmp_path: Path) -> None:
    case = BUILDS / "cases" / name
    skip = shutil.ignore_patterns("fix.diff", "binary.c")
    src = tmp_path / "src"
    shutil.copytree(case, src, ignore=skip)
    built = tmp_path / "built"
    shutil.copytree(case, built, ignore=skip)
    if (case / "binary.c").exists():             # the program came from other source
        shutil.copy(case / "binary.c", built / "main.c")
    _make(built, "make")
    patch = tmp_path / "p.o"
    proc = _build(case / "fix.diff", src, built / "prog", "make", patch)
    want = CASES[name]
    if want is not None:
        assert proc.returncode == 2, proc.stdout
        assert proc.stderr.startswith(f"armlp: error: {want}"), proc.stderr
        assert not patch.exists()
        return
    assert proc.returncode == 0, proc.stderr
    fixed = tmp_path / "fixed"
    shutil.copytree(case, fixed, ignore=skip)
    subprocess.run(["patch", "-s", "-p1", "-d", str(fixed), "-i", str(case / "fix.diff")],
                   check=True)
    _make(fixed, "make")
    want_out = _run(["qemu-arm", str(fixed / "prog")])
    assert want_out != _run(["qemu-arm", str(built / "prog")])
    assert _run([str(ARMLP), "run", "--patch", str(patch), str(built / "prog")],
                env=_env(tmp_path)) == want_out


def test_a_changed_constant_brings_its_readers_from_every_file(tmp_path: Path) -> None:
    """limits changes in conf.c: its copy travels with the patch, with
    over() (conf.c) and show() (main.c, which the diff does not touch and
    make does not recompile, reading the copy); the report says why."""
    case = BUILDS / "cases" / "rodata2"
    built = tmp_path / "built"
    shutil.copytree(case, built, ignore=shutil.ignore_patterns("fix.diff"))
    _make(built, "make")
    proc = _build(case / "fix.diff", case, built / "prog", "make", tmp_path / "p.o")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    got = _functions(report)
    # over() has limits[1] folded into its code by GCC (a const of its file).
    assert set(got) == {"over", "show"} and got["over"].startswith("changed")
    assert got["show"] == "changed: uses limits (conf.c), which changed"
    assert [d["name"] for d in report["data"]] == ["limits"]
