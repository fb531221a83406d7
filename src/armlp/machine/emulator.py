"""The in-process machine: a static ARM Linux program under Unicorn.

:class:`Emulator` implements :class:`~armlp.machine.base.Machine` for one
process with one thread (id 1).  It loads a linked static ARM ELF (its
``PT_LOAD`` segments with their permissions), builds the Linux initial stack
(argc, argv, envp, auxv), and runs it with the minimal syscall layer of
:mod:`armlp.machine.syscalls`.  The CPU model is a Cortex-A15 (ARMv7-A:
``movw``/``movt``, ``ldrex``/``strex``...), user mode.

Running
    :meth:`Emulator.run` runs until exit, an address (*until*, which stops
    before executing it) or an instruction budget, and can be called again
    to continue.  :meth:`Emulator.run_until` returns the registers at an
    address.  :meth:`Emulator.call` runs one function with ``lr`` = a magic
    return address on the current thread's stack and restores the thread;
    :meth:`Emulator.call_regs` stops that call at an address instead and
    returns the full register state there (entry-context comparisons).

Instruction counting (``count_instructions=True``, or set the attribute)
    A *block* hook (a per-instruction one costs a callback each) adds each
    executed translation block's instruction count (size / 4 in ARM state;
    Thumb blocks decoded once).  Blocks end at branches, syscalls and the
    *until* address, so the count is exact at every stop armlp uses; a stop
    by the budget (``max_instructions``) is made exact from Unicorn's own.
    Only a stop inside a block (a hook raising, a fault) may over-count it.
    Failed conditional instructions count, as on hardware.  With counting
    off no hook runs; budgets still work through Unicorn's counter.

Code writes
    :meth:`Emulator.write_code` is compare-and-swap (all expected words are
    checked before anything is written) and drops Unicorn's translated code
    for each written range with ``ctl_remove_cache``: ``mem_write`` alone
    leaves code that already ran in its old translation.

Errors
    A Python exception raised in any hook (armlp's own or one added with
    :meth:`Emulator.hook_code`) stops emulation and is re-raised from
    ``run``/``call``.  An access to unmapped or protected memory, or a CPU
    exception (undefined instruction, ``bkpt``), becomes a
    :class:`~armlp.errors.MachineError` naming the pc and the address.
"""

from __future__ import annotations

import contextlib
import enum
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import unicorn as _unicorn
from unicorn import arm_const as ac

from armlp.arm.a32 import CPSR_MODE_USR, CPSR_T
from armlp.elf.image import ElfImage
from armlp.errors import MachineError
from armlp.machine.address_space import AddressSpace
from armlp.machine.base import REG_ORDER, CodeWrite, Regs, code_images
from armlp.machine.exec_loader import (
    PAGE,
    _align_down,
    _align_up,
    load_program,
    map_kuser_page,
)
from armlp.machine.syscalls import LinuxSyscalls, SyscallStop, UnknownSyscall, VirtualClock

#: The binding's stubs are incomplete (py2 and py3 flavours): use it untyped.
uc: Any = _unicorn
_UcError: type[Exception] = uc.UcError

#: Return address of :meth:`Emulator.call`: a mapped page of ``udf`` that
#: is never executed (emulation stops when pc reaches it).
MAGIC_RETURN = 0xFFFF8000

_EXCP_SWI = 2
_EXCP_NAMES = {1: "undefined instruction", 2: "svc", 3: "prefetch abort", 4: "data abort",
               5: "irq", 6: "fiq", 7: "bkpt"}
_UDF = struct.pack("<I", 0xE7F000F0)

_REG_IDS = [ac.UC_ARM_REG_R0, ac.UC_ARM_REG_R1, ac.UC_ARM_REG_R2, ac.UC_ARM_REG_R3,
            ac.UC_ARM_REG_R4, ac.UC_ARM_REG_R5, ac.UC_ARM_REG_R6, ac.UC_ARM_REG_R7,
            ac.UC_ARM_REG_R8, ac.UC_ARM_REG_R9, ac.UC_ARM_REG_R10, ac.UC_ARM_REG_R11,
            ac.UC_ARM_REG_R12, ac.UC_ARM_REG_SP, ac.UC_ARM_REG_LR, ac.UC_ARM_REG_PC,
            ac.UC_ARM_REG_CPSR]
