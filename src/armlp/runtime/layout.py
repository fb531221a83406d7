"""Python mirrors of the runtime's C structures (armlp_rt.h).

The control plane builds these byte-exact and writes them into the target.
:func:`c_asserts` turns every size, offset and constant here into C
``_Static_assert``s that the runtime's build compiles against armlp_rt.h
(and the patch descriptors of <armlp/livepatch.h>): the two sides cannot
drift apart without the build failing, naming what moved.
"""

from __future__ import annotations

import struct

RULE_NONE, RULE_APCS, RULE_PUSH = 0, 1, 2
RULES = {None: RULE_NONE, "apcs": RULE_APCS, "push": RULE_PUSH}
SITE_MAX_OPS = 4
FTRACE_OPS_FL_SAVE_REGS = 0x1
#: struct armlp_site.flags: a Thumb site (its frame pointer is r7, not fp).
SITE_FL_THUMB = 0x1
SITE_HASH_MUL = 0x9E3779B1

#: struct armlp_site: ip, func, rule, nops, flags, frame_size, fp_slot, ops[4], regs_ops[4]
SITE = struct.Struct("<IIBBHIi4I4I")
SITE_OPS = struct.Struct("<4I4I")
#: struct ftrace_ops: func, flags, private
OPS = struct.Struct("<III")
#: struct armlp_site_table: bits, slots
SITE_TABLE = struct.Struct("<II")
#: struct armlp_trace_ring: head, mask, buf
TRACE_RING = struct.Struct("<III")
TRACE_RECORD = struct.Struct("<III")
#: struct pt_regs: 18 words
PT_REGS = struct.Struct("<18I")

SITE_OPS_OFFSET = struct.calcsize("<IIBBHIi")   # offsetof(struct armlp_site, ops)
SITE_NOPS_OFFSET = struct.calcsize("<IIB")      # offsetof(struct armlp_site, nops)


def site_hash(ip: int, bits: int) -> int:
    """The slot armlp_site_lookup() starts probing at (same arithmetic as C)."""
    return (((ip >> 2) * SITE_HASH_MUL) & 0xFFFFFFFF) >> (32 - bits)


def build_site_table(sites: dict[int, int]) -> tuple[int, list[int]]:
    """``(bits, slots)`` of an open-addressed table mapping site ip to the
    address of its record, at most half full."""
    bits = 4
    while (1 << bits) < 2 * max(len(sites), 1):
        bits += 1
    size = 1 << bits
    slots = [0] * size
    for ip, rec in sites.items():
        i = site_hash(ip, bits)
        while slots[i]:
            i = (i + 1) & (size - 1)
        slots[i] = rec
    return bits, slots

#: struct klp_func_node: new_func, next, patch_id, transition
KLP_FUNC_NODE = struct.Struct("<IIII")
KLP_NODE_TRANSITION = 12        # offsetof(struct klp_func_node, transition)
KLP_UNPATCHED, KLP_PATCHED = 0, 1
KLP_MAX_THREADS = 256
#: struct klp_thread: lo, hi, patch_state
KLP_THREAD = struct.Struct("<IIi")
#: struct klp_transition: target_state, nr, then KLP_MAX_THREADS struct klp_thread
KLP_TRANSITION = struct.Struct("<iI")
KLP_TRANSITION_SIZE = KLP_TRANSITION.size + KLP_MAX_THREADS * KLP_THREAD.size
#: struct klp_ops: stack (what the function's ftrace_ops.private points at)
KLP_OPS = struct.Struct("<I")
#: <armlp/livepatch.h>, for callbacks: struct klp_object (name, patch),
#: struct klp_patch (next, states), struct klp_state (id, version, data).
KLP_OBJECT = struct.Struct("<II")
KLP_PATCH = struct.Struct("<II")
KLP_STATE = struct.Struct("<III")


def c_asserts() -> str:
    """C source asserting this module's layouts against armlp_rt.h and the
    program half of <armlp/livepatch.h> (see the module docstring)."""
    from armlp.livepatch.module import CALLBACKS_DESC, DESC, STATE

    checks = [
        ("sizeof(struct pt_regs)", PT_REGS.size),
        ("sizeof(struct ftrace_ops)", OPS.size),
        ("sizeof(struct armlp_site)", SITE.size),
        ("__builtin_offsetof(struct armlp_site, nops)", SITE_NOPS_OFFSET),
        ("__builtin_offsetof(struct armlp_site, ops)", SITE_OPS_OFFSET),
        ("sizeof(((struct armlp_site *)0)->ops) * 2", SITE_OPS.size),
        ("sizeof(struct armlp_site_table)", SITE_TABLE.size),
        ("sizeof(struct armlp_trace_ring)", TRACE_RING.size),
        ("sizeof(struct klp_func_node)", KLP_FUNC_NODE.size),
        ("__builtin_offsetof(struct klp_func_node, next)", 4),
        ("__builtin_offsetof(struct klp_func_node, transition)", KLP_NODE_TRANSITION),
        ("sizeof(struct klp_ops)", KLP_OPS.size),
        ("sizeof(struct klp_thread)", KLP_THREAD.size),
        ("__builtin_offsetof(struct klp_transition, threads)", KLP_TRANSITION.size),
        ("sizeof(struct klp_transition)", KLP_TRANSITION_SIZE),
        ("KLP_PATCHED", KLP_PATCHED),
        ("KLP_UNPATCHED", KLP_UNPATCHED),
        ("SITE_MAX_OPS", SITE_MAX_OPS),
        ("SITE_HASH_MUL", SITE_HASH_MUL),
        ("RULE_APCS", RULE_APCS),
        ("RULE_PUSH", RULE_PUSH),
        ("SITE_FL_THUMB", SITE_FL_THUMB),
        ("FTRACE_OPS_FL_SAVE_REGS", FTRACE_OPS_FL_SAVE_REGS),
        ("sizeof(struct armlp_func_desc)", DESC.size),
        ("sizeof(struct armlp_callbacks_desc)", CALLBACKS_DESC.size),
        ("sizeof(struct armlp_state_rec)", STATE.size),
        ("sizeof(struct klp_object)", KLP_OBJECT.size),
        ("__builtin_offsetof(struct klp_object, patch)", 4),
        ("sizeof(struct klp_patch)", KLP_PATCH.size),
        ("__builtin_offsetof(struct klp_patch, states)", 4),
        ("sizeof(struct klp_state)", KLP_STATE.size),
        ("__builtin_offsetof(struct klp_state, data)", 8),
    ]
    lines = ['#include "armlp_rt.h"', "#include <armlp/livepatch.h>"]
    lines += [f'_Static_assert({expr} == {value:#x}u, "{expr} is not {value:#x} as '
              f'armlp/runtime/layout.py says");' for expr, value in checks]
    return "\n".join(lines) + "\n"
