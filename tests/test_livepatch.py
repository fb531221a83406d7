"""The livepatch core on the emulator: every prologue shape, stacking with
disables in every order, statics, a function live in an outer frame, and
refusals that leave the target byte-for-byte untouched."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from armlp.errors import ArmlpError
from armlp.livepatch import Livepatch
from armlp.machine.emulator import Emulator
from armlp.program_build import build_program
from armlp.target import Target
from armlp.toolchain import patch_cflags, tool

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"
SOURCES = [HERE / "corpus" / "lp_prog.c", HERE / "corpus" / "lp_other.c"]


@pytest.fixture(scope="module", params=[["-O2"], ["-O2", "-mno-apcs-frame"]],
                ids=["apcs", "push"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lp") / "lp_prog"
    return build_program(SOURCES, out, cflags=request.param)


def build_patch(name: str, program: Path, *, bind: bool = True) -> Path:
    from armlp.elf.image import ElfImage
    out = program.parent / f"{name}.o"
    build_id = ElfImage(program).build_id if bind else None
    subprocess.run([tool("gcc"), *patch_cflags(build_id), "-c", str(PATCHES / f"{name}.c"),
                    "-o", str(out)], check=True)
    return out


FAST = True


@pytest.fixture(autouse=True, params=[True, False], ids=["fast", "generic"])
def path(request: pytest.FixtureRequest) -> None:
    """Every test runs with the fast path on and with the generic path only."""
    global FAST
    FAST = request.param


def fresh(program: Path) -> tuple[Target, Livepatch, Emulator]:
    target = Target.emulate(program)
    assert isinstance(target.machine, Emulator)
    return target, Livepatch(target, fast=FAST), target.machine


def fn(target: Target, name: str, sympos: int | None = None) -> int:
    return target.scan.find(name, sympos).fn.address


def snapshot(emu: Emulator) -> dict[tuple[int, int], bytes]:
    """Every mapped byte of the target."""
    return {(s, e): emu.read(s, e - s) for s, e in ((r.start, r.end) for r in emu.regions())}


def test_every_shape_patched_and_unpatched(program: Path) -> None:
    target, lp, emu = fresh(program)
    patch = lp.load(build_patch("shapes", program))
    calls = {
        "leaf": ((5,), 6, 1005),
        "many": ((1, 2, 3, 4, 5, 6), 21, 42),
        "vsum": ((3, 1, 2, 3), 6, 60),
        "five_sum": ((2,), 10, 30),
        "bigframe": ((3,), 4, 108),
    }

    def results() -> dict[str, int]:
        return {k: emu.call(fn(target, k), args) for k, (args, _, _) in calls.items()}

    def wide() -> int:
        lo = emu.call(fn(target, "wide"), (5, 0, 3, 0, 7, 0))   # a=5, b=3, c=7 (r2 skipped)
        return lo

    assert results() == {k: v[1] for k, v in calls.items()} and wide() == 22
    lp.enable(patch)
    assert results() == {k: v[2] for k, v in calls.items()} and wide() == 8
    lp.disable(patch)
    assert results() == {k: v[1] for k, v in calls.items()} and wide() == 22
    assert patch.memory == 0          # freed: nothing of it is on the stack


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))),
                         ids=lambda o: "".join(map(str, o)))
def test_three_stacked_patches_disabled_in_every_order(order: tuple[int, ...],
                                                       program: Path) -> None:
    target, lp, emu = fresh(program)
    patches = [lp.load(build_patch(f"stack{n}", program)) for n in (1, 2, 3)]
    leaf = fn(target, "leaf")
    assert emu.call(leaf, (1,)) == 2
    for i, p in enumerate(patches):
        lp.enable(p)
        assert emu.call(leaf, (1,)) == 1 + 100 * (i + 1)    # the newest wins
    alive = [1, 2, 3]
    for i in order:
        lp.disable(patches[i])
        alive.remove(i + 1)
        want = 1 + 100 * alive[-1] if alive else 2         # the newest still enabled
        assert emu.call(leaf, (1,)) == want
    assert lp.stacks == {}


def test_patch_uses_program_statics(program: Path) -> None:
    target, lp, emu = fresh(program)
    use_helper = fn(target, "use_helper")
    assert emu.call(use_helper, (2,)) == 2 * 2 + 7
    lp.enable(lp.load(build_patch("statics", program)))
    assert emu.call(use_helper, (2,)) == 100 * (2 * 2) + 7


def test_static_with_sympos_is_the_right_one(program: Path) -> None:
    target, lp, emu = fresh(program)
    lp.enable(lp.load(build_patch("helper2", program)))
    assert emu.call(fn(target, "use_helper2"), (2,)) == 60      # lp_other.c's helper
    assert emu.call(fn(target, "use_helper"), (2,)) == 4 + 7    # lp_prog.c's is untouched


def test_a_thread_inside_the_function_keeps_the_old_code_until_it_leaves(program: Path) -> None:
    """The consistency model: rec(5) is stopped at the entry of its call
    rec(2) and the patch is enabled there.  rec is on the thread's stack,
    so the thread stays unpatched: every call it makes until it is out of
    rec runs the old code (+1 each: 5), never a mix (the immediate model
    gave 3 + 20).  Once its stack is clear of rec it switches, and the
    transition completes."""
    target, lp, emu = fresh(program)
    rec = fn(target, "rec")
    patch = lp.load(build_patch("rec", program))
    hits = []

    def at_entry(e: Emulator, address: int, _size: int) -> None:
        if address == rec:
            hits.append(e.reg("r0"))
            if e.reg("r0") == 2:
                e.stop()
    handle = emu.hook_code(at_entry, rec, rec)
    saved = emu.get_regs()
    emu.set_regs(saved.__class__(list(saved.r), saved.sp & ~7, 0xFFFF8000, rec, saved.cpsr))
    emu.set_reg("r0", 5)
    stop = emu.run()
    assert stop.reason.value == "stopped" and hits == [5, 4, 3, 2]
    emu.remove_hook(handle)
    lp.enable(patch)
    assert lp.transition is not None
    blocked = lp.transition.blocked()
    assert len(blocked) == 1 and "in rec" in blocked[0]["reason"], blocked
    stop = emu.run(until=0xFFFF8000)
    assert emu.reg("r0") == 5
    emu.set_regs(saved)             # back where the program was: no rec on the stack
    assert lp.try_complete() and lp.transition is None
    assert emu.call(rec, (5,)) == 50
    lp.disable(patch)
    assert lp.transition is None
    assert emu.call(rec, (5,)) == 5


@pytest.mark.parametrize("name,message", [
    ("untraced", "not patchable"),
    ("missing", "no_such_function"),
    ("nosuchold", "ghost"),
    ("ambiguous", "ambiguous"),
])
def test_refusals_leave_the_target_untouched(name: str, message: str, program: Path) -> None:
    _target, lp, emu = fresh(program)
    before = snapshot(emu)
    with pytest.raises(ArmlpError, match=message):
        lp.enable(lp.load(build_patch(name, program)))
    assert snapshot(emu) == before


def test_a_patch_that_declares_nothing_is_refused(program: Path, tmp_path: Path) -> None:
    """Only a name: no function, callback, state or replace (a patch may
    replace nothing, as the kernel's test_klp_state, but must do something)."""
    src = tmp_path / "empty.c"
    src.write_text('#include <armlp/livepatch.h>\nARMLP_PATCH("empty");\nint unused;\n')
    obj = tmp_path / "empty.o"
    subprocess.run([tool("gcc"), *patch_cflags(None), "-c", str(src), "-o", str(obj)],
                   check=True)
    _target, lp, emu = fresh(program)
    before = snapshot(emu)
    with pytest.raises(ArmlpError, match="declares nothing"):
        lp.enable(lp.load(obj))
    assert snapshot(emu) == before


def test_patch_for_another_program_is_refused(program: Path, tmp_path: Path) -> None:
    other = build_program([HERE / "corpus" / "lp_prog.c", HERE / "corpus" / "lp_other.c"],
                          tmp_path / "other", cflags=["-O1"])
    patch = build_patch("stack1", other)
    _target, lp, emu = fresh(program)
    before = snapshot(emu)
    with pytest.raises(ArmlpError, match="build-id"):
        lp.enable(lp.load(patch))
    assert snapshot(emu) == before


def test_wrong_architecture_patch_is_refused(program: Path, tmp_path: Path) -> None:
    host_obj = tmp_path / "x86.o"
    subprocess.run(["gcc", "-c", "-x", "c", "-", "-o", str(host_obj)],
                   input=b"int f(void){return 1;}", check=True)
    _target, lp, emu = fresh(program)
    before = snapshot(emu)
    with pytest.raises(ArmlpError, match=r"not ARM|64-bit"):
        lp.load(host_obj)
    assert snapshot(emu) == before


def test_failure_halfway_rolls_back(program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after some functions were switched restores everything."""
    target, lp, emu = fresh(program)
    patch = lp.load(build_patch("shapes", program))
    before = snapshot(emu)
    calls = []
    real = lp.funcs.push

    def failing_push(p, f, undo, tramps, **kw):  # type: ignore[no-untyped-def]
        calls.append(f.label)
        if len(calls) == 4:
            raise ArmlpError("injected failure")
        return real(p, f, undo, tramps, **kw)
    monkeypatch.setattr(lp.funcs, "push", failing_push)
    with pytest.raises(ArmlpError, match="injected"):
        lp.enable(patch)
    regions_before = {k for k in before}
    after = snapshot(emu)
    # Every region that existed before holds the same bytes (new heap chunks
    # may stay mapped, unused).
    assert {k: after[k] for k in regions_before if k in after} == {
        k: v for k, v in before.items() if k in after}
    assert emu.call(fn(target, "leaf"), (5,)) == 6 and lp.stacks == {}


def test_tracer_on_a_patched_function_falls_back_to_the_generic_path(program: Path) -> None:
    """The fast path's entry branch would hide calls from the tracer: with a
    second user the site goes back through the regs trampoline (calls still
    reach the new function, and are traced), and the fast path returns when
    the tracer leaves."""
    from armlp.ftrace.sitecode import NOP
    from armlp.ftrace.tracer import FunctionTracer
    from armlp.machine.base import read_word

    target, lp, emu = fresh(program)
    leaf = fn(target, "leaf")
    original_entry = read_word(emu, leaf)
    lp.enable(lp.load(build_patch("stack1", program)))
    rec = target.ftrace.find_function("leaf")
    assert (read_word(emu, leaf) != original_entry) == FAST
    tracer = FunctionTracer(target.ftrace, ["leaf"])
    tracer.start()
    assert read_word(emu, leaf) == original_entry
    assert read_word(emu, rec.ip) == target.ftrace.wanted_word(rec) != NOP
    assert emu.call(leaf, (1,)) == 101
    assert [e.function for e in tracer.read()] == ["leaf"]
    tracer.stop()
    assert (read_word(emu, leaf) != original_entry) == FAST
    assert emu.call(leaf, (1,)) == 101


def test_replace_names_the_old_function_as_written(program: Path) -> None:
    target, lp, emu = fresh(program)
    patch = lp.load(build_patch("renamed", program))
    assert [(f.old_name, f.new_name) for f in patch.funcs] == [("leaf", "lp_leaf")]
    lp.enable(patch)
    assert emu.call(fn(target, "leaf"), (1,)) == 8


def test_disabled_patch_is_freed_only_when_nothing_refers_to_it(program: Path) -> None:
    """A disabled patch's memory stays while a register or a word of the
    program's data holds one of its addresses (a callback the program kept),
    and is unmapped once neither does."""
    target, lp, emu = fresh(program)
    patch = lp.load(build_patch("rec", program))
    lp.enable(patch)
    new = patch.funcs[0].new_func
    sink = int(target.image.symbols.by_name["rec_sink"][0].value)
    emu.write(sink, new.to_bytes(4, "little"))      # the program keeps a pointer
    lp.disable(patch)
    assert lp.deferred == [patch] and any(r.start <= new < r.end for r in emu.regions())
    emu.write(sink, bytes(4))
    emu.set_reg("r5", new)                           # ... then only a register
    assert lp.release_deferred() == [] and lp.deferred == [patch]
    emu.set_reg("r5", 0)
    assert lp.release_deferred() == [patch] and lp.deferred == []
    assert not any(r.start <= new < r.end for r in emu.regions())


def test_callbacks_run_in_the_target_at_the_kernels_points(program: Path) -> None:
    """pre_patch before any redirect (it sees the original leaf), post_patch
    after (the replacement), pre_unpatch before the way back, post_unpatch
    after it; the object they get is the program's (name NULL)."""
    target, lp, emu = fresh(program)
    sink = target.image.symbols.lookup("rec_sink").value

    def rec_sink() -> int:
        return int.from_bytes(emu.read(sink, 4), "little", signed=True)

    patch = lp.load(build_patch("callbacks", program))
    lp.enable(patch)
    assert rec_sink() == 2 * 1000 + 101
    assert emu.call(fn(target, "leaf"), (1,)) == 101
    lp.disable(patch)
    assert rec_sink() == (2101 * 10 + 3) * 1000 + 2
    assert emu.call(fn(target, "leaf"), (1,)) == 2


def test_a_refusing_pre_patch_changes_nothing(program: Path) -> None:
    target, lp, emu = fresh(program)
    text = [(r.start, r.end) for r in emu.regions() if r.start <= fn(target, "leaf") < r.end]
    before = [emu.read(s, e - s) for s, e in text]
    with pytest.raises(ArmlpError, match=r"pre_patch callback refused the patch \(-19\); "
                                         r"nothing changed"):
        lp.enable(lp.load(build_patch("callbacks_refuse", program)))
    assert [emu.read(s, e - s) for s, e in text] == before
    assert emu.call(fn(target, "leaf"), (1,)) == 2
    assert lp.patches == [] and lp.stacks == {}


def test_shadow_variables_in_the_program(program: Path) -> None:
    """The kernel's shadow variable API, kept by the runtime in the target:
    per-object data, a collision refused, constructors and destructors,
    free and free_all, freed space reused, and data shared by patches."""
    target, lp, emu = fresh(program)
    leaf = fn(target, "leaf")
    first = lp.load(build_patch("shadow", program))
    lp.enable(first)
    assert [emu.call(leaf, (x,)) for x in (5, 5, 7, 5)] == [1, 2, 1, 3]
    assert emu.call(fn(target, "use_helper"), (1,)) == 0x3FF      # every check
    second = lp.load(build_patch("shadow2", program))
    lp.enable(second)
    assert [emu.call(leaf, (x,)) for x in (5, 7, 9)] == [1003, 1001, 1000]
    lp.disable(second)
    assert emu.call(leaf, (5,)) == 4


def test_atomic_replace(program: Path) -> None:
    """A cumulative patch replaces every enabled patch at once: functions only
    they changed run their original code, they are disabled without their
    callbacks, their memory goes the way of any disabled patch's."""
    target, lp, emu = fresh(program)
    sink = target.image.symbols.lookup("rec_sink").value
    leaf, many = fn(target, "leaf"), fn(target, "many")
    lp.enable(lp.load(build_patch("callbacks", program)))      # leaf: x + 100
    lp.enable(lp.load(build_patch("stack2", program)))
    before = emu.read(sink, 4)
    cumulative = lp.load(build_patch("cumulative", program))
    assert cumulative.replace
    lp.enable(cumulative)
    assert [p.name for p in lp.patches] == ["cumulative"]
    assert emu.call(leaf, (1,)) == 2
    assert emu.call(many, (1, 2, 3, 4, 5, 6)) == (-21) & 0xFFFFFFFF
    assert emu.read(sink, 4) == before          # the replaced' callbacks did not run
    lp.disable(cumulative)
    assert emu.call(many, (1, 2, 3, 4, 5, 6)) == 21


def test_atomic_replace_keeps_a_thread_inside_a_dropped_function(program: Path) -> None:
    """The replace's nop funcs: rec is patched (rec_v2, +10 a level; GCC
    makes its recursion a loop) and a thread is stopped inside rec_v2 when a
    cumulative patch that does
    not cover rec is enabled.  rec_v2 is on the thread's stack, so the
    transition waits for it (blocked "in rec_v2") instead of dropping rec's
    patch under it; once it is out, rec runs its original code again and its
    site is back to the NOP."""
    target, lp, emu = fresh(program)
    rec = fn(target, "rec")
    first = lp.load(build_patch("rec", program))
    lp.enable(first)
    assert lp.transition is None and emu.call(rec, (5,)) == 50
    (f,) = first.funcs
    depth = []

    def at_entry(e: Emulator, address: int, _size: int) -> None:
        if address == f.new_func:
            depth.append(e.reg("r0"))
            e.stop()
    handle = emu.hook_code(at_entry, f.new_func, f.new_func)
    saved = emu.get_regs()
    emu.set_regs(saved.__class__(list(saved.r), saved.sp & ~7, 0xFFFF8000, rec, saved.cpsr))
    emu.set_reg("r0", 5)
    assert emu.run().reason.value == "stopped" and depth == [5]
    emu.remove_hook(handle)
    cumulative = lp.load(build_patch("cumulative", program))
    lp.enable(cumulative)
    t = lp.transition
    assert t is not None and [n.old_name for n in cumulative.nops] == ["rec"]
    assert any("in rec_v2" in b["reason"] for b in t.blocked()), t.blocked()
    emu.run(until=0xFFFF8000)
    assert emu.reg("r0") == 50           # rec_v2 all the way down: no mix
    emu.set_regs(saved)
    assert lp.try_complete() and lp.transition is None
    assert [p.name for p in lp.patches] == ["cumulative"] and cumulative.nops == []
    assert emu.call(rec, (5,)) == 5
    assert target.ftrace.find_function("rec").users == []      # back to the NOP
    lp.disable(cumulative)
    assert emu.call(rec, (5,)) == 5


def test_system_states(program: Path) -> None:
    """The kernel's rule: a state of an enabled patch must be in the new one in
    the same or a newer version; a replace must carry every one."""
    target, lp, emu = fresh(program)
    leaf = fn(target, "leaf")
    two = lp.load(build_patch("state2", program))
    assert two.states == {1: 2}
    lp.enable(two)
    with pytest.raises(ArmlpError, match=r"state1: not compatible with state2: system state 1 "
                                         r"version 2 is newer"):
        lp.enable(lp.load(build_patch("state1", program)))
    with pytest.raises(ArmlpError, match=r"cumulative: not compatible with state2: system "
                                         r"state 1 version 2 would be dropped by the replace"):
        lp.enable(lp.load(build_patch("cumulative", program)))
    assert emu.call(leaf, (1,)) == 20001
    lp.enable(lp.load(build_patch("stack1", program)))      # no state, no replace: fine
    assert [p.name for p in lp.patches] == ["state2", "stack1"]