_REG_BY_NAME = dict(zip(REG_ORDER, _REG_IDS, strict=True)) | {
    "sb": ac.UC_ARM_REG_R9, "sl": ac.UC_ARM_REG_R10, "fp": ac.UC_ARM_REG_R11,
    "ip": ac.UC_ARM_REG_R12, "fpscr": ac.UC_ARM_REG_FPSCR} | {
    f"s{i}": getattr(ac, f"UC_ARM_REG_S{i}") for i in range(32)}

_ACCESS = {uc.UC_MEM_READ_UNMAPPED: "read of unmapped", uc.UC_MEM_WRITE_UNMAPPED:
           "write to unmapped", uc.UC_MEM_FETCH_UNMAPPED: "fetch from unmapped",
           uc.UC_MEM_READ_PROT: "read of protected", uc.UC_MEM_WRITE_PROT:
           "write to protected", uc.UC_MEM_FETCH_PROT: "fetch from non-executable"}





class StopReason(enum.Enum):
    """Why :meth:`Emulator.run` returned."""

    EXITED = "exited"          #: exit/exit_group; see Stop.exit_status
    UNTIL = "until"            #: pc reached the *until* address (not executed)
    LIMIT = "limit"            #: the instruction budget ran out
    STOPPED = "stopped"        #: a hook called Emulator.stop()


@dataclass(frozen=True)
class Stop:
    """The outcome of one :meth:`Emulator.run`."""

    reason: StopReason
    pc: int
    exit_status: int | None = None


CodeHook = Callable[["Emulator", int, int], None]


