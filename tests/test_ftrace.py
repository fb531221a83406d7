"""ftrace in the emulator: exact traces, filters, unchanged output, the regs
path's entry-context proof over the corpus, and refusals that leave the
target untouched."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from armlp.errors import ArmlpError, CodeModificationError
from armlp.ftrace.core import FtraceOps
from armlp.ftrace.sitecode import NOP
from armlp.ftrace.tracer import FunctionTracer
from armlp.machine.base import read_word
from armlp.machine.emulator import StopReason
from armlp.program_build import build_program
from armlp.runtime.layout import (
    FTRACE_OPS_FL_SAVE_REGS,
    SITE_MAX_OPS,
    SITE_NOPS_OFFSET,
    SITE_OPS_OFFSET,
)
from armlp.target import Target
from armlp.verify import Prover
from conftest import CORPUS, armlp

REPO = Path(__file__).resolve().parent.parent
CALLS = REPO / "examples" / "programs" / "calls.c"


def expected_calls() -> list[tuple[str, str, int]]:
    """calls.c's call tree, from its source: main loops top(0..2); top calls
    middle (which calls leaf), then leaf."""
    out = [("main", "_start", 0)]
    for _ in range(3):
        out += [("top", "main", 1), ("middle", "top", 2), ("leaf", "middle", 3),
                ("leaf", "top", 2)]
    return out


@pytest.fixture(scope="module")
def calls_program() -> Path:
    return build_program([CALLS])


def run_to_exit(target: Target) -> int:
    stop = target.machine.run(max_instructions=50_000_000)  # type: ignore[attr-defined]
    assert stop.reason is StopReason.EXITED
    return int(stop.exit_status)


def test_trace_graph_is_the_source_call_tree(calls_program: Path) -> None:
    res = armlp("trace", "--json", calls_program)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    got = [(c["function"], c["caller"], c["depth"]) for c in doc["calls"]]
    assert got == expected_calls()
    assert doc["counts"] == {"leaf": 6, "top": 3, "middle": 3, "main": 1}
    assert doc["exit_status"] == 0 and doc["lost"] == 0


def test_trace_text_format_and_summary(calls_program: Path) -> None:
    res = armlp("trace", "--graph", calls_program)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    calls = [ln for ln in lines if not ln.startswith("#")]
    want = ["  " * d + f"{f} <- {c}" for f, c, d in expected_calls()]
    assert calls == want
    assert "# leaf" in res.out and "13 calls traced" in res.out


def test_filter_enables_only_matching_sites(calls_program: Path) -> None:
    target = Target.emulate(calls_program)
    tracer = FunctionTracer(target.ftrace, ["l*"])
    tracer.start()
    words = {r.name: read_word(target.machine, r.ip) for r in target.ftrace.records.values()}
    assert words["leaf"] != NOP
    assert words["top"] == NOP and words["middle"] == NOP and words["main"] == NOP
    assert run_to_exit(target) == 0
    entries = tracer.read()
    assert [(e.function, e.caller) for e in entries] == [("leaf", "middle"), ("leaf", "top")] * 3


def test_filter_matching_nothing_is_an_error(calls_program: Path) -> None:
    res = armlp("trace", "--filter", "nosuchfunction*", calls_program)
    assert res.code == 2
    assert res.err.count("\n") == 1 and "no mcount site matches" in res.err


def test_output_identical_with_and_without_tracing(calls_program: Path) -> None:
    plain = Target.emulate(calls_program)
    assert run_to_exit(plain) == 0
    traced = Target.emulate(calls_program)
    FunctionTracer(traced.ftrace).start()
    assert run_to_exit(traced) == 0
    assert traced.machine.stdout == plain.machine.stdout == b"sum 18\n"  # type: ignore[attr-defined]


def test_tracer_and_regs_user_share_a_site(calls_program: Path) -> None:
    """A site with two users (tracer + a regs user) goes through the regs
    trampoline and both run; the program's result is unchanged."""
    target = Target.emulate(calls_program)
    tracer = FunctionTracer(target.ftrace, ["leaf"])
    tracer.start()
    rt = target.runtime
    stub = FtraceOps("regs-stub", rt.symbol("armlp_ftrace_stub"),
                     flags=FTRACE_OPS_FL_SAVE_REGS, filters=["leaf"])
    target.ftrace.register_ftrace_function(stub)
    leaf = target.ftrace.find_function("leaf")
    assert len(leaf.users) == 2
    assert run_to_exit(target) == 0
    assert target.machine.stdout == b"sum 18\n"  # type: ignore[attr-defined]
    assert len(tracer.read()) == 6


