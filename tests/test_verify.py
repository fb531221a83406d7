"""``armlp verify``: the per-function redirect proof as a command, on the
corpus (both rules) and on real code (zlib), with its failures and
refusals."""

from __future__ import annotations

import gzip
import json
import re
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from armlp.machine.emulator import Emulator, StopReason
from armlp.program_build import build_program
from armlp.runtime.layout import RULES
from armlp.target import Target
from armlp.verify import PATHS
from conftest import CORPUS, armlp
from zlib_build import build_zlib_program

SITE_RULE_OFFSET = 8   # struct armlp_site: u32 ip, u32 func, u8 rule, ...
SHAPES = {"frame_64k", "many_args", "varargs_sum", "struct_ret", "args64", "frame_4k"}


def corpus_program(*flags: str) -> Path:
    return build_program([CORPUS / "funcs.c", CORPUS / "other.c", CORPUS / "prog_main.c"],
                         cflags=["-O2", *flags])


def verify_json(*args: str | Path, code: int = 0) -> dict[str, Any]:
    res = armlp("verify", "--json", *args)
    assert res.code == code, res.err
    assert res.err == ""
    doc: dict[str, Any] = json.loads(res.out)
    return doc


@pytest.mark.parametrize("flags", [(), ("-mno-apcs-frame",)], ids=["apcs", "noapcs"])
def test_corpus_every_function_verified(flags: tuple[str, ...]) -> None:
    prog = corpus_program(*flags)
    doc = verify_json(prog)
    funcs = doc["functions"]
    s = doc["summary"]
    assert {f["name"] for f in funcs} >= SHAPES
    assert all(f["verified"] for f in funcs), [f for f in funcs if not f["verified"]]
    assert s["patchable"] == len(funcs) == s["verified"] and s["failed"] == 0
    assert s["skipped"] == 0 and s["with_mcount_site"] == len(funcs)
    rules = {f["rule"] for f in funcs}
    assert rules == ({"push"} if flags else {"apcs", "push"})
    assert set(s["by_rule"]) == rules
    assert doc["paths"] == list(PATHS)
    for f in funcs:
        assert list(f["paths"]) == list(PATHS)
        assert all(r["verified"] and r["mismatch"] is None for r in f["paths"].values()), f
        counts = {k: r["instructions"] for k, r in f["paths"].items()}
        # prologue + push {lr} + regs trampoline + undo: tens of instructions;
        # the site's own trampoline: a few; the entry branch: one.
        assert 20 < counts["generic"] < 400, f
        assert counts["entry"] == 1 and counts["fast"] < counts["generic"], f
    # The same figures as the scan: every function with an mcount site is here.
    scan = json.loads(armlp("scan", "--json", prog).out)
    assert s["patchable"] == scan["summary"]["patchable"]
    assert s["functions"] == scan["summary"]["functions"]


def test_text_output_summary() -> None:
    res = armlp("verify", corpus_program())
    assert res.code == 0, res.err
    assert re.search(r"18 of 18 patchable functions verified \(8 random", res.out)
    assert re.search(r"^apcs\s+17\s+0$", res.out, re.M)
    assert re.search(r"^push\s+1\s+0$", res.out, re.M)
    for path in PATHS:
        assert f"path {path}: 18/18 verified, entry -> new function" in res.out
    assert "FAILED" not in res.out


def test_one_function_and_sympos() -> None:
    prog = corpus_program()
    doc = verify_json(prog, "--function", "many_args", "--trials", "20", "--seed", "7")
    assert [(f["name"], f["verified"]) for f in doc["functions"]] == [("many_args", True)]
    assert doc["trials"] == 20 and doc["seed"] == 7
    assert doc["summary"]["patchable"] == 1
    doc = verify_json(prog, "--function", "dup_static,2", "--paths", "generic")
    assert [(f["name"], f["sympos"]) for f in doc["functions"]] == [("dup_static", 2)]
    assert list(doc["functions"][0]["paths"]) == ["generic"] == doc["paths"]
    res = armlp("verify", prog, "--function", "dup_static")
    assert res.code == 2 and res.err.count("\n") == 1 and "ambiguous" in res.err


def test_reproducible_with_a_seed() -> None:
    prog = corpus_program()
    assert verify_json(prog, "--seed", "3") == verify_json(prog, "--seed", "3")


