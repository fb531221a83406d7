"""The kernel's livepatch selftests (tools/testing/selftests/livepatch),
ported to a program: one test per scenario, named after it, comparing the
livepatch messages and the callbacks' output, in order, with the kernel's
expected log (``livepatch: 'NAME': starting patching transition``...).

Adaptations: the object is the program, not vmlinux (the callbacks print
"program"); ``modprobe`` is ``enable``, ``echo 0 > .../enabled`` is
``disable``, ``rmmod`` has no message; the test modules are the patches
``tests/patches/test_klp_*.c`` (same names); the programs run in the
emulator, so each step is deterministic.  The kernel's own test modules run
in the VM (tests/test_kernel_api.py); test-ftrace, test-sysfs and
test-syscall have their program counterparts in tests/test_live.py (trace
and patch together, the status view) and tests/test_live_stress.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from armlp.errors import PatchError
from armlp.livepatch import Livepatch
from armlp.machine.emulator import Emulator
from armlp.program_build import build_program
from armlp.target import Target
from armlp.toolchain import patch_cflags, tool

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "corpus" / "lp_prog.c", HERE / "corpus" / "lp_other.c"]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_program(SOURCES, tmp_path_factory.mktemp("selftests") / "lp_prog",
                         cflags=["-O2"])


#: Patch objects built from one source with other "module parameters":
#: name -> (source, -D definitions).
VARIANTS = {
    "test_klp_callbacks_demo2": ("test_klp_callbacks_demo", ["DEMO=test_klp_callbacks_demo2"]),
    "test_klp_callbacks_refuse": ("test_klp_callbacks_demo", ["PRE_PATCH_RET=-19"]),
    "test_klp_state3": ("test_klp_state2", ["MODNAME=test_klp_state3"]),
}


def patch(name: str, program: Path) -> Path:
    from armlp.elf.image import ElfImage
    out = program.parent / f"{name}.o"
    source, defines = VARIANTS.get(name, (name, []))
    if not out.exists():
        subprocess.run([tool("gcc"), *patch_cflags(ElfImage(program).build_id),
                        *(f"-D{d}" for d in defines), "-c",
                        str(HERE / "patches" / f"{source}.c"), "-o", str(out)], check=True)
    return out


class Klp:
    """One emulated program, its livepatch core and the log of both."""

    def __init__(self, program: Path) -> None:
        self.target = Target.emulate(program)
        emu = self.target.machine
        assert isinstance(emu, Emulator)
        self.emu = emu
        self.lp = Livepatch(self.target)
        self._seen = 0
        self.lp.console = self._console
        self.program = program

    def _console(self) -> str:
        out = bytes(self.emu.stdout)
        new, self._seen = out[self._seen:], len(out)
        return new.decode()

    def enable(self, name: str) -> None:
        self.lp.enable(self.lp.load(patch(name, self.program)))

    def disable(self, name: str) -> None:
        self.lp.disable(self.lp.find(name))

    def call(self, function: str, *args: int) -> int:
        return self.emu.call(self.target.scan.find(function).fn.address, args)

    def log(self) -> list[str]:
        self.lp.drain_console()
        out, self.lp.log = self.lp.log, []
        return out


def enabling(name: str, between: tuple[str, ...] = (), after: tuple[str, ...] = ()) -> list[str]:
    """The kernel's messages for a patch enabled in one go."""
    return [f"livepatch: enabling patch '{name}'",
            f"livepatch: '{name}': initializing patching transition", *between,
            f"livepatch: '{name}': starting patching transition",
            f"livepatch: '{name}': completing patching transition", *after,
            f"livepatch: '{name}': patching complete"]


def disabling(name: str, between: tuple[str, ...] = (), after: tuple[str, ...] = ()) -> list[str]:
    return [f"livepatch: '{name}': initializing unpatching transition", *between,
            f"livepatch: '{name}': starting unpatching transition",
            f"livepatch: '{name}': completing unpatching transition", *after,
            f"livepatch: '{name}': unpatching complete"]


def callback(name: str, which: str) -> str:
    return f"{name}: {which}_callback: program"


# -- test-livepatch.sh -----------------------------------------------------------

def test_livepatch_basic_function_patching(program: Path) -> None:
    k = Klp(program)
    assert k.call("leaf", 1) == 2
    k.enable("test_klp_livepatch")
    assert k.log() == enabling("test_klp_livepatch")
    assert k.call("leaf", 1) == 1001
    k.disable("test_klp_livepatch")
    assert k.log() == disabling("test_klp_livepatch")
    assert k.call("leaf", 1) == 2