def test_site_users_change_safely_under_running_readers(calls_program: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads read a site's users while armlp edits them (qemu-user runs
    them meanwhile): a user keeps its slot, a slot is filled before ``nops``
    covers it and cleared only after ``nops`` no longer does, so a reader
    never finds a neighbour shifted into a slot (called twice) nor garbage.
    (Shifting the list on removal crashed the stress test: a worker read
    ``nops`` 1 and then the cleared slot.)"""
    target = Target.emulate(calls_program)
    ft, rt = target.ftrace, target.runtime
    opss = [FtraceOps(f"u{i}", rt.symbol("armlp_ftrace_stub"), flags=FTRACE_OPS_FL_SAVE_REGS,
                      filters=["leaf"]) for i in range(3)]
    for ops in opss[:2]:
        ft.register_ftrace_function(ops)
    leaf = ft.find_function("leaf")
    nops_at = leaf.record + SITE_NOPS_OFFSET
    regs_slot = [leaf.record + SITE_OPS_OFFSET + 4 * (SITE_MAX_OPS + i) for i in range(3)]
    writes: list[tuple[int, bytes]] = []
    real_write = target.machine.write

    def logged_write(address: int, data: bytes) -> None:
        writes.append((address, bytes(data)))
        real_write(address, data)

    monkeypatch.setattr(target.machine, "write", logged_write)

    def view() -> tuple[int, list[int]]:
        return (target.machine.read(nops_at, 1)[0],
                [read_word(target.machine, a) for a in regs_slot])

    assert view() == (2, [opss[0].regs_address, opss[1].regs_address, 0])
    ft.unregister_ftrace_function(opss[0])
    assert view() == (2, [0, opss[1].regs_address, 0])        # u1 did not move
    ft.register_ftrace_function(opss[2])
    assert view() == (2, [opss[2].regs_address, opss[1].regs_address, 0])
    ft.unregister_ftrace_function(opss[1])
    assert view() == (1, [opss[2].regs_address, 0, 0])
    order = [("nops" if a == nops_at else f"slot{regs_slot.index(a)}", d[0] if len(d) == 1
              else int.from_bytes(d, "little")) for a, d in writes
             if a == nops_at or a in regs_slot]
    # Removal of u1 (slot 1, the last one in use): nops shrinks, then the slot clears.
    assert order[-2:] == [("nops", 1), ("slot1", 0)]
    # Adding u2: its slot is filled before nops is written.
    i = order.index(("slot0", opss[2].regs_address))
    assert ("nops", 2) in order[i + 1:]
    assert run_to_exit(target) == 0
    assert target.machine.stdout == b"sum 18\n"  # type: ignore[attr-defined]


def test_unregister_restores_the_nop(calls_program: Path) -> None:
    target = Target.emulate(calls_program)
    tracer = FunctionTracer(target.ftrace, ["top"])
    tracer.start()
    top = target.ftrace.find_function("top")
    assert read_word(target.machine, top.ip) != NOP
    tracer.stop()
    assert read_word(target.machine, top.ip) == NOP
    assert run_to_exit(target) == 0
    assert tracer.read() == []


def _snapshot(target: Target) -> dict[int, bytes]:
    """Every byte armlp's ftrace owns: the sites and the site records."""
    m = target.machine
    snap = {r.ip: m.read(r.ip, 4) for r in target.ftrace.records.values()}
    snap.update({r.record: m.read(r.record, 52) for r in target.ftrace.records.values()})
    rt = target.runtime
    for name in ("armlp_ftrace_function", "armlp_ftrace_op", "armlp_sites"):
        snap[rt.symbol(name)] = m.read(rt.symbol(name), 8)
    return snap


def test_site_changed_under_us_is_refused_untouched(calls_program: Path) -> None:
    target = Target.emulate(calls_program)
    leaf = target.ftrace.find_function("leaf")
    foreign = struct.pack("<I", 0xE1A00000)   # somebody wrote a nop there
    target.machine.write(leaf.ip, foreign)
    before = _snapshot(target)
    tracer = FunctionTracer(target.ftrace, ["leaf", "top"])
    with pytest.raises(CodeModificationError, match="changed under armlp"):
        tracer.start()
    assert _snapshot(target) == before
    assert target.ftrace.ops == []


def test_init_refuses_a_program_whose_sites_changed(calls_program: Path) -> None:
    from armlp.elf.image import ElfImage
    from armlp.machine.emulator import Emulator

    emu = Emulator.from_elf(calls_program)
    image = ElfImage(calls_program)
    from armlp.analysis.scan import scan
    site = scan(image).find("middle").site
    assert site is not None
    emu.write(site, struct.pack("<I", NOP))
    regions = emu.regions()
    with pytest.raises(ArmlpError, match="not 'bl __gnu_mcount_nc'"):
        Target.attach(emu, image)
    assert emu.regions() == regions      # no runtime memory was even allocated


def test_trace_bad_program_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "notelf"
    bad.write_bytes(b"hello")
    res = armlp("trace", bad)
    assert res.code == 2 and res.err.startswith("armlp: error:") and res.err.count("\n") == 1