class Emulator(AddressSpace):
    """One static ARM Linux process under Unicorn (see the module docstring).

    *echo* also copies the program's stdout/stderr to the host's;
    *clock* selects the virtual (reproducible) or the host clock.
    """

    def __init__(self, *, count_instructions: bool = False, echo: bool = False,
                 clock: Literal["virtual", "host"] = "virtual",
                 ns_per_instruction: int = 1) -> None:
        self.uc: Any = uc.Uc(uc.UC_ARCH_ARM, uc.UC_MODE_ARM)
        self.uc.ctl_set_page_size(PAGE)     # Linux's 4 KiB, not ARM's 1 KiB minimum
        self.uc.ctl_set_cpu_model(ac.UC_CPU_ARM_CORTEX_A15)
        self.uc.ctl_exits_enabled(True)     # several stop addresses per run
        self.uc.reg_write(ac.UC_ARM_REG_CPSR, CPSR_MODE_USR)
        self.uc.reg_write(ac.UC_ARM_REG_FPEXC, 0x40000000)    # VFP enabled
        self.syscalls = LinuxSyscalls(echo=echo, clock=clock,
                                      vclock=VirtualClock(ns_per_instruction=ns_per_instruction))
        self.path: Path | None = None
        self.entry = 0
        self.exit_status: int | None = None
        self.brk_start = 0
        self.brk = 0
        self._brk_mapped = 0
        self._allocs: dict[int, int] = {}
        self._icount = 0
        self._block_cache: dict[int, tuple[int, int]] = {}
        self._count_hook: int | None = None
        self._pending: BaseException | None = None
        self._fault: tuple[int, int, int, int] | None = None
        self._stop_reason: StopReason | None = None
        self._running = False
        self._in_call: int | None = None
        self._exits_prev: set[int] = set()
        self.uc.mem_map(MAGIC_RETURN, PAGE, uc.UC_PROT_READ | uc.UC_PROT_EXEC)
        self.uc.mem_write(MAGIC_RETURN, _UDF * (PAGE // 4))
        map_kuser_page(self)
        self.uc.hook_add(uc.UC_HOOK_INTR, self._guard(self._on_interrupt))
        self.uc.hook_add(uc.UC_HOOK_MEM_INVALID, self._on_invalid)
        self.count_instructions = count_instructions

    # --- construction ------------------------------------------------------

    @classmethod
    def from_elf(cls, path: str | Path, argv: Sequence[str] | None = None,
                 envp: Sequence[str] | Mapping[str, str] = (), **options: Any) -> Emulator:
        """A new emulator with the program at *path* loaded (see :meth:`load`)."""
        emu = cls(**options)
        emu.load(path, argv, envp)
        return emu

    def load(self, path: str | Path, argv: Sequence[str] | None = None,
             envp: Sequence[str] | Mapping[str, str] = (), *,
             code_only: bool = False) -> ElfImage:
        """Map the ``PT_LOAD`` segments of a static ARM executable and set up
        the initial stack and registers as Linux does (see
        :mod:`armlp.machine.exec_loader`, also for *code_only*); argv
        defaults to ``[path]``.  Returns the image as mapped."""
        if self.path is not None:
            raise MachineError(f"{path}: the emulator already holds {self.path}")
        self.entry, end_of_image, image = load_program(self, path, argv, envp,
                                                       code_only=code_only)
        self.path = Path(path)
        self.brk_start = self.brk = self._brk_mapped = _align_up(end_of_image)
        return image

    # --- the Machine protocol ----------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        """Read target memory; raises MachineError if unmapped."""
        if size == 0:
            return b""
        try:
            return bytes(self.uc.mem_read(address, size))
        except _UcError as exc:
            raise MachineError(f"cannot read {size} bytes at {address:#010x}: {exc}") from None

    def write(self, address: int, data: bytes) -> None:
        """Write memory, whatever its protection; no icache flush (see write_code)."""
        if not data:
            return
        try:
            self.uc.mem_write(address, bytes(data))
        except _UcError as exc:
            raise MachineError(f"cannot write {len(data)} bytes at {address:#010x}: "
                               f"{exc}") from None

    def write_code(self, writes: Sequence[CodeWrite], *, unused: bool = False,
                   stale_ok: bool = False) -> None:
        """Compare-and-swap code writes, all or nothing, then drop the
        translated code of every written range (always: it is cheap here)."""
        for start, image in code_images(writes, self.read):
            self.write(start, bytes(image))
            self.flush_icache(start, len(image))

    stale = False

    def flush_stale(self) -> None:
        pass

    def call(self, address: int, args: Sequence[int] = (), *,
             regs: Mapping[str, int] | None = None, max_instructions: int = 10_000_000) -> int:
        """Run the function at *address* (bit 0 set: Thumb) and return r0.

        *args* follow the AAPCS: the first four words in r0-r3, the rest on
        the stack.  It runs on the current thread's stack below its sp, with
        lr = :data:`MAGIC_RETURN`; *regs* presets other registers by name
        (``{"r4": ...}``), which otherwise keep the thread's values.  The
        thread's registers are restored afterwards, also on error.  Raises
        MachineError if the function does not return within
        *max_instructions*, exits, or faults.
        """
        r = self._call(address, args, regs, None, max_instructions)
        return r.r[0]

    def call_regs(self, address: int, args: Sequence[int] = (), *, until: int,
                  regs: Mapping[str, int] | None = None,
                  max_instructions: int = 10_000_000) -> Regs:
        """Like :meth:`call`, but stop when pc reaches *until* (before executing
        it) and return the full registers there; the thread is restored.

        Calling a probe directly gives the context a direct call creates;
        reaching it through a trampoline gives the context the trampoline
        rebuilt: compare the two.  Raises MachineError if the function
        returns without reaching *until*.  The VFP registers (which *regs*
        may preset: ``s0``..``s31``, ``fpscr``) are not restored: after the
        call they still hold their values at *until*.
        """
        return self._call(address, args, regs, until & ~1, max_instructions)

    def entry_regs(self, address: int, args: Sequence[int] = (), *,
                   regs: Mapping[str, int] | None = None) -> Regs:
        """The registers :meth:`call` gives the function at its first instruction."""
        return self.call_regs(address, args, until=address, regs=regs, max_instructions=1)

    def threads(self) -> list[int]:
        return [1]

    def exact_registers(self, thread: int) -> bool:
        return True

    def cpu_times(self) -> dict[int, int] | None:
        return None

    def threads_settled(self) -> bool:
        return True

    def get_regs(self, thread: int | None = None) -> Regs:
        self._check_thread(thread)
        return Regs.from_list(self.uc.reg_read_batch(_REG_IDS))

    def set_regs(self, regs: Regs, thread: int | None = None) -> None:
        self._check_thread(thread)
        vals = regs.as_list()
        # cpsr first: a mode change banks sp/lr.  Unicorn takes the Thumb
        # state from bit 0 of a pc it is given, so pc carries cpsr's T bit.
        self.uc.reg_write(ac.UC_ARM_REG_CPSR, vals[16])
        vals[15] |= int(bool(vals[16] & CPSR_T))
        self.uc.reg_write_batch(list(zip(_REG_IDS[:16], vals[:16], strict=True)))

    # --- extensions ----------------------------------------------------------

    def reg(self, name: str) -> int:
        """One register by name (``r0``..``r12``, ``sp``, ``lr``, ``pc``, ``cpsr``, ``fp``...)."""
        return int(self.uc.reg_read(_REG_BY_NAME[name]))

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(_REG_BY_NAME[name], value & 0xFFFFFFFF)

    def flush_icache(self, address: int, size: int) -> None:
        """Drop Unicorn's translated code for [address, address + size)."""
        if size > 0:
            self.uc.ctl_remove_cache(address, address + size)

    #: One thread, stopped whenever armlp runs: every write is all-stop.
    stops_all = True
    quarantine_heap = False

    @contextlib.contextmanager
    def all_stopped(self, *, registers: bool = False) -> Iterator[bool]:
        """The emulator runs only when armlp lets it: always stopped here."""
        yield True

    @property
    def exited(self) -> bool:
        return self.exit_status is not None

    @property
    def stdout(self) -> bytes:
        """What the program wrote to fd 1."""
        return bytes(self.syscalls.stdout)

    @property
    def stderr(self) -> bytes:
        return bytes(self.syscalls.stderr)

    @property
    def unknown_syscalls(self) -> list[UnknownSyscall]:
        return self.syscalls.unknown

    @property
    def count_instructions(self) -> bool:
        return self._count_hook is not None

    @count_instructions.setter
    def count_instructions(self, on: bool) -> None:
        if on and self._count_hook is None:
            self._count_hook = self.uc.hook_add(uc.UC_HOOK_BLOCK, self._guard(self._on_block))
        elif not on and self._count_hook is not None:
            self.uc.hook_del(self._count_hook)
            self._count_hook = None

    @property
    def instructions(self) -> int | None:
        """Instructions executed so far (calls included), or None when
        counting is off."""
        return self._icount if self._count_hook is not None else None

    def hook_code(self, callback: CodeHook, begin: int = 1, end: int = 0) -> int:
        """Call ``callback(emu, address, size)`` before every instruction in
        [begin, end] (default: everywhere).  Slow: one Python call per
        instruction.  An exception it raises surfaces from run()/call()."""
        def cb(_uc: Any, address: int, size: int, _data: Any) -> None:
            callback(self, address, size)
        handle = int(self.uc.hook_add(uc.UC_HOOK_CODE, self._guard(cb), begin=begin, end=end))
        # Blocks translated before the hook existed would never call it.
        self.uc.ctl_flush_tb()
        return handle

    def remove_hook(self, handle: int) -> None:
        self.uc.hook_del(handle)

    def stop(self) -> None:
        """From a hook: stop emulation; run() returns StopReason.STOPPED."""
        self._stop_reason = StopReason.STOPPED
        self.uc.emu_stop()

    def run(self, max_instructions: int | None = None, until: int | None = None) -> Stop:
        """Run (or continue) the program.

        Stops at exit, when pc reaches *until* (before executing it; if pc is
        at *until* already, the next time it gets there), after
        *max_instructions*, or when a hook calls :meth:`stop`.  Raises the
        exception of a hook that raised, MachineError on a fault, and
        MachineError if the program has already exited.
        """
        if self.exit_status is not None:
            raise MachineError(f"{self.path}: the program has exited "
                               f"(status {self.exit_status})")
        stop_at = until & ~1 if until is not None else None
        if stop_at is not None and self.reg("pc") == stop_at:
            # Already there (a previous run_until): execute it, then go on.
            reason, pc = self._emulate(None, 1)
            if reason is not StopReason.LIMIT:
                return Stop(reason, pc, self.exit_status)
            if max_instructions is not None:
                if max_instructions == 1:
                    return Stop(StopReason.LIMIT, pc)
                max_instructions -= 1
        reason, pc = self._emulate(stop_at, max_instructions)
        if reason is StopReason.EXITED:
            return Stop(reason, pc, self.exit_status)
        if reason is StopReason.UNTIL and pc != stop_at:
            reason = StopReason.STOPPED     # a stray return to MAGIC_RETURN
        return Stop(reason, pc)

    def run_to_exit(self, max_instructions: int, chunk: int,
                    between: Callable[[], None] | None = None) -> int:
        """Run to the program's exit in *chunk*-instruction steps, calling
        *between* before each step and once after the last (armlp acts on
        the stopped program there: patch, read the trace ring); return the
        exit status.  Raises MachineError when *max_instructions* run out."""
        budget = max_instructions
        while budget > 0:
            if between is not None:
                between()
            step = min(chunk, budget)
            stop = self.run(max_instructions=step)
            budget -= step
            if stop.reason is StopReason.EXITED:
                if between is not None:
                    between()
                return int(stop.exit_status or 0)
        raise MachineError(f"{self.path}: still running after {max_instructions} "
                           f"instructions (raise --max-instructions)")

    def run_until(self, address: int, max_instructions: int | None = None) -> Regs:
        """Run until pc reaches *address*; return the registers there.
        Raises MachineError if the program exits or the budget runs out first."""
        st = self.run(max_instructions, until=address)
        if st.reason is not StopReason.UNTIL:
            raise MachineError(f"pc never reached {address:#010x}: {st.reason.value} at "
                               f"pc {st.pc:#010x}" + (f" with status {st.exit_status}"
                                                      if st.exit_status is not None else ""))
        return self.get_regs()

    def set_brk(self, address: int) -> int:
        """The ``brk`` syscall: grow (mapping RW pages) or shrink the heap."""
        if address < self.brk_start:
            return self.brk
        need = _align_up(address)
        if need > self._brk_mapped:
            if self._find_free(need - self._brk_mapped, self._brk_mapped, need,
                               top_down=False) != self._brk_mapped:
                return self.brk
            self.uc.mem_map(self._brk_mapped, need - self._brk_mapped,
                            uc.UC_PROT_READ | uc.UC_PROT_WRITE)
            self._brk_mapped = need
        self.brk = address
        return self.brk

    def set_tls(self, value: int) -> None:
        """ARM's ``set_tls``: the user read-only thread register (TPIDRURO)."""
        self.uc.reg_write(ac.UC_ARM_REG_C13_C0_3, value)

    def protect(self, address: int, size: int, prot: int) -> bool:
        """``mprotect`` (PROT_READ 1, WRITE 2, EXEC 4 are Unicorn's bits too)."""
        try:
            self.uc.mem_protect(address, size, prot)
        except _UcError:
            return False
        self.flush_icache(address, size)
        return True

    # --- internals -----------------------------------------------------------

    def _check_thread(self, thread: int | None) -> None:
        if thread not in (None, 1):
            raise MachineError(f"no thread {thread}: the emulator has one thread (1)")

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a hook: an exception is stored, emulation stopped, and the
        exception re-raised when emu_start returns."""
        def wrapper(*args: Any) -> Any:
            try:
                return fn(*args)
            except BaseException as exc:
                if self._pending is None:
                    self._pending = exc
                self.uc.emu_stop()
                return None
        return wrapper

    def _on_block(self, _uc: Any, address: int, size: int, _data: Any) -> None:
        hit = self._block_cache.get(address)
        if hit is not None and hit[0] == size:
            self._icount += hit[1]
            return
        n = self._insns_in_block(address, size)
        self._block_cache[address] = (size, n)
        self._icount += n

    def _insns_in_block(self, address: int, size: int) -> int:
        if not self.uc.reg_read(ac.UC_ARM_REG_CPSR) & CPSR_T:
            return size // 4
        code = self.read(address, size)
        n = i = 0
        while i < size:
            hw = code[i] | code[i + 1] << 8 if i + 1 < size else 0
            i += 4 if (hw >> 11) in (0b11101, 0b11110, 0b11111) else 2
            n += 1
        return n

    def _on_interrupt(self, _uc: Any, intno: int, _data: Any) -> None:
        pc = int(self.uc.reg_read(ac.UC_ARM_REG_PC))
        if intno != _EXCP_SWI:
            name = _EXCP_NAMES.get(intno, f"exception {intno}")
            raise MachineError(f"{name} at pc {pc:#010x}")
        r = self.uc.reg_read_batch(_REG_IDS[:8])
        number = r[7]
        svc = pc - (2 if self.uc.reg_read(ac.UC_ARM_REG_CPSR) & CPSR_T else 4)
        result = self.syscalls.handle(self, number, tuple(r[:6]), svc)
        if isinstance(result, SyscallStop):
            if self._in_call is not None:
                raise MachineError(f"the program exited (status {result.status}) during a "
                                   f"call of {self._in_call:#010x} (svc at {svc:#010x})")
            self.exit_status = result.status
            self._stop_reason = StopReason.EXITED
            self.uc.emu_stop()
            return
        self.uc.reg_write(ac.UC_ARM_REG_R0, result & 0xFFFFFFFF)

    def _on_invalid(self, _uc: Any, access: int, address: int, size: int, _value: int,
                    _data: Any) -> bool:
        try:
            pc = int(self.uc.reg_read(ac.UC_ARM_REG_PC))
        except uc.UcError:
            pc = -1
        if self._fault is None:
            self._fault = (access, address, size, pc)
        return False

    def _emulate(self, until: int | None,
                 max_instructions: int | None) -> tuple[StopReason, int]:
        """Run from the current pc until *until* or MAGIC_RETURN (both exits)."""
        if self._running:
            raise MachineError("the emulator is already running (run/call from a hook?)")
        if max_instructions is not None and max_instructions <= 0:
            raise MachineError(f"max_instructions must be positive, not {max_instructions}")
        exits = {MAGIC_RETURN} if until is None else {MAGIC_RETURN, until}
        if exits != self._exits_prev:
            # Unicorn compiles exits into the translated blocks that reach
            # them: drop blocks built for the previous and the new exits.
            for a in exits | self._exits_prev:
                self.uc.ctl_remove_cache(a, a + 4)
            self.uc.ctl_set_exits(sorted(exits))
            self._exits_prev = exits
        cpsr = self.uc.reg_read(ac.UC_ARM_REG_CPSR)
        pc = self.uc.reg_read(ac.UC_ARM_REG_PC)
        begin = pc | 1 if cpsr & CPSR_T else pc
        self._pending = None
        self._fault = None
        self._stop_reason = None
        start_count = self._icount
        self._running = True
        try:
            self.uc.emu_start(begin, 0, 0, max_instructions or 0)
        except _UcError as exc:
            if self._pending is None:
                raise self._fault_error(exc) from None
        finally:
            self._running = False
        pc = int(self.uc.reg_read(ac.UC_ARM_REG_PC))
        if self._pending is not None:
            exc2, self._pending = self._pending, None
            raise exc2
        if self._stop_reason is not None:
            return self._stop_reason, pc
        if pc in exits:
            return StopReason.UNTIL, pc
        if max_instructions is not None:
            self._icount = start_count + max_instructions
            return StopReason.LIMIT, pc
        return StopReason.STOPPED, pc

    def _fault_error(self, exc: Exception) -> MachineError:
        if self._fault is not None:
            access, address, size, pc = self._fault
            what = _ACCESS.get(access, f"access {access} to")
            return MachineError(f"invalid memory access: {what} memory at {address:#010x} "
                                f"({size} bytes) at pc {pc:#010x}")
        pc = int(self.uc.reg_read(ac.UC_ARM_REG_PC))
        return MachineError(f"emulation failed at pc {pc:#010x}: {exc}")

    def _call(self, address: int, args: Sequence[int], regs: Mapping[str, int] | None,
              until: int | None, max_instructions: int) -> Regs:
        saved = self.get_regs()
        sp = _align_down(saved.sp - 256, 8)
        stack_words = [a & 0xFFFFFFFF for a in args[4:]]
        if stack_words:
            sp = _align_down(sp - 4 * len(stack_words), 8)
            self.write(sp, struct.pack(f"<{len(stack_words)}I", *stack_words))
        r = list(saved.r)
        for i, a in enumerate(args[:4]):
            r[i] = a & 0xFFFFFFFF
        cpsr = (saved.cpsr & ~CPSR_T) | (CPSR_T if address & 1 else 0)
        self.set_regs(Regs(r, sp, MAGIC_RETURN, address & ~1, cpsr))
        for name, value in (regs or {}).items():
            if name not in _REG_BY_NAME or name in ("pc", "cpsr"):
                raise MachineError(f"call: cannot preset register {name!r}")
            self.set_reg(name, value)
        self._in_call = address
        try:
            reason, pc = self._emulate(until, max_instructions)
            if reason is StopReason.UNTIL and pc == (until if until is not None
                                                     else MAGIC_RETURN):
                return self.get_regs()
            if reason is StopReason.UNTIL:
                raise MachineError(f"the function at {address:#010x} returned without "
                                   f"reaching {until or 0:#010x}")
            if reason is StopReason.LIMIT:
                raise MachineError(f"the function at {address:#010x} did not return within "
                                   f"{max_instructions} instructions (pc {pc:#010x})")
            raise MachineError(f"the call of {address:#010x} stopped at pc {pc:#010x}")
        finally:
            self._in_call = None
            self.set_regs(saved)