def test_livepatch_multiple_livepatches(program: Path) -> None:
    k = Klp(program)
    k.enable("test_klp_livepatch")
    k.enable("test_klp_atomic_noreplace")
    assert k.log() == enabling("test_klp_livepatch") + enabling("test_klp_atomic_replace")
    assert (k.call("leaf", 1), k.call("many", 1, 2, 3, 4, 5, 6)) == (1001, 28)
    k.disable("test_klp_atomic_replace")
    k.disable("test_klp_livepatch")
    assert k.log() == disabling("test_klp_atomic_replace") + disabling("test_klp_livepatch")
    assert (k.call("leaf", 1), k.call("many", 1, 2, 3, 4, 5, 6)) == (2, 21)


def test_livepatch_atomic_replace_livepatch(program: Path) -> None:
    k = Klp(program)
    k.enable("test_klp_livepatch")
    k.enable("test_klp_atomic_replace")
    assert k.log() == enabling("test_klp_livepatch") + enabling("test_klp_atomic_replace")
    # The first patch is gone: leaf runs its original code again.
    assert [p.name for p in k.lp.patches] == ["test_klp_atomic_replace"]
    assert (k.call("leaf", 1), k.call("many", 1, 2, 3, 4, 5, 6)) == (2, 28)
    k.disable("test_klp_atomic_replace")
    assert k.log() == disabling("test_klp_atomic_replace")
    assert k.call("many", 1, 2, 3, 4, 5, 6) == 21


# -- test-callbacks.sh -------------------------------------------------------------

def test_callbacks_target_module_before_livepatch(program: Path) -> None:
    """Test 1 (the object is there first): every callback at its point."""
    k = Klp(program)
    demo = "test_klp_callbacks_demo"
    k.enable("test_klp_callbacks_demo")
    assert k.log() == enabling(demo, (callback(demo, "pre_patch"),),
                               (callback(demo, "post_patch"),))
    assert k.call("leaf", 1) == 2001
    k.disable(demo)
    assert k.log() == disabling(demo, (callback(demo, "pre_unpatch"),),
                                (callback(demo, "post_unpatch"),))
    assert k.call("leaf", 1) == 2


def test_callbacks_pre_patch_callback_enodev(program: Path) -> None:
    """Test 8: a pre_patch that returns -ENODEV: the patch is refused, the
    transition canceled, nothing changed."""
    k = Klp(program)
    demo = "test_klp_callbacks_demo"
    with pytest.raises(PatchError, match="refused"):
        k.enable("test_klp_callbacks_refuse")
    assert k.log() == [
        f"livepatch: enabling patch '{demo}'",
        f"livepatch: '{demo}': initializing patching transition",
        callback(demo, "pre_patch"),
        "livepatch: pre-patch callback failed for object 'program'",
        f"livepatch: failed to enable patch '{demo}'",
        f"livepatch: '{demo}': canceling patching transition, going to unpatch",
        f"livepatch: '{demo}': completing unpatching transition",
        f"livepatch: '{demo}': unpatching complete",
    ]
    assert k.lp.patches == [] and k.call("leaf", 1) == 2


def test_callbacks_multiple_livepatches(program: Path) -> None:
    """Test 10: two patches with callbacks, enabled and disabled in turn."""
    k = Klp(program)
    d1, d2 = "test_klp_callbacks_demo", "test_klp_callbacks_demo2"
    k.enable("test_klp_callbacks_demo")
    k.enable("test_klp_callbacks_demo2")
    assert k.log() == (enabling(d1, (callback(d1, "pre_patch"),), (callback(d1, "post_patch"),))
                       + enabling(d2, (callback(d2, "pre_patch"),),
                                  (callback(d2, "post_patch"),)))
    k.disable(d2)
    k.disable(d1)
    assert k.log() == (disabling(d2, (callback(d2, "pre_unpatch"),),
                                 (callback(d2, "post_unpatch"),))
                       + disabling(d1, (callback(d1, "pre_unpatch"),),
                                   (callback(d1, "post_unpatch"),)))