@pytest.fixture
def corrupted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Targets the CLI creates get one push-rule function broken: by default
    its record's frame size (what the trampoline pops to undo the prologue)
    is 8 too large; with ``crash`` set, its rule becomes ``apcs`` so the
    undo faults before reaching the probe."""
    state: dict[str, Any] = {"crash": False, "name": None}
    original = Target.emulate.__func__   # type: ignore[attr-defined]

    def emulate(cls: type[Target], path: str | Path, argv: Any = None, **options: Any
                ) -> Target:
        target: Target = original(cls, path, argv, **options)
        rec = next(r for r in target.ftrace.records.values()
                   if r.report.verdict.rule == "push" and r.report.undo
                   and r.report.undo.frame_size > 0)
        if state["crash"]:
            # Undo a push frame as an APCS one: fp[-1..-3] with fp = the
            # random r11 of the context reads unmapped memory.
            target.machine.write(rec.record + SITE_RULE_OFFSET, bytes([RULES["apcs"]]))
        else:
            assert rec.report.undo is not None
            target.machine.write(rec.record + 12,
                                 struct.pack("<I", rec.report.undo.frame_size + 8))
        state["name"] = rec.report.fn.name
        return target

    monkeypatch.setattr(Target, "emulate", classmethod(emulate))  # type: ignore[arg-type]
    yield state


def test_a_wrong_undo_fails_with_exit_1(corrupted: dict[str, Any]) -> None:
    prog = corpus_program("-mno-apcs-frame")
    doc = verify_json(prog, code=1)
    bad = [f for f in doc["functions"] if not f["verified"]]
    assert [f["name"] for f in bad] == [corrupted["name"]]
    assert "sp=" in bad[0]["paths"]["generic"]["mismatch"]
    assert doc["summary"]["failed"] == 1
    assert doc["summary"]["verified"] == len(doc["functions"]) - 1
    res = armlp("verify", prog)
    assert res.code == 1
    assert f"FAILED {corrupted['name']} at 0x" in res.out and "sp=" in res.out
    assert "1 FAILED" in res.out


def test_an_undo_that_crashes_is_a_failure_not_an_error(corrupted: dict[str, Any]) -> None:
    corrupted["crash"] = True
    doc = verify_json(corpus_program("-mno-apcs-frame"), code=1)
    bad = [f for f in doc["functions"] if not f["verified"]]
    assert [f["name"] for f in bad] == [corrupted["name"]]
    assert "did not reach the probe" in bad[0]["paths"]["generic"]["mismatch"]


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/prog"], "no such file"),
    (["{notelf}"], "not an ELF"),
    (["{object}"], "not a static executable"),
    (["{prog}", "--function", "no_such_function"], "no function named"),
    (["{prog}", "--function", "memcpy"], "is not patchable"),
    (["{prog}", "--function", "many_args,x"], "SYMPOS must be a number"),
    (["{prog}", "--trials", "0"], "--trials: '0': at least 1 is required"),
    (["{prog}", "--paths", "generic,quick"], "bad --paths"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    notelf = tmp_path / "notelf"
    notelf.write_text("hello\n")
    obj = tmp_path / "funcs.o"
    from armlp.toolchain import PATCHABLE_CFLAGS, compile_object
    compile_object(CORPUS / "funcs.c", obj, [*PATCHABLE_CFLAGS, "-O2"])
    subst = {"{notelf}": str(notelf), "{object}": str(obj), "{prog}": str(corpus_program())}
    res = armlp("verify", *[subst.get(a, a) for a in args])
    assert res.code == 2
    assert res.out == ""
    assert res.err.count("\n") == 1 and res.err.startswith("armlp: error: ")
    assert message in res.err


def test_help_explains_the_proof() -> None:
    res = armlp("verify", "--help")
    assert res.code == 0
    for words in ("ftrace_regs_caller", "r0-r11, sp", "stack-argument", "probe",
                  "generic", "fast", "entry", "Exit status"):
        assert words in res.out


# --- real code: zlib -----------------------------------------------------------

ZLIB_FUNCTIONS = {"inflate", "deflate", "crc32", "adler32", "inflate_table", "inflate_fast",
                  "_tr_flush_block", "inflateBack", "compress2", "uncompress", "gzread",
                  "gzwrite", "gzprintf", "gzclose_r", "deflateParams", "longest_match"}


def run_zlib(prog: Path) -> None:
    """The program itself: every round trip OK, and its .gz file (on stderr)
    is read back by the host's zlib into the data whose crc32 and adler32
    the program printed."""
    emu = Emulator.from_elf(prog)
    stop = emu.run(max_instructions=1_000_000_000)
    assert stop.reason is StopReason.EXITED and stop.exit_status == 0, emu.stdout
    out = emu.stdout.decode()
    assert "round trip ok" in out and "FAIL" not in out
    m = re.search(r"zlib (\S+) length (\d+) crc32 (0x[0-9a-f]+) adler32 (0x[0-9a-f]+)", out)
    assert m, out
    assert m.group(1) == zlib.ZLIB_VERSION or m.group(1).startswith("1.")
    data = gzip.decompress(emu.stderr)
    n = int(m.group(2))
    assert data[n:] == b"trailer 42\n"
    assert zlib.crc32(data[:n]) == int(m.group(3), 16)
    assert zlib.adler32(data[:n]) == int(m.group(4), 16)


@pytest.mark.slow
@pytest.mark.parametrize("flags,rule", [((), "apcs"), (("-mno-apcs-frame",), "push")],
                         ids=["apcs", "noapcs"])
def test_zlib_every_patchable_function_verified(flags: tuple[str, ...], rule: str) -> None:
    prog = build_zlib_program(flags)
    run_zlib(prog)
    start = time.monotonic()
    doc = verify_json(prog)
    elapsed = time.monotonic() - start
    funcs = doc["functions"]
    s = doc["summary"]
    assert len(funcs) > 50
    assert {f["name"] for f in funcs} >= ZLIB_FUNCTIONS
    assert [f["name"] for f in funcs if not f["verified"]] == []
    assert s["verified"] == s["patchable"] == len(funcs) and s["failed"] == 0
    assert s["by_rule"] == {rule: {"verified": len(funcs), "failed": 0}}
    # Every function with an mcount site (all of zlib) is patchable and proven.
    assert s["skipped"] == 0 and s["with_mcount_site"] == len(funcs)
    for f in funcs:
        assert list(f["paths"]) == list(PATHS)
        assert all(isinstance(r["instructions"], int) for r in f["paths"].values())
    assert all(s["paths"][p]["verified"] == len(funcs) for p in PATHS)
    assert elapsed < 60


@pytest.fixture(scope="module")
def hardfloat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/programs/hardfloat.c with Debian armhf's compiler (hard-float
    ABI), in ARM mode, static: its sites call a Thumb mcount with blx."""
    import subprocess

    out = tmp_path_factory.mktemp("hf") / "hardfloat"
    subprocess.run(["arm-linux-gnueabihf-gcc", "-marm", "-pg", "-mapcs-frame", "-O2",
                    "-static", "-o", str(out), str(Path(__file__).parent / "programs" /
                                                   "hardfloat.c")], check=True)
    return out


