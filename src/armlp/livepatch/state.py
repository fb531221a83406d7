"""System states (the kernel's kernel/livepatch/state.c) for programs.

Two halves, as in the kernel: the compatibility rule a new patch must meet
(checked before anything is written), and what the runtime's
``klp_get_state()`` and ``klp_get_prev_state()`` (``runtime/state.c``)
read in the target: for each enabled patch one block holding the struct
klp_object its callbacks get, its struct klp_patch and its struct klp_state
array; the patches linked in the order they were enabled, and the one in
transition named, before every callback.
"""

from __future__ import annotations

from collections.abc import Sequence

from armlp.errors import PatchError
from armlp.livepatch.module import KlpPatch
from armlp.machine.base import write_word
from armlp.machine.heap import TargetHeap
from armlp.runtime.layout import KLP_OBJECT, KLP_PATCH, KLP_STATE
from armlp.runtime.module import Runtime


def check_compatible(enabled: Sequence[KlpPatch], patch: KlpPatch) -> None:
    """The kernel's klp_is_patch_compatible(): every state of an enabled
    patch must be kept by *patch* in the same or a newer version; a patch
    that does not replace the others may leave a state out."""
    for old in enabled:
        for sid, version in old.states.items():
            new = patch.states.get(sid)
            if (new is None and not patch.replace) or (new is not None and new >= version):
                continue
            why = "is newer" if new is not None else "would be dropped by the replace"
            raise PatchError(f"{patch.name}: not compatible with {old.name}: system state "
                             f"{sid} version {version} {why}")


class KlpStates:
    """The target's side of system states for one livepatch core."""

    def __init__(self, heap: TargetHeap, runtime: Runtime) -> None:
        self.heap = heap
        self.machine = heap.machine
        self.runtime = runtime

    def alloc(self, patch: KlpPatch) -> int:
        """Write *patch*'s block (object, patch, states with data NULL, a
        terminating id 0) and return the struct klp_object's address."""
        block = self.heap.alloc(KLP_OBJECT.size + KLP_PATCH.size
                                + KLP_STATE.size * (len(patch.states) + 1))
        klp_patch = block + KLP_OBJECT.size
        states = klp_patch + KLP_PATCH.size
        data = KLP_OBJECT.pack(0, klp_patch) + KLP_PATCH.pack(0, states)
        data += b"".join(KLP_STATE.pack(sid, version, 0)
                         for sid, version in patch.states.items())
        self.machine.write(block, data + KLP_STATE.pack(0, 0, 0))
        patch.klp = block
        return block

    def free(self, patch: KlpPatch) -> None:
        if patch.klp:
            self.heap.free(patch.klp)
            patch.klp = 0

    def enter_callback(self, listed: Sequence[KlpPatch], patch: KlpPatch) -> None:
        """Before a callback of *patch* (in transition): the list
        klp_get_prev_state() walks, *listed* in enable order."""
        m = self.machine
        links = [p.klp + KLP_OBJECT.size for p in listed]
        for here, after in zip(links, [*links[1:], 0], strict=True):
            write_word(m, here, after)
        write_word(m, self.runtime.symbol("armlp_klp_patches"), links[0] if links else 0)
        write_word(m, self.runtime.symbol("armlp_klp_transition_patch"),
                   patch.klp + KLP_OBJECT.size)

    def leave_callback(self) -> None:
        """After it: outside a callback klp_get_prev_state() finds nothing,
        as the kernel's warns."""
        write_word(self.machine, self.runtime.symbol("armlp_klp_transition_patch"), 0)
