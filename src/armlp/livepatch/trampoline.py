"""Per-function trampolines for the fast path.

The site of a function whose only ftrace user is its livepatch ops holds
``b tramp`` (a branch, not a call: lr still holds the caller's return
address, and sp is the site's sp minus the mcount ``push {lr}``).  The
trampoline undoes exactly this function's prologue, with the same recipe
the regs trampoline uses, and jumps on through a literal word — the one word
that changes when the function's func stack changes:

rule ``apcs``::

    ldr   sp, [fp, #-8]          @ the caller's sp
    ldr   fp, [fp, #-12]         @ the caller's fp
    ldr   pc, [pc, #-4]
    .word new_func

rule ``push``::

    ldr   fp, [sp, #slot + 4]    @ only if the prologue changed fp (via ip
                                 @ when the slot is beyond 4 KiB)
    add   sp, sp, #frame + 4     @ one or more adds
    ldr   pc, [pc, #-4]
    .word new_func
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from armlp.analysis.prologue import UndoRecipe
from armlp.arm.a32 import FP, IP, SP, encode_add_sp, encode_add_wide, encode_ldr_imm
from armlp.errors import PatchError

LDR_PC_PC_M4 = 0xE51FF004


@dataclass(frozen=True)
class Trampoline:
    """Code words and where the target literal sits among them."""

    words: tuple[int, ...]
    literal_index: int

    @property
    def size(self) -> int:
        return 4 * len(self.words)

    def code(self) -> bytes:
        return struct.pack(f"<{len(self.words)}I", *self.words)


def undo_words(undo: UndoRecipe, sp_bias: int) -> list[int]:
    """The instructions that undo a ``push``-rule prologue, entered with
    sp = site sp - *sp_bias* (4 while the mcount ``push {lr}`` is still on
    the stack, 0 after the kernel's ftrace_regs_caller popped it).  An APCS
    frame is undone through fp, wherever sp is."""
    if undo.rule == "apcs":
        return [encode_ldr_imm(SP, FP, -8), encode_ldr_imm(FP, FP, -12)]
    if undo.rule != "push":
        raise PatchError(f"no undo for rule {undo.rule!r}")
    words: list[int] = []
    for reg, off in undo.loads:
        if reg != FP:
            raise PatchError(f"the prologue changes r{reg}; only fp can be reloaded")
        slot = off + sp_bias
        if slot <= 4095:
            words.append(encode_ldr_imm(FP, SP, slot))
        else:      # a frame over 4 KiB: address the slot through ip (scratch)
            words += encode_add_wide(IP, SP, slot & ~0xFFF)
            words.append(encode_ldr_imm(FP, IP, slot & 0xFFF))
    return words + encode_add_sp(undo.frame_size + sp_bias)


def build_trampoline(undo: UndoRecipe, target: int) -> Trampoline:
    """The fast-path trampoline for a function with recipe *undo*."""
    words = [*undo_words(undo, 4), LDR_PC_PC_M4, target & 0xFFFFFFFF]
    return Trampoline(tuple(words), len(words) - 1)
