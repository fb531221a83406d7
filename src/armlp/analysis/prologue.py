"""Prologue classification and the recipe that undoes it.

At the mcount site the function has run only its prologue: arguments r0-r3
and r4-r10 are untouched (at most saved), lr still holds the return address
(``push {lr}`` saved a copy), and the prologue moved sp and perhaps fp.  A
trampoline that restores sp and every register the prologue changed, from
the slots where the prologue saved their original values, gives a
replacement exactly the context a direct call would have.

Two rules, one per shape (the seed's question "can we really undo the
prologue?" answered per function, and proven in the emulator later):

``apcs``
    ``mov ip, sp; [push {r0-r3};] push {..., fp, ip, lr, pc}; sub fp, ip, #k;
    sub sp, sp, #N...; push {lr}; bl``.  fp points at the saved pc slot, so
    ``lr = [fp-4]``, ``sp = [fp-8]``, ``fp = [fp-12]`` — the seed's undo,
    independent of N.
``push``
    any other sequence of pushes, ``sub sp, sp, #N`` and ``add fp, sp, #k``
    that we can model exactly: sp goes back by the static frame size, and each
    register the prologue changed is reloaded from its save slot.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from armlp.arm.a32 import (
    FP,
    IP,
    LR,
    MOV_IP_SP,
    PC,
    PUSH_LR,
    SP,
    decode_add_sub_imm,
    decode_push,
    reg_list,
    reg_name,
)

#: Registers a replacement may find changed: ip is the AAPCS intra-call scratch
#: register (veneers clobber it), so the undo does not restore it.
SCRATCH = frozenset({IP})


class UndoRecipe(NamedTuple):
    """How to get from the state at the mcount site back to the entry state.

    Offsets are relative to the site's sp *before* the mcount ``push {lr}``
    (``site_sp``); ``frame_size`` is entry sp minus ``site_sp``.  (A
    NamedTuple: see :class:`~armlp.elf.image.Segment`.)
    """

    rule: str
    frame_size: int
    loads: tuple[tuple[int, int], ...] = ()
    fp_offset: int | None = None

    def steps(self) -> list[str]:
        """The undo as assignments, in the order a trampoline performs them."""
        if self.rule == "apcs":
            return ["lr = [fp, #-4]", "sp = [fp, #-8]", "fp = [fp, #-12]"]
        out = [f"{reg_name(r)} = [site_sp, #{off}]" for r, off in self.loads]
        out.append(f"sp = site_sp + {self.frame_size}")
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "frame_size": self.frame_size,
            "restore": [{"reg": reg_name(r), "site_sp_offset": off} for r, off in self.loads],
            "steps": self.steps(),
        }


class Verdict(NamedTuple):
    """Whether a function is patchable, by which rule, or why not."""

    patchable: bool
    rule: str | None = None
    undo: UndoRecipe | None = None
    reason: str | None = None
    reason_code: str | None = None


class _State:
    """What the prologue has done so far, as :func:`classify_arm` reads it."""

    def __init__(self) -> None:
        self.sp = 0                             # sp relative to entry sp
        self.ip: int | None = None              # ip = entry_sp + ip, when known
        self.fp: int | None = None              # fp = entry_sp + fp, when known
        self.saved: dict[int, int] = {}         # reg -> slot (rel. entry sp)
        self.changed: set[int] = set()
        self.ip_at_push: int | None = None      # ip's value when it was saved
        self.pushes: list[int] = []


def _unknown(pos: int, word: int, describe: DescribeFn) -> Verdict:
    return Verdict(False, reason=f"prologue instruction '{describe(word)}' at +{pos:#x} is not "
                                 f"understood", reason_code="unknown_instruction")


class DescribeFn:
    """Turns an instruction word into text for messages (capstone, lazily)."""

    def __init__(self) -> None:
        self._md: Any = None

    def __call__(self, word: int) -> str:
        if self._md is None:
            import capstone
            self._md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM)
        for insn in self._md.disasm(word.to_bytes(4, "little"), 0):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return f".word {word:#010x}"


def classify_arm(words: tuple[int, ...], describe: DescribeFn | None = None) -> Verdict:
    """Classify an ARM prologue: *words* run from the entry up to (not
    including) the mcount ``bl``."""
    describe = describe or DescribeFn()
    if not words or words[-1] != PUSH_LR:
        return Verdict(False, reason="the mcount call is not preceded by 'push {lr}' "
                                     "(not the -pg calling sequence)",
                       reason_code="no_push_lr")
    st = _State()
    for i, w in enumerate(words[:-1]):
        pos = 4 * i
        if w == MOV_IP_SP:
            st.ip = st.sp
            st.changed.add(IP)
            continue
        mask = decode_push(w)
        if mask is not None:
            regs = reg_list(mask)
            base = st.sp - 4 * len(regs)
            for k, r in enumerate(regs):
                if r == IP and st.ip is not None:
                    st.ip_at_push = st.ip
                if r not in st.saved and (r not in st.changed or r == IP):
                    st.saved[r] = base + 4 * k
            st.sp = base
            st.pushes.append(mask)
            continue
        dp = decode_add_sub_imm(w)
        if dp is not None:
            op, rd, rn, imm = dp
            delta = imm if op == "add" else -imm
            if rd == SP and rn == SP and op == "sub":
                st.sp += delta
                continue
            if rd == FP and rn == IP and st.ip is not None:
                st.fp = st.ip + delta
                st.changed.add(FP)
                continue
            if rd == FP and rn == SP:
                st.fp = st.sp + delta
                st.changed.add(FP)
                continue
        return _unknown(pos, w, describe)
    for r in sorted(st.changed - SCRATCH):
        if r not in st.saved:
            return Verdict(False, reason=f"prologue changes {reg_name(r)} without saving it "
                                         f"first", reason_code="unsaved_register")
    frame = -st.sp
    loads = tuple((r, st.saved[r] + frame) for r in sorted(st.changed - SCRATCH))
    if _is_apcs(words, st):
        recipe = UndoRecipe("apcs", frame, loads, st.fp)
        return Verdict(True, "apcs", recipe)
    recipe = UndoRecipe("push", frame, loads, st.fp)
    return Verdict(True, "push", recipe)


def _is_apcs(words: tuple[int, ...], st: _State) -> bool:
    """The seed's pattern: fp points at the saved pc, with lr, entry sp and the
    caller's fp right below it."""
    if words[0] != MOV_IP_SP or st.fp is None or not st.pushes:
        return False
    frame_push = next((m for m in st.pushes if m & (1 << FP)), None)
    if frame_push is None or frame_push >> 11 != 0b11011:
        return False
    others = [m for m in st.pushes if m != frame_push]
    if any(m & ~0xF for m in others):      # only the varargs push {r0-r3} may precede
        return False
    return (st.saved.get(PC) == st.fp and st.saved.get(LR) == st.fp - 4
            and st.saved.get(IP) == st.fp - 8 and st.ip_at_push == 0
            and st.saved.get(FP) == st.fp - 12)