def test_callbacks_busy_target(program: Path) -> None:
    """Test 9, adapted: a thread is inside the patched function (stopped at
    leaf's first instruction), so the transition waits and post_patch runs
    only when it completes, after the thread has left."""
    k = Klp(program)
    demo = "test_klp_callbacks_demo"
    leaf = k.target.scan.find("leaf").fn.address
    saved = k.emu.get_regs()
    k.emu.set_regs(saved.__class__(list(saved.r), saved.sp & ~7, 0xFFFF8000, leaf, saved.cpsr))
    k.emu.set_reg("r0", 1)
    k.emu.run(max_instructions=1)           # inside leaf now: its first instruction done
    k.enable("test_klp_callbacks_demo")
    assert k.lp.transition is not None
    assert k.log() == [f"livepatch: enabling patch '{demo}'",
                       f"livepatch: '{demo}': initializing patching transition",
                       callback(demo, "pre_patch"),
                       f"livepatch: '{demo}': starting patching transition"]
    k.emu.run(until=0xFFFF8000)
    assert k.emu.reg("r0") == 2             # the old leaf to the end
    k.emu.set_regs(saved)
    assert k.lp.try_complete()
    assert k.log() == [f"livepatch: '{demo}': completing patching transition",
                       callback(demo, "post_patch"),
                       f"livepatch: '{demo}': patching complete"]


# -- test-state.sh -----------------------------------------------------------------

def loglevel(k: Klp) -> int:
    """The program's console_loglevel (the kernel's, which the patches change)."""
    addr = k.target.image.symbols.lookup("console_loglevel").value
    return int.from_bytes(k.emu.read(addr, 4), "little")


def state_enabling(name: str, allocate: str, fix: str) -> list[str]:
    return enabling(name,
                    (callback(name, "pre_patch"), f"{name}: allocate_loglevel_state: {allocate}"),
                    (callback(name, "post_patch"), f"{name}: fix_console_loglevel: {fix}"))


def state_disabling(name: str) -> list[str]:
    return disabling(name, (callback(name, "pre_unpatch"),
                            f"{name}: restore_console_loglevel: restoring console_loglevel"),
                     (callback(name, "post_unpatch"),
                      f"{name}: free_loglevel_state: freeing space for the stored "
                      f"console_loglevel"))


ALLOCATING = "allocating space to store console_loglevel"
ALLOCATED = "space to store console_loglevel already allocated"
FIXING, TAKING_OVER = "fixing console_loglevel", "taking over the console_loglevel change"


def test_state_system_state_modification(program: Path) -> None:
    k = Klp(program)
    assert loglevel(k) == 4
    k.enable("test_klp_state")
    assert k.log() == state_enabling("test_klp_state", ALLOCATING, FIXING)
    assert loglevel(k) == 15
    k.disable("test_klp_state")
    assert k.log() == state_disabling("test_klp_state")
    assert loglevel(k) == 4


def test_state_taking_over_system_state_modification(program: Path) -> None:
    k = Klp(program)
    k.enable("test_klp_state")
    k.enable("test_klp_state2")
    assert k.log() == (state_enabling("test_klp_state", ALLOCATING, FIXING)
                       + state_enabling("test_klp_state2", ALLOCATED, TAKING_OVER))
    assert [p.name for p in k.lp.patches] == ["test_klp_state2"] and loglevel(k) == 15
    k.disable("test_klp_state2")
    assert k.log() == state_disabling("test_klp_state2")
    assert loglevel(k) == 4        # the value test_klp_state saved, through the take-over


def test_state_compatible_cumulative_livepatches(program: Path) -> None:
    k = Klp(program)
    k.enable("test_klp_state2")
    k.enable("test_klp_state3")
    k.enable("test_klp_state2")
    assert k.log() == (state_enabling("test_klp_state2", ALLOCATING, FIXING)
                       + state_enabling("test_klp_state3", ALLOCATED, TAKING_OVER)
                       + state_enabling("test_klp_state2", ALLOCATED, TAKING_OVER))
    assert loglevel(k) == 15
    k.disable("test_klp_state2")
    assert k.log() == state_disabling("test_klp_state2")
    assert loglevel(k) == 4 and k.lp.patches == []


def test_state_incompatible_cumulative_livepatches(program: Path) -> None:
    k = Klp(program)
    k.enable("test_klp_state2")
    assert k.log() == state_enabling("test_klp_state2", ALLOCATING, FIXING)
    with pytest.raises(PatchError, match="not compatible with test_klp_state2"):
        k.enable("test_klp_state")
    assert k.log() == ["livepatch: Livepatch patch (test_klp_state) is not compatible with the "
                       "already installed livepatches."]
    assert loglevel(k) == 15
    k.disable("test_klp_state2")
    assert k.log() == state_disabling("test_klp_state2")
    assert loglevel(k) == 4


