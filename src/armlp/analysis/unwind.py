"""Reliable stack traces of a stopped thread (the kernel's
``arch_stack_walk_reliable``, which 32-bit ARM never had).

The consistency model may switch a thread only when none of the functions
being switched is on its stack, so a walk either reaches the thread's first
frame through frames it can prove, or says *unreliable* and why: it never
guesses.  Two kinds of frame are proven:

* **APCS frames**, which every function built with armlp's flags has
  (``mov ip, sp; push {..., fp, ip, lr, pc}; sub fp, ip, #4``): the frame
  is trusted only when its saved pc slot holds this function's
  ``push + 8``, so a frame half torn down (a tail call, an epilogue) or a
  stale fp is caught, and a thread stopped inside the prologue is unwound
  from lr;
* **ARM exception tables** (``.ARM.exidx``/``.ARM.extab``, read with
  pyelftools; static glibc has them): the EHABI unwind opcodes are exact at
  every call site, so they are used for callers, and for the innermost
  frame only where the thread sits at an ``svc`` (blocked in a system
  call), never in a prologue or epilogue;
* **straight-line prologues** of code with neither (glibc's syscall
  wrappers): the instructions from the function's entry to the frame's pc,
  decoded with capstone, when no branch of the function lands among them
  and each one that moves sp is a push or ``sub sp, sp, #imm``: their
  effect is then exactly what was done, so it can be undone.

The walk ends, reliably, in a thread's root (``_start``, ``clone``).
Anything else — code without either kind of information, armlp's own
trampolines, a table that says "cannot unwind", a frame that does not
move up the stack — makes the trace unreliable.
"""

from __future__ import annotations

import bisect
import io
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from armlp.elf.image import PT_LOAD, ElfImage
from armlp.errors import ArmlpError
from armlp.loader.module import LoadedModule
from armlp.machine.base import Regs

PF_X = 1

#: Functions a thread starts in: a walk that reaches one is complete.
ROOTS = frozenset({"_start", "__clone", "clone", "__clone3", "clone3", "start_thread",
                   "thread_start"})
MAX_FRAMES = 256
_MOV_IP_SP = 0xE1A0C00D
_SUB_FP_IP_4 = 0xE24CB004
_APCS_REGS = (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15)


@dataclass(frozen=True)
class CodeFunction:
    """A function the walk can be in: its range and unwind information."""

    name: str
    start: int
    end: int
    #: EHABI opcodes from the function's table entry (None: no usable entry).
    opcodes: tuple[int, ...] | None = None
    cantunwind: bool = False
    #: armlp's own code (trampolines, the runtime): never walked through.
    armlp: bool = False
    #: Thumb code: no APCS frames; straight-line code decoded as T32.
    thumb: bool = False