def test_hard_float_program_verified_with_vfp_arguments(hardfloat: Path) -> None:
    """Every path keeps s0-s15 (d0-d7) and FPSCR: the entry context includes
    them, and functions whose sites are blx calls are found and proven."""
    r = armlp("verify", hardfloat, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    names = {f["name"] for f in doc["functions"] if f["verified"]}
    assert {"mix", "scale", "main"} <= names
    assert doc["summary"]["failed"] == 0


def test_a_path_that_changes_a_vfp_register_fails(hardfloat: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof can fail on VFP state: a fast-path trampoline that writes s1
    (``vmov s1, r0``) is caught."""
    from armlp.livepatch import trampoline
    from armlp.verify import Prover

    real = trampoline.build_trampoline

    def clobbering(undo, target, thumb=False):  # type: ignore[no-untyped-def]
        t = real(undo, target, thumb=thumb)
        return trampoline.Trampoline((0xEE000A90, *t.words), t.literal_index + 1)

    monkeypatch.setattr("armlp.verify.build_trampoline", clobbering)
    target = Target.emulate(hardfloat, count_instructions=True)
    recs = [target.ftrace.records[r.site] for r in target.scan.functions
            if r.verdict.patchable and r.fn.name == "mix" and r.site is not None]
    [proof] = Prover(target).prove(recs, trials=2, paths=("fast",))
    result = proof.paths["fast"]
    assert not result.verified and result.mismatch is not None
    assert result.mismatch.startswith("s1=")
