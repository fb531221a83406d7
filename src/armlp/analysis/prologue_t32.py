"""Thumb prologues (T32 and Thumb-1): what a Thumb function does between its
entry and its mcount site, judged with the ARM rules' vocabulary.

GCC's Thumb code with ``-pg`` saves registers (``push``, ``push.w``,
``stmdb sp!``), makes room for locals (``sub sp``), saves callee-saved VFP
registers (``vpush``), may set its frame pointer r7 (``add r7, sp, #n``,
``mov r7, sp``), then calls mcount with ``push {lr}; bl __gnu_mcount_nc``.
When every instruction before the site is one of these, the prologue is
understood and its undo is known (rule ``push``: sp back by the frame, r7
reloaded from its slot when the prologue wrote it), and the function is
patchable like an ARM one; anything else is named, as for ARM.
"""

from __future__ import annotations

import re
from typing import Any

from armlp.analysis.prologue import UndoRecipe, Verdict
from armlp.arm.a32 import REG_NAMES
from armlp.arm.t32 import T16_PUSH_LR

#: Register numbers by the names capstone and armlp use (r9 is also sb).
_REGS = {**{f"r{i}": i for i in range(16)}, **{n: i for i, n in enumerate(REG_NAMES)},
         "sb": 9}
_IMM = re.compile(r"#(0x[0-9a-f]+|\d+)$")

_md: Any = None


def _disasm(code: bytes) -> tuple[list[tuple[int, str, str]], int]:
    """The instructions of *code* (offset, mnemonic, operands) and how many
    bytes they cover (capstone stops at the first it cannot decode)."""
    global _md
    if _md is None:
        import capstone
        _md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB)
    out, covered = [], 0
    for i in _md.disasm(code, 0):
        out.append((i.address, i.mnemonic, i.op_str))
        covered = i.address + i.size
    return out, covered


def _reglist(text: str) -> list[str] | None:
    m = re.search(r"\{([^}]*)\}", text)
    return [r.strip() for r in m.group(1).split(",")] if m else None


def _imm(text: str) -> int | None:
    m = _IMM.search(text.strip())
    return int(m.group(1), 0) if m else None


def classify_thumb(code: bytes) -> Verdict:
    """Classify a Thumb prologue: *code* runs from the entry up to (not
    including) the mcount ``bl``."""
    if len(code) < 2 or int.from_bytes(code[-2:], "little") != T16_PUSH_LR:
        return Verdict(False, reason="the mcount call is not preceded by 'push {lr}' "
                                     "(not the -pg calling sequence)",
                       reason_code="no_push_lr")
    insns, covered = _disasm(code[:-2])
    if covered != len(code) - 2:
        half = int.from_bytes(code[covered:covered + 2], "little")
        return _unknown(covered, f".hword {half:#06x}")
    sp = 0                              # sp relative to the entry sp
    slots: dict[int, int] = {}          # register -> slot, relative to the entry sp
    r7_written = False
    steps: list[str] = []
    for pos, mnem, ops in insns:
        base = mnem.split(".")[0]
        text = f"{mnem} {ops}".strip()
        regs = _reglist(ops)
        if base in ("push", "stmdb", "stmfd") and regs is not None and \
                (base == "push" or ops.startswith("sp!")):
            nums = [_REGS.get(r) for r in regs]
            if None in nums:
                return _unknown(pos, text)
            sp -= 4 * len(regs)
            for k, n in enumerate(sorted(n for n in nums if n is not None)):
                slots.setdefault(n, sp + 4 * k)
        elif base == "vpush" and regs is not None:
            sp -= sum(8 if r.startswith("d") else 4 for r in regs)
        elif base in ("sub", "subw") and ops.startswith("sp,") and _imm(ops) is not None and \
                ops.count(",") <= 2 and (ops.count(",") == 1 or ops.startswith("sp, sp,")):
            sp -= _imm(ops) or 0
        elif (base in ("add", "addw") and ops.startswith("r7, sp") and _imm(ops) is not None) \
                or (base == "mov" and ops == "r7, sp"):
            r7_written = True
        else:
            return _unknown(pos, text)
        steps.append(text)
    loads: tuple[tuple[int, int], ...] = ()
    if r7_written:
        if 7 not in slots:
            return Verdict(False, reason="r7 is changed before the mcount site without "
                                         "being saved", reason_code="clobbered_unsaved")
        loads = ((7, slots[7] - sp),)
    return Verdict(True, rule="push", undo=UndoRecipe("push", -sp, loads))


def _unknown(pos: int, text: str) -> Verdict:
    return Verdict(False, reason=f"Thumb prologue instruction '{text}' at +{pos:#x} is not "
                                 f"understood", reason_code="unknown_instruction")