@dataclass
class CodeMap:
    """Every piece of code of a target a walk may meet, by address."""

    _starts: list[int] = field(default_factory=list)
    _funcs: list[CodeFunction] = field(default_factory=list)

    def add(self, funcs: Iterable[CodeFunction]) -> None:
        merged = sorted([*self._funcs, *funcs], key=lambda f: f.start)
        self._funcs = merged
        self._starts = [f.start for f in merged]

    @property
    def functions(self) -> list[CodeFunction]:
        return list(self._funcs)

    def copy(self) -> CodeMap:
        return CodeMap(list(self._starts), list(self._funcs))

    def find(self, address: int) -> CodeFunction | None:
        i = bisect.bisect_right(self._starts, address) - 1
        while i >= 0:
            f = self._funcs[i]
            if f.start <= address < f.end:
                return f
            if f.start < address - 0x100000:
                break
            i -= 1
        return None

    @classmethod
    def of_image(cls, image: ElfImage, bias: int = 0) -> CodeMap:
        """The functions of a linked program or library, with its exception
        table.  The linker makes the table cover all code (it adds
        "cannot unwind" entries for code without one), so the entry at or
        below an address is that code's; table rows no symbol names (a
        stripped library) become functions of their own."""
        tables = _exidx(image)
        starts = sorted(tables)
        try:
            symbols = sorted(image.symbols.functions(), key=lambda f: f.address)
        except ArmlpError:
            symbols = []            # stripped: the table alone

        def entry_at(address: int) -> tuple[int, ...] | None:
            i = bisect.bisect_right(starts, address) - 1
            return tables[starts[i]] if i >= 0 else None

        funcs = []
        named = set()
        for k, fn in enumerate(symbols):
            if fn.mode not in ("arm", "thumb"):
                continue
            named.add(fn.address)
            # An assembly function without a size runs to the next symbol.
            following = [s.address for s in symbols[k + 1:k + 4] if s.address > fn.address]
            size = fn.size or ((following[0] - fn.address) if following else 4)
            entry = entry_at(fn.address)
            funcs.append(CodeFunction(fn.name, fn.address + bias, fn.address + bias + size,
                                      opcodes=entry or None, cantunwind=entry == (),
                                      thumb=fn.mode == "thumb"))
        name = image.path.name
        for a, b in itertools.pairwise(starts):
            if a not in named:
                funcs.append(CodeFunction(f"{name}+{a:#x}", a + bias, b + bias,
                                          opcodes=tables[a] or None, cantunwind=tables[a] == ()))
        code = cls()
        code.add(funcs)
        return code

    def add_library(self, path: str, start: int, offset: int) -> None:
        """A shared library's code mapped at *start* from file *offset*
        (its symbols and exception table, moved by the load bias)."""
        try:
            image = ElfImage(path)
        except (OSError, ArmlpError):
            return
        seg = next((g for g in image.segments if g.type == PT_LOAD and g.flags & PF_X
                    and g.offset & ~0xFFF == offset), None)
        if seg is not None:
            self.add(CodeMap.of_image(image, start - (seg.vaddr & ~0xFFF)).functions)

    def add_module(self, module: LoadedModule) -> None:
        """A loaded patch module's functions (ARM ones built with APCS frames),
        and its whole region under its own name: code there outside a
        function (a loader veneer) is the patch's, not armlp's."""
        base, size = module.region
        region = [CodeFunction(f"patch module at {base:#x}", base, base + size)] if size else []
        self.add([*region, *(CodeFunction(s.name, s.address, s.address + max(s.size, 4),
                                          thumb=s.thumb)
                             for s in module.symbols if s.is_function)])

    def add_armlp(self, ranges: Iterable[tuple[int, int]], name: str) -> None:
        """Memory holding armlp's own code: a thread found there is not walked."""
        self.add(CodeFunction(name, lo, hi, armlp=True) for lo, hi in ranges)


def _exidx(image: ElfImage) -> dict[int, tuple[int, ...]]:
    """Function address -> unwind opcodes (``()`` for EXIDX_CANTUNWIND)
    from the program's ``.ARM.exidx``; entries armlp cannot use (another
    personality routine, a corrupt table) are left out."""
    out: dict[int, tuple[int, ...]] = {}
    try:
        elf = ELFFile(io.BytesIO(image.data))
        for info in elf.get_ehabi_infos() or []:
            sec = info._arm_idx_section
            shift = sec["sh_addr"] - sec["sh_offset"]
            for i in range(info.num_entry()):
                e = info.get_entry(i)
                if e.function_offset is None:
                    continue
                addr = e.function_offset + shift
                if not e.unwindable:
                    if not getattr(e, "corrupt", False):
                        out[addr] = ()
                elif e.personality in (0, 1, 2) and e.bytecode_array:
                    out[addr] = tuple(e.bytecode_array)
    except (ELFError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return {}
    return out


@dataclass(frozen=True)
class Frame:
    """One frame of a walk: where the thread is, or will return to."""

    pc: int
    function: str
    offset: int

    def __str__(self) -> str:
        return f"{self.function}+{self.offset:#x}"


@dataclass
class StackTrace:
    frames: list[Frame]
    reliable: bool
    reason: str = ""


class _Unreliable(Exception):
    pass


def walk_stack(code: CodeMap, regs: Regs, read_word: Callable[[int], int]) -> StackTrace:
    """Walk one stopped thread's stack from its exact registers."""
    r: list[int | None] = [*regs.r, regs.sp, regs.lr, regs.pc]
    frames: list[Frame] = []
    innermost = True
    try:
        for _ in range(MAX_FRAMES):
            pc = r[15]
            if pc is None or pc == 0:
                raise _Unreliable("a frame has no return address")
            pc = r[15] = pc & ~1            # a Thumb return address has bit 0 set
            fn = code.find(pc if innermost else pc - 2)
            if fn is None:
                raise _Unreliable(f"{pc:#x} is in no known function")
            frames.append(Frame(pc, fn.name, pc - fn.start))
            if fn.armlp:
                raise _Unreliable(f"in {fn.name}")
            if fn.name in ROOTS:
                return StackTrace(frames, True)
            sp = r[13]
            assert sp is not None
            mask = None if fn.thumb else _apcs_push(read_word, fn)
            if mask is not None:
                _unwind_apcs(r, fn, mask, read_word, innermost)
            elif innermost and not _at_svc(read_word, pc, fn.thumb):
                raise _Unreliable(f"stopped in {fn.name}+{pc - fn.start:#x}, outside a "
                                  f"system call, in code without frames")
            elif fn.opcodes:
                _unwind_ehabi(r, fn.opcodes, read_word)
            elif _unwind_straight(r, fn, read_word, innermost):
                pass
            else:
                why = "cannot be unwound" if fn.cantunwind else "has no unwind information"
                raise _Unreliable(f"{fn.name} {why}")
            new_sp = r[13]
            if new_sp is None or (new_sp <= sp and not (innermost and new_sp == sp)):
                raise _Unreliable(f"the frame of {fn.name} does not move up the stack")
            innermost = False
        raise _Unreliable(f"more than {MAX_FRAMES} frames")
    except _Unreliable as exc:
        return StackTrace(frames, False, str(exc))
    except OSError as exc:
        return StackTrace(frames, False, f"a frame cannot be read ({exc})")


def _at_svc(read_word: Callable[[int], int], pc: int, thumb: bool = False) -> bool:
    """After an ``svc`` (in the call), or on one (qemu restarts a call
    interrupted by a stop from its ``svc``); Thumb's is ``svc`` T16."""
    if thumb:
        return any(read_word(a) & 0xFF00 == 0xDF00 for a in (pc - 2, pc))
    return any((read_word(a) & 0x0F000000) == 0x0F000000 for a in (pc - 4, pc))


_CS: dict[bool, Any] = {}


def _disassemble(code: bytes, address: int, thumb: bool = False) -> list[Any]:
    md = _CS.get(thumb)
    if md is None:
        import capstone
        md = _CS[thumb] = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB if thumb
                                      else capstone.CS_MODE_ARM)
        md.detail = True
    return list(md.disasm(code, address))


