"""The kernel livepatch API beyond replacing functions, in armlp_klp: the
callbacks and shadow variables of lib/livepatch/test_klp_callbacks_demo.c and
test_klp_shadow_vars.c, ported to armlp's patch format and run on the stock
kernel with test-callbacks.sh's and test-shadow-vars.sh's log, adapted."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from armlp.kernel.build import CORE_NAME
from armlp.kernel.vm import Guest
from conftest import Builder
from kernel_helpers import LIVEPATCH, PATCHES, build_patch, release_kit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def guest(builder: Builder) -> Iterator[Guest]:
    files = {}
    for name in ("callbacks_demo", "callbacks_refuse", "shadow_vars", "cmdline_one",
                 "version_one", "cumulative", "state_v1", "state_v2"):
        for ko in build_patch(builder, PATCHES / f"{name}.c").glob("*.ko"):
            files[ko.name] = ko
    with Guest(release_kit(), files) as g:
        g.sh(f"insmod /armlp/{CORE_NAME}.ko")
        yield g


def log(g: Guest) -> list[str]:
    """The kernel log since the last call, without timestamps."""
    return [re.sub(r"^\[[ \d.]+\] ", "", ln) for ln in g.sh("dmesg -c").splitlines()]


def disable(g: Guest, name: str) -> None:
    g.sh(f"echo 0 > {LIVEPATCH}/{name}/enabled; while [ -e {LIVEPATCH}/{name} ]; do :; done; "
         f"rmmod {name}")


def without_costs(lines: list[str]) -> list[str]:
    return [re.sub(r" \(switch \d+ us, \d+ attempts?\)", "", ln) for ln in lines]


def test_callbacks_run_at_the_kernels_points(guest: Guest) -> None:
    """test-callbacks, "target module before livepatch" for vmlinux: each
    callback in its place among the transition's lines."""
    g = guest
    log(g)
    g.sh("insmod /armlp/callbacks_demo.ko")
    assert g.sh("cat /proc/cmdline") == "callbacks_demo"
    disable(g, "callbacks_demo")
    assert without_costs(log(g)) == [
        "armlp: enabling patch 'callbacks_demo'",
        "armlp: 'callbacks_demo': initializing patching transition",
        "pre_patch_callback: vmlinux",
        "armlp: 'callbacks_demo': starting patching transition",
        "armlp: 'callbacks_demo': completing patching transition",
        "post_patch_callback: vmlinux",
        "armlp: 'callbacks_demo': patching complete",
        "armlp: 'callbacks_demo': initializing unpatching transition",
        "pre_unpatch_callback: vmlinux",
        "armlp: 'callbacks_demo': starting unpatching transition",
        "armlp: 'callbacks_demo': completing unpatching transition",
        "post_unpatch_callback: vmlinux",
        "armlp: 'callbacks_demo': unpatching complete",
    ]
    assert g.bad_log_lines() == []


def test_pre_patch_refusal_changes_nothing(guest: Guest) -> None:
    """test-callbacks, "pre-patch callback -ENODEV"."""
    g = guest
    before = g.sh("cat /proc/cmdline")
    log(g)
    rc, out = g.run("insmod /armlp/callbacks_refuse.ko")
    assert rc != 0 and "No such device" in out
    once = ["armlp: enabling patch 'callbacks_refuse'",
            "armlp: 'callbacks_refuse': initializing patching transition",
            "pre_patch_callback: vmlinux: refusing",
            "armlp: 'callbacks_refuse': pre-patch callback failed for object 'vmlinux' "
            "(-19): refused"]
    # busybox's insmod tries finit_module, then init_module: the module's
    # init may run twice, each refused alike
    lines = log(g)
    assert lines in (once, once + once), "the kernel log was:\n" + "\n".join(lines)
    assert g.sh("cat /proc/cmdline") == before
    assert g.sh(f"ls {LIVEPATCH}") == ""
    assert "callbacks_refuse" not in g.sh("cat /proc/modules")
    assert "cmdline_proc_show" not in g.sh("cat /sys/kernel/tracing/enabled_functions")


