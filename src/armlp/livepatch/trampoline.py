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

A Thumb function's site holds ``b.w tramp`` and its trampoline is Thumb
code, every instruction 32-bit so the literal falls word aligned (the
trampoline is)::

    ldr.w r7, [sp, #slot + 4]    @ only if the prologue changed r7 (after
                                 @ moving sp part of the way past 4 KiB)
    addw  sp, sp, #frame + 4     @ one or more
    ldr.w pc, [pc, #0]           @ interworks: new_func may be ARM or Thumb
    .word new_func
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from armlp.analysis.prologue import UndoRecipe
from armlp.arm.a32 import FP, IP, SP, encode_add_sp, encode_add_wide, encode_ldr_imm
from armlp.arm.t32 import T32_IMM12_MAX, T32_LDR_PC, encode_t32_add_sp, encode_t32_ldr_sp
from armlp.errors import PatchError

LDR_PC_PC_M4 = 0xE51FF004
#: Thumb's frame pointer.
R7 = 7


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


def undo_words_t32(undo: UndoRecipe, sp_bias: int) -> list[int]:
    """:func:`undo_words` in T32 (32-bit instructions as ``hw1 | hw2 << 16``)
    for a Thumb prologue, whose frame pointer is r7."""
    if undo.rule != "push":
        raise PatchError(f"no Thumb undo for rule {undo.rule!r}")
    total = undo.frame_size + sp_bias
    words: list[int] = []
    moved = 0
    for reg, off in undo.loads:
        if reg != R7:
            raise PatchError(f"the Thumb prologue changes r{reg}; only r7 can be reloaded")
        slot = off + sp_bias
        # Past ldr.w's reach, sp moves first: the slot is still above it.
        step = max(0, slot - moved - T32_IMM12_MAX)
        words += encode_t32_add_sp(step)
        moved += step
        words.append(encode_t32_ldr_sp(R7, slot - moved))
    return words + encode_t32_add_sp(total - moved)


def build_trampoline(undo: UndoRecipe, target: int, *, thumb: bool = False) -> Trampoline:
    """The fast-path trampoline for a function with recipe *undo* (a Thumb
    one with *thumb*: its address is then entered with bit 0 set)."""
    if thumb:
        ldr_pc = int.from_bytes(T32_LDR_PC, "little")
        words = [*undo_words_t32(undo, 4), ldr_pc, target & 0xFFFFFFFF]
    else:
        words = [*undo_words(undo, 4), LDR_PC_PC_M4, target & 0xFFFFFFFF]
    return Trampoline(tuple(words), len(words) - 1)