#: sp's offset from the function's entry, and where registers were saved
#: (register -> offset from the entry sp).
_State = tuple[int, tuple[tuple[int, int], ...]]


def _returns(insn: Any) -> bool:
    """A pc write that leaves the function: ``bx lr``, a pop or ldm of pc."""
    from capstone import arm as csarm
    op = insn.operands[0] if insn.operands else None
    if insn.id == csarm.ARM_INS_BX:
        return op is not None and op.reg == csarm.ARM_REG_LR
    return insn.id in (csarm.ARM_INS_POP, csarm.ARM_INS_LDM)


def _sp_effect(insn: Any, state: _State) -> _State | None:
    """*state* after an instruction that writes sp: a push or pop, ``sub``
    or ``add sp, sp, #imm``; None for anything else (not modelled)."""
    from capstone import arm as csarm
    sp_off, saved = state
    slots = dict(saved)
    ops = insn.operands
    if insn.id == csarm.ARM_INS_STR and insn.writeback and len(ops) == 2 and \
            ops[1].type == csarm.ARM_OP_MEM and ops[1].mem.base == csarm.ARM_REG_SP and \
            ops[1].mem.disp == -4 and ops[1].mem.index == 0:
        slots.setdefault(ops[0].reg, sp_off - 4)         # str rX, [sp, #-4]!: push {rX}
        return sp_off - 4, tuple(sorted(slots.items()))
    if insn.id in (csarm.ARM_INS_PUSH, csarm.ARM_INS_POP) or (
            insn.id in (csarm.ARM_INS_STMDB, csarm.ARM_INS_LDM) and insn.writeback
            and ops[0].reg == csarm.ARM_REG_SP):
        regs = [o.reg for o in ops[0 if insn.id in (csarm.ARM_INS_PUSH, csarm.ARM_INS_POP)
                                   else 1:]]
        if csarm.ARM_REG_SP in regs:
            return None
        if insn.id in (csarm.ARM_INS_PUSH, csarm.ARM_INS_STMDB):
            sp_off -= 4 * len(regs)
            for k, reg in enumerate(regs):
                slots.setdefault(reg, sp_off + 4 * k)
        else:
            sp_off += 4 * len(regs)
            for reg in regs:
                slots.pop(reg, None)
        return sp_off, tuple(sorted(slots.items()))
    if insn.id in (csarm.ARM_INS_SUB, csarm.ARM_INS_ADD, csarm.ARM_INS_SUBW,
                   csarm.ARM_INS_ADDW) and len(ops) in (2, 3) and \
            all(o.reg == csarm.ARM_REG_SP for o in ops[:-1]) and \
            ops[-1].type == csarm.ARM_OP_IMM:        # Thumb has "sub sp, #n" too
        up = insn.id in (csarm.ARM_INS_ADD, csarm.ARM_INS_ADDW)
        return sp_off + (ops[-1].imm if up else -ops[-1].imm), saved
    return None