def test_shadow_variables(guest: Guest) -> None:
    """test-shadow-vars: alloc, get, get_or_alloc, a collision, free,
    free_all with destructors; and shadow data in use by the new code."""
    g = guest
    log(g)
    g.sh("insmod /armlp/shadow_vars.ko")
    lines = [ln for ln in log(g) if ln.startswith(("shadow_vars:", "armlp: shadow"))]
    assert lines[0] == "shadow_vars: alloc <obj1> 11, <obj2> 22"
    assert lines[1:3] == ["shadow_vars: get <obj1> same",
                          "shadow_vars: get_or_alloc <obj1> same, value 11"]
    assert re.fullmatch(r"armlp: shadow <\w+, 1234> exists already: not allocated again",
                        lines[3]), lines[3]
    assert lines[4:] == ["shadow_vars: alloc <obj1> again refused",
                         "shadow_vars: dtor <obj1, 0x1234> value 11",
                         "shadow_vars: get <obj1> after free gone",
                         "shadow_vars: dtor <obj2, 0x1234> value 22",
                         "shadow_vars: get <obj2> after free_all gone"]
    # one shell (one task) reads three times through the builtin `read`
    assert g.sh("for i in 1 2 3; do read l < /proc/cmdline; echo $l; done").splitlines() == [
        "reads by this task: 1", "reads by this task: 2", "reads by this task: 3"]
    disable(g, "shadow_vars")
    assert "shadow_vars: task sh read 3 times" in log(g)
    assert g.bad_log_lines() == []


def test_atomic_replace(guest: Guest) -> None:
    """test-livepatch's "atomic replace livepatch": a cumulative patch of
    /proc/cmdline replaces two enabled patches in one switch; /proc/version,
    which only the older ones changed, is the original again."""
    g = guest
    cmdline, version = g.sh("cat /proc/cmdline"), g.sh("cat /proc/version")
    g.sh("insmod /armlp/cmdline_one.ko; insmod /armlp/version_one.ko")
    assert (g.sh("cat /proc/cmdline"), g.sh("cat /proc/version")) == ("one", "version one")
    log(g)
    g.sh("insmod /armlp/cumulative.ko")
    assert (g.sh("cat /proc/cmdline"), g.sh("cat /proc/version")) == ("cumulative", version)
    g.sh(f"while [ -e {LIVEPATCH}/cmdline_one ] || [ -e {LIVEPATCH}/version_one ]; do :; done")
    assert g.sh(f"ls {LIVEPATCH}") == "cumulative"
    lines = without_costs(log(g))
    assert "armlp: 'cmdline_one': replaced by 'cumulative'" in lines
    assert "armlp: 'version_one': replaced by 'cumulative'" in lines
    g.sh("rmmod cmdline_one version_one")          # the replaced are out, removable
    disable(g, "cumulative")
    assert (g.sh("cat /proc/cmdline"), g.sh("cat /proc/version")) == (cmdline, version)
    assert g.bad_log_lines() == []


def test_system_states(guest: Guest) -> None:
    """test-state: a state made by version 1, taken over by version 2 (atomic
    replace), version 1 refused over it, a replace that would drop it
    refused; freed once, by the last patch out."""
    g = guest
    log(g)
    g.sh("insmod /armlp/state_v1.ko")
    assert "state_v1: state 1: allocated" in log(g)
    g.sh("insmod /armlp/state_v2.ko")
    lines = log(g)
    assert "state_v2: state 1: taking over from version 1" in lines
    assert "armlp: 'state_v1': replaced by 'state_v2'" in lines
    assert not [ln for ln in lines if "freed" in ln]       # the replaced' callbacks do not run
    g.sh(f"while [ -e {LIVEPATCH}/state_v1 ]; do :; done; rmmod state_v1")
    for module, why in (("state_v1", "system state 1 version 2 is newer"),
                        ("cumulative", "system state 1 version 2 would be dropped by the "
                                       "replace")):
        rc, _ = g.run(f"insmod /armlp/{module}.ko")
        assert rc != 0, module
        assert any(why in ln and "refused" in ln for ln in log(g)), module
        assert g.sh(f"ls {LIVEPATCH}") == "state_v2"
    disable(g, "state_v2")
    assert "state_v2: state 1: freed" in log(g)
    assert g.bad_log_lines() == []