CORPUS_FLAGS = [["-O0"], ["-O1"], ["-O2"], ["-Os"], ["-O3"],
                ["-O0", "-mno-apcs-frame"], ["-O2", "-mno-apcs-frame"],
                ["-Os", "-mno-apcs-frame"], ["-O3", "-mno-apcs-frame"]]


@pytest.mark.parametrize("flags", CORPUS_FLAGS, ids=lambda f: "_".join(f))
def test_regs_path_gives_exact_entry_context(flags: list[str]) -> None:
    """The seed's reviewer asked: can we really undo the prologue?  For every
    patchable corpus function, random contexts, redirect to a probe through
    the generic regs path, the fast path's per-function trampoline and the
    entry branch: the probe sees r0-r11, sp, lr and the stack arguments
    exactly as the caller set them."""
    prog = build_program([CORPUS / "funcs.c", CORPUS / "other.c", CORPUS / "prog_main.c"],
                         cflags=flags)
    target = Target.emulate(prog)
    proofs = Prover(target, seed=len(flags)).prove(target.ftrace.records.values(), trials=12,
                                                   paths=("generic", "fast", "entry"))
    names = {p.name for p in proofs}
    assert {"frame_64k", "many_args", "varargs_sum", "struct_ret"} <= names
    rules = {p.rule for p in proofs}
    assert rules == ({"push"} if "-mno-apcs-frame" in flags else {"apcs", "push"})
    failed = [(p.name, k, v.mismatch) for p in proofs for k, v in p.paths.items()
              if not v.verified]
    assert failed == []
    assert all(set(p.paths) == {"generic", "fast", "entry"} for p in proofs)


def test_prover_detects_a_wrong_undo() -> None:
    """The proof can fail: corrupt one record's frame size and it must."""
    prog = build_program([CORPUS / "funcs.c", CORPUS / "other.c", CORPUS / "prog_main.c"],
                         cflags=["-O2", "-mno-apcs-frame"])
    target = Target.emulate(prog)
    rec = next(r for r in target.ftrace.records.values()
               if r.report.verdict.rule == "push" and r.report.undo
               and r.report.undo.frame_size > 0)
    assert rec.report.undo is not None
    target.machine.write(rec.record + 12, struct.pack("<I", rec.report.undo.frame_size + 8))
    proofs = Prover(target).prove([rec], trials=2)
    assert not proofs[0].verified and "sp=" in (proofs[0].paths["generic"].mismatch or "")


def test_prover_detects_a_wrong_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trampoline that undoes one word too little must fail the fast proof."""
    import armlp.verify as verify
    from armlp.analysis.prologue import UndoRecipe
    from armlp.livepatch.trampoline import build_trampoline

    def off_by_four(undo: UndoRecipe, target: int,  # type: ignore[no-untyped-def]
                    thumb: bool = False):
        return build_trampoline(UndoRecipe(undo.rule, undo.frame_size - 4, undo.loads,
                                           undo.fp_offset), target, thumb=thumb)
    monkeypatch.setattr(verify, "build_trampoline", off_by_four)
    prog = build_program([CORPUS / "funcs.c", CORPUS / "other.c", CORPUS / "prog_main.c"],
                         cflags=["-O2", "-mno-apcs-frame"])
    target = Target.emulate(prog)
    rec = target.ftrace.find_function("many_args")
    proofs = Prover(target).prove([rec], trials=2, paths=("fast",))
    assert not proofs[0].paths["fast"].verified


def test_runtime_out_of_branch_range_goes_through_veneers(calls_program: Path) -> None:
    """With the runtime loaded far (> 32 MiB) from the program, every enabled
    site calls a veneer within range, and tracing still works exactly."""
    from armlp.analysis.scan import scan
    from armlp.arm.a32 import branch_in_range, decode_branch
    from armlp.elf.image import ElfImage
    from armlp.ftrace.core import Ftrace
    from armlp.machine.emulator import Emulator
    from armlp.runtime.module import Runtime

    image = ElfImage(calls_program)
    emu = Emulator.from_elf(calls_program)
    ftrace = Ftrace(emu, scan(image))
    ftrace.runtime = Runtime.load(emu)            # no 'near': far from the text
    caller = ftrace.runtime.symbol("ftrace_caller")
    text = image.section(".text")
    assert text is not None
    assert not branch_in_range(text.addr, caller)
    ftrace.ftrace_init()
    target = Target(emu, image, ftrace.scan, ftrace.runtime, ftrace, ftrace.heap)
    tracer = FunctionTracer(ftrace)
    tracer.start()
    for rec in ftrace.records.values():
        br = decode_branch(read_word(emu, rec.ip), rec.ip)
        assert br is not None and br.kind == "bl" and br.target != caller
        assert read_word(emu, br.target + 4) == caller      # the veneer's literal
    assert run_to_exit(target) == 0
    assert [(e.function, e.caller, e.depth) for e in tracer.read()] == expected_calls()