def _unwind_straight(r: list[int | None], fn: CodeFunction,
                     read_word: Callable[[int], int], innermost: bool) -> bool:
    """Undo the straight-line code from *fn*'s entry to the frame's pc
    (see the module docstring); False when it cannot be proven."""
    from capstone import arm as csarm

    pc = r[15]
    assert pc is not None
    if fn.end - fn.start > 0x4000:
        return False
    words = b"".join(read_word(a).to_bytes(4, "little") for a in range(fn.start, fn.end, 4))
    by_address = {i.address: i for i in _disassemble(words, fn.start, fn.thumb)}
    # What the stack holds at each instruction, along every path from the
    # entry (a worklist over the function's branches): it must not depend
    # on the path taken, and every instruction that moves sp is modelled.
    state_at: dict[int, _State] = {fn.start: (0, ())}
    work = [fn.start]
    while work:
        address = work.pop()
        insn = by_address.get(address)
        if insn is None:
            return False                # ran off the code capstone decoded
        state = state_at[address]
        conditional = insn.cc not in (csarm.ARM_CC_AL, csarm.ARM_CC_INVALID)
        op = insn.operands[0] if insn.operands else None
        writes = insn.regs_access()[1]
        following = [address + insn.size] if address + insn.size < fn.end else []
        if insn.id == csarm.ARM_INS_B and op is not None and op.type == csarm.ARM_OP_IMM:
            inside = [op.imm] if fn.start <= op.imm < fn.end else []    # else a tail call
            succ = inside + (following if conditional else [])
        elif insn.id in (csarm.ARM_INS_CBZ, csarm.ARM_INS_CBNZ):   # Thumb: always conditional
            target = insn.operands[1].imm
            succ = ([target] if fn.start <= target < fn.end else []) + following
        elif csarm.ARM_REG_PC in writes and insn.id not in (csarm.ARM_INS_BL, csarm.ARM_INS_BLX):
            if not _returns(insn):
                return False            # a computed jump: any target
            succ = following if conditional else []
        else:
            if csarm.ARM_REG_SP in writes:
                moved = None if conditional else _sp_effect(insn, state)
                if moved is None:
                    return False
                state = moved
            succ = following
        for nxt in succ:
            known = state_at.get(nxt)
            if known is None:
                state_at[nxt] = state
                work.append(nxt)
            elif known != state:
                return False
    final = state_at.get(pc)
    if final is None:
        return False
    sp_off, saved = final
    slots = dict(saved)
    sp = r[13]
    assert sp is not None
    entry_sp = sp - sp_off
    names = {getattr(csarm, f"ARM_REG_R{i}"): i for i in range(4, 11)}
    names.update({csarm.ARM_REG_R11: 11, csarm.ARM_REG_LR: 14})
    for reg, off in slots.items():
        if reg in names:
            r[names[reg]] = read_word(entry_sp + off)
    if csarm.ARM_REG_LR not in slots and not innermost:
        return False
    r[15] = r[14]
    r[13], r[14] = entry_sp, None
    return True


def apcs_saved_pc(read_word: Callable[[int], int], fn: CodeFunction) -> int | None:
    """What the function's APCS frame holds in its saved-pc slot (its
    ``push`` stores pc = start + 12), None if it builds no such frame: a
    word that is on a stack exactly while the frame is live."""
    if fn.thumb:
        return None
    return fn.start + 12 if _apcs_push(read_word, fn) is not None else None


def _apcs_push(read_word: Callable[[int], int], fn: CodeFunction) -> int | None:
    """The register mask of the function's APCS frame, None if it has none."""
    if fn.end - fn.start < 12:
        return None
    w0, w1, w2 = (read_word(fn.start + 4 * i) for i in range(3))
    if w0 != _MOV_IP_SP or (w1 & 0xFFFF0000) != 0xE92D0000 or w2 != _SUB_FP_IP_4:
        return None
    mask = w1 & 0xFFFF
    return mask if mask & _APCS_REGS == _APCS_REGS else None


