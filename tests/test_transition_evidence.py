"""The conservative scan of a thread's stack (livepatch/transition.py
``_evidence``), word by word: what places a thread in a function being
switched, and what is only a stale copy armlp's trampoline left."""

from __future__ import annotations

import struct

import pytest

from armlp.livepatch.transition import Blocking, StackEntry, _evidence
from armlp.machine.base import Regs

STACK = 0x7F000000
THUMB = Blocking(0x1000, 0x1040, "work", None, site=0x1002, thumb=True)
ARM = Blocking(0x2000, 0x2040, "calc", None, site=0x2010, thumb=False)
USER_ARM, USER_THUMB = 0x60000010, 0x20000030


class Memory:
    """A stack of words at STACK: all _evidence reads."""

    def __init__(self, words: list[int]) -> None:
        self.data = struct.pack(f"<{len(words)}I", *words)

    def read(self, address: int, size: int) -> bytes:
        return self.data[address - STACK:address - STACK + size]


def evidence(words: list[int], regs: list[int] | None = None) -> str:
    stack = StackEntry(STACK, STACK + 4 * len(words), 0)
    r = Regs([*(regs or [0] * 13)], STACK, 0x9000, 0x9004)
    return _evidence(Memory(words), r, stack, [THUMB, ARM])  # type: ignore[arg-type]


@pytest.mark.parametrize(("words", "found"), [
    ([0x1011, 0], "work"),                # a Thumb return address (odd) into work
    ([0x1010, 0], ""),                    # even: no Thumb return address
    ([0x1010, USER_THUMB], "work"),       # a signal frame's saved pc and cpsr
    ([0x1010, USER_ARM], ""),             # ... in the wrong instruction set
    ([0x1001, 0], ""),                    # a pointer to the function (entry | 1)
    ([0x1007, 0], ""),                    # the mcount call's return: the trampoline's
    ([0x1006, USER_THUMB], "work"),       # ... as a signal frame's pc: it counts
    ([0x2014, 0], ""),                    # ARM: the site's return, a stale pt_regs pc
    ([0x2014, USER_ARM], "calc"),         # ... with a user cpsr: a signal frame
    ([0x2014, 0x40000890], ""),           # a code address is no cpsr (I bit set)
    ([0x2020, 0], "calc"),                # an ARM return address
], ids=["thumb-return", "thumb-even", "thumb-sigframe", "thumb-sigframe-arm-cpsr",
        "thumb-entry-pointer", "thumb-site-return", "thumb-sigframe-at-site-return",
        "arm-stale-pt-regs", "arm-sigframe", "arm-code-address-after", "arm-return"])
def test_stack_words(words: list[int], found: str) -> None:
    got = evidence([0, *words, 0])
    assert (found in got if found else got == ""), got


def test_ip_keeping_the_site_return_is_no_evidence_lr_is() -> None:
    """After the trampoline's ``bx ip``, ip keeps the site's return: stale."""
    regs = [0] * 13
    regs[12] = 0x1007
    assert evidence([0], regs) == ""
    regs[12] = 0x1020
    assert evidence([0], regs) == "r12 in work"


def test_a_running_thread_switches_once_it_has_run_since_the_writes() -> None:
    """The progress rule of Transition._check: run time since the code
    writes took effect, read with every thread held."""
    from armlp.livepatch.transition import RAN_NS, Transition
    from armlp.runtime.layout import KLP_PATCHED

    t = Transition(None, None, KLP_PATCHED)  # type: ignore[arg-type]
    t._ran_from = {10: 5_000_000, 11: 5_000_000, 13: 7}
    t._ran_now = {10: 5_000_000 + RAN_NS, 11: 5_000_000 + RAN_NS - 1, 12: 1}
    assert t._ran(10)               # ran long enough since
    assert not t._ran(11)           # not yet
    assert t._ran(12)               # born since the writes
    assert not t._ran(13)           # its run time cannot be read now: wait
    t._ran_now = None               # a machine whose registers are all exact
    assert t._ran(11)
