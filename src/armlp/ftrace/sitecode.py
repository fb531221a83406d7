"""What an mcount site holds, in its own instruction set: the NOP, a call
of a trampoline, a branch to one.

An ARM site is a word-aligned ``bl``; a Thumb site a 32-bit T32 ``bl`` at
a halfword boundary.  Each replacement is one instruction of the same size,
so no thread is ever between two halves of a rewritten site.
"""

from __future__ import annotations

from armlp.arm.a32 import MCOUNT_NOP_ADD_SP, branch_in_range, encode_b, encode_bl, encode_blx
from armlp.arm.t32 import T32_NOP_ADD_SP, encode_t32_branch, t32_branch_in_range

NOP = MCOUNT_NOP_ADD_SP
#: A Thumb site's NOP (``add.w sp, sp, #4``: one instruction, as the ``bl``).
T32_NOP = T32_NOP_ADD_SP


def nop_word(thumb: bool) -> int:
    """The NOP of an ARM or a Thumb site."""
    return T32_NOP if thumb else NOP


def site_branch(kind: str, at: int, target: int, thumb: bool) -> int:
    """``bl``/``b`` from a site (or entry) at *at* to *target*, in the site's
    instruction set: from Thumb code a call to ARM code (bit 0 clear) is a
    ``blx``; a Thumb ``b.w`` reaches Thumb code only (the caller checks)."""
    if thumb:
        if kind == "bl" and not target & 1:
            return encode_t32_branch("blx", at, target)
        return encode_t32_branch(kind, at, target)
    if kind == "bl":
        return encode_blx(at, target) if target & 1 else encode_bl(at, target)
    return encode_b(at, target)


def site_in_range(at: int, target: int, thumb: bool) -> bool:
    """Whether a branch from *at* in that instruction set reaches *target*."""
    return t32_branch_in_range(at, target) if thumb else branch_in_range(at, target)