def _unwind_apcs(r: list[int | None], fn: CodeFunction, mask: int,
                 read_word: Callable[[int], int], innermost: bool) -> None:
    pc = r[15]
    assert pc is not None
    regs = [i for i in range(16) if mask >> i & 1]
    if innermost and pc < fn.start + 12:
        # In the prologue: the return address is still in lr.
        if pc == fn.start + 8:          # pushed, fp not set yet
            sp = r[13]
            assert sp is not None
            r[13] = sp + 4 * len(regs)
        if r[14] is None:
            raise _Unreliable(f"{fn.name}: lr is unknown")
        r[15] = r[14]
        return
    fp = r[11]
    if fp is None:
        raise _Unreliable(f"{fn.name}: fp is unknown")
    if read_word(fp) != fn.start + 12:
        raise _Unreliable(f"{fn.name}+{pc - fn.start:#x}: its frame is not at fp "
                          f"(an epilogue or a tail call)")
    base = fp - 4 * (len(regs) - 1)
    saved = {reg: read_word(base + 4 * k) for k, reg in enumerate(regs)}
    for reg in regs:
        if reg < 11:
            r[reg] = saved[reg]
    r[11], r[13], r[14], r[15] = saved[11], saved[12], None, saved[14]


def _unwind_ehabi(r: list[int | None], ops: tuple[int, ...],
                  read_word: Callable[[int], int]) -> None:
    """Run EHABI unwind opcodes (ARM EHABI section 10.3) on *r*."""
    vsp = r[13]
    assert vsp is not None
    i = 0
    popped_pc = False

    def pop(regs: Iterable[int]) -> None:
        nonlocal vsp, popped_pc
        assert vsp is not None
        new_sp = None
        for reg in regs:
            v = read_word(vsp)
            vsp += 4
            if reg == 13:
                new_sp = v
            else:
                r[reg] = v
            popped_pc |= reg == 15
        if new_sp is not None:
            vsp = new_sp

    def next_byte() -> int:
        nonlocal i
        if i >= len(ops):
            raise _Unreliable("truncated unwind opcodes")
        b = ops[i]
        i += 1
        return b

    while i < len(ops):
        op = next_byte()
        if op & 0xC0 == 0x00:
            vsp += ((op & 0x3F) << 2) + 4
        elif op & 0xC0 == 0x40:
            vsp -= ((op & 0x3F) << 2) + 4
        elif op & 0xF0 == 0x80:
            mask = ((op & 0x0F) << 8) | next_byte()
            if mask == 0:
                raise _Unreliable("the table refuses to unwind")
            pop(4 + k for k in range(12) if mask >> k & 1)
        elif op & 0xF0 == 0x90:
            n = op & 0x0F
            if n in (13, 15):
                raise _Unreliable("reserved unwind opcode")
            v = r[n]
            if v is None:
                raise _Unreliable(f"unwinding needs r{n}, which is unknown")
            vsp = v
        elif op & 0xF8 == 0xA0:
            pop(range(4, 5 + (op & 7)))
        elif op & 0xF8 == 0xA8:
            pop([*range(4, 5 + (op & 7)), 14])
        elif op == 0xB0:
            break
        elif op == 0xB1:
            mask = next_byte()
            if mask == 0 or mask & 0xF0:
                raise _Unreliable("spare unwind opcode")
            pop(k for k in range(4) if mask >> k & 1)
        elif op == 0xB2:
            value, shift = 0, 0
            while True:
                b = next_byte()
                value |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            vsp += 0x204 + (value << 2)
        elif op == 0xB3:
            vsp += 8 * ((next_byte() & 0x0F) + 1) + 4
        elif op & 0xF8 == 0xB8:
            vsp += 8 * ((op & 7) + 1) + 4
        elif op in (0xC8, 0xC9):
            vsp += 8 * ((next_byte() & 0x0F) + 1)
        elif op & 0xF8 == 0xD0:
            vsp += 8 * ((op & 7) + 1)
        else:
            raise _Unreliable(f"unwind opcode {op:#04x} is not supported")
    # Registers the opcodes did not restore are the caller's already
    # (callee-saved, or not needed); the return address is lr.
    if not popped_pc:
        r[15] = r[14]
    r[13], r[14] = vsp, None