# -- test-shadow-vars.sh -----------------------------------------------------------

#: The kernel's expected log of test_klp_shadow_vars (pointers as PTRn in
#: order of appearance), with size=4 for its size=8: pointers are 4 bytes.
SHADOW_VARS_LOG = """\
klp_shadow_get(obj=PTR1, id=0x1234) = PTR0
  got expected NULL result
shadow_ctor: PTR3 -> PTR2
klp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR2 = PTR3
shadow_ctor: PTR6 -> PTR5
klp_shadow_alloc(obj=PTR1, id=0x1235, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR5 = PTR6
shadow_ctor: PTR8 -> PTR7
klp_shadow_alloc(obj=PTR9, id=0x1234, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR7 = PTR8
shadow_ctor: PTR11 -> PTR10
klp_shadow_alloc(obj=PTR9, id=0x1235, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR10 = PTR11
shadow_ctor: PTR13 -> PTR12
klp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR12 = PTR13
shadow_ctor: PTR16 -> PTR15
klp_shadow_alloc(obj=PTR14, id=0x1235, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR15 = PTR16
klp_shadow_get(obj=PTR1, id=0x1234) = PTR3
  got expected PTR3 -> PTR2 result
klp_shadow_get(obj=PTR1, id=0x1235) = PTR6
  got expected PTR6 -> PTR5 result
klp_shadow_get(obj=PTR9, id=0x1234) = PTR8
  got expected PTR8 -> PTR7 result
klp_shadow_get(obj=PTR9, id=0x1235) = PTR11
  got expected PTR11 -> PTR10 result
klp_shadow_get(obj=PTR14, id=0x1234) = PTR13
  got expected PTR13 -> PTR12 result
klp_shadow_get(obj=PTR14, id=0x1235) = PTR16
  got expected PTR16 -> PTR15 result
klp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR2 = PTR3
  got expected PTR3 -> PTR2 result
klp_shadow_get_or_alloc(obj=PTR9, id=0x1234, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR7 = PTR8
  got expected PTR8 -> PTR7 result
klp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=4, gfp_flags=GFP_KERNEL), ctor=PTR4, \
ctor_data=PTR12 = PTR13
  got expected PTR13 -> PTR12 result
shadow_dtor(obj=PTR1, shadow_data=PTR3)
klp_shadow_free(obj=PTR1, id=0x1234, dtor=PTR17)
klp_shadow_get(obj=PTR1, id=0x1234) = PTR0
  got expected NULL result
shadow_dtor(obj=PTR9, shadow_data=PTR8)
klp_shadow_free(obj=PTR9, id=0x1234, dtor=PTR17)
klp_shadow_get(obj=PTR9, id=0x1234) = PTR0
  got expected NULL result
shadow_dtor(obj=PTR14, shadow_data=PTR13)
klp_shadow_free(obj=PTR14, id=0x1234, dtor=PTR17)
klp_shadow_get(obj=PTR14, id=0x1234) = PTR0
  got expected NULL result
klp_shadow_get(obj=PTR1, id=0x1235) = PTR6
  got expected PTR6 -> PTR5 result
klp_shadow_get(obj=PTR9, id=0x1235) = PTR11
  got expected PTR11 -> PTR10 result
klp_shadow_get(obj=PTR14, id=0x1235) = PTR16
  got expected PTR16 -> PTR15 result
klp_shadow_free_all(id=0x1235, dtor=PTR0)
klp_shadow_get(obj=PTR1, id=0x1235) = PTR0
  got expected NULL result
klp_shadow_get(obj=PTR9, id=0x1235) = PTR0
  got expected NULL result
klp_shadow_get(obj=PTR14, id=0x1235) = PTR0
  got expected NULL result
"""


def test_shadow_vars_basic_shadow_variable_api(program: Path) -> None:
    """The module's init is the patch's pre_patch: the whole API exercised
    through the runtime's shadow variables in the program, echoed line by
    line as the kernel's test module does."""
    k = Klp(program)
    k.enable("test_klp_shadow_vars")
    name = "test_klp_shadow_vars"
    assert k.log() == enabling(name, tuple(f"{name}: {line}"
                                           for line in SHADOW_VARS_LOG.splitlines()))
