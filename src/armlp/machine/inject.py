"""Running code in a target behind a GDB stub: system calls and calls on a
borrowed thread, armlp's scratch pages, its agent thread, target memory.

Syscalls in the target
    :meth:`Injection._syscall` borrows the stopped thread (armlp's agent
    once it runs): saves its registers (the whole ``g`` packet), sets r7 and
    r0-r5, points pc at an ``svc #0`` (the scratch page's; before that page
    exists, one of the program's text), single-steps it, reads r0 and
    writes the saved packet back, so the thread is restored bit for bit.
    :meth:`alloc` is an ``mmap2`` with a hint within branch range of
    *near*, :meth:`free` ``munmap``.

Calls
    :meth:`call` runs a function on the borrowed thread with ``lr`` at a
    breakpoint in the scratch page, then restores the thread.  Should armlp
    die, a system call or a call in progress ends in ``b restore``, which
    gives the thread back its own registers (see
    :mod:`armlp.control.guardian` and ``runtime/scratch.S``).

The agent
    :meth:`start_agent` starts armlp's own thread in the program (see its
    docstring): every stop of armlp's is a signal to it, never to a thread
    of the program's.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Sequence

from armlp.arm.a32 import CPSR_IT, CPSR_T
from armlp.arm.t32 import NEAR_RANGE
from armlp.errors import MachineError
from armlp.machine.base import Region, Regs
from armlp.machine.parking import Parking
from armlp.machine.rsp_packets import StopReply
from armlp.machine.scratch import SCRATCH_PAGES, agent_mask, scratch_code

PAGE = 0x1000
#: ARM EABI syscall numbers armlp uses.
NR_GETPID, NR_MUNMAP, NR_MPROTECT, NR_MMAP2, NR_GETTID = 20, 91, 125, 192, 224
NR_CLONE = 120
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
PROT_RWX = PROT_READ | PROT_WRITE | PROT_EXEC
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
#: clone flags of a thread (what pthread_create passes, less TLS and tid words).
CLONE_THREAD_FLAGS = 0x00050F00
#: GDB's signal numbers.
GDB_SIGINT, GDB_SIGTRAP = 2, 5
#: ``svc #0`` in ARM state.
SVC0 = 0xEF000000
#: ``mov r0, r0``: what follows a borrowed svc (qemu steps it with the svc).
ARM_NOP = 0xE1A00000
STAGING = 16 * 4096


def _page_down(v: int) -> int:
    return v & ~(PAGE - 1)


def _page_up(v: int) -> int:
    return (v + PAGE - 1) & ~(PAGE - 1)


class Injection(Parking):
    """System calls, calls, scratch pages and the agent for
    :class:`~armlp.machine.gdb.GdbMachine` (a mixin: the state is the
    machine's)."""

    segments: list[Region]
    interp_segments: list[Region]
    call_timeout: float
    _staging: int | None
    _svc: int | None
    _bootstrap: bool
    #: Program bytes lent to the bootstrap's svc: (address, original bytes).
    _borrowed: tuple[int, bytes] | None
    _rwx_text: bool
    _allocs: dict[int, int]
    _pass: dict[int, int]

    def _need_stopped(self, what: str) -> None:
        raise NotImplementedError

    def _leftover(self, stop: StopReply) -> bool:
        raise NotImplementedError

    def _flush_batch(self) -> None:
        raise NotImplementedError

    #: Code written with write_code(stale_ok=True) whose pages keep qemu's
    #: old translations until the next drop (see Machine.write_code).
    _stale: tuple[tuple[int, int], ...] = ()

    @property
    def stale(self) -> bool:
        return bool(self._stale)

    def flush_stale(self) -> None:
        if self._stale:
            self._need_stopped("flush code")
            self._drop_translations([])

    def _drop_translations(self, images: Sequence[tuple[int, bytes | bytearray]], *,
                           stale_ok: bool = False) -> None:
        """After code was written behind qemu's back: an mprotect of the pages
        in the target makes qemu drop what it translated from them (a page
        it write-protected for its translations regains write permission,
        which invalidates them), so every thread runs the new code.  With
        *stale_ok* the pages wait for the next drop, which takes them too."""
        spans = (*self._stale, *((start, len(img)) for start, img in images))
        if stale_ok:
            self._stale = spans
            return
        self._stale = ()
        pages = sorted({p for start, size in spans
                        for p in range(_page_down(start), _page_up(start + size), PAGE)})
        runs: list[list[int]] = []
        for p in pages:
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + PAGE
            else:
                runs.append([p, p + PAGE])
        for lo, hi in runs:
            r = self._syscall(NR_MPROTECT, lo, hi - lo, PROT_RWX)
            if r != 0:
                raise MachineError(f"mprotect({lo:#010x}, {hi - lo:#x}) in the target failed: "
                                   f"errno {-_signed(r)}")

    def alloc(self, size: int, *, near: int | None = None) -> int:
        """``mmap2`` RWX anonymous memory in the target; with *near*, within
        ±16 MiB of it (a Thumb BL's reach: the highest free place below near + 16 MiB, which
        leaves the program's brk room to grow)."""
        if size <= 0:
            raise MachineError(f"alloc of {size} bytes")
        size = _page_up(size)
        if near is None:
            addr = self._mmap(0, size)
            self._allocs[addr] = size
            return addr
        lo = max(PAGE, _page_up(near - NEAR_RANGE + PAGE))
        hi = _page_down(near + NEAR_RANGE - PAGE)
        taken = sorted([(s.start, s.end) for s in self.segments]
                       + [(a, a + n) for a, n in self._allocs.items()])
        hint = hi - size
        for _ in range(64):
            for s0, s1 in reversed(taken):      # step below what we know is taken
                if s0 < hint + size and hint < s1:
                    hint = _page_down(s0 - size)
            if hint < lo:
                break
            addr = self._mmap(hint, size)
            if lo <= addr and addr + size <= hi:
                self._allocs[addr] = size
                return addr
            self._syscall(NR_MUNMAP, addr, size)
            hint = _page_down(hint - max(size, 1 << 20))
        raise MachineError(f"no free memory of {size:#x} bytes within branch range of "
                           f"{near:#010x}")

    def free(self, address: int, size: int) -> None:
        size = _page_up(size) or PAGE
        r = self._syscall(NR_MUNMAP, address, size)
        if r != 0:
            raise MachineError(f"munmap({address:#010x}, {size:#x}) failed: "
                               f"errno {-_signed(r)}")
        self._allocs.pop(address, None)

    def call(self, address: int, args: Sequence[int] = (), *,
             max_instructions: int = 10_000_000) -> int:
        """Run the function at *address* on the stopped thread (AAPCS, at
        most four arguments) until it returns to a breakpoint in armlp's
        scratch page; restores the thread exactly.  *max_instructions* is
        not countable through a stub: :attr:`call_timeout` bounds the call."""
        if len(args) > 4:
            raise MachineError(f"call of {address:#010x}: at most four arguments "
                               f"({len(args)} given)")
        self._need_stopped("call a function")
        ret = self._scratch_at("return")
        tid = self.thread
        saved = self.parked_registers(tid) if self.parked else self.conn.read_all_registers(tid)
        regs = _decode_regs(saved)
        r = list(regs.r)
        for i, a in enumerate(args):
            r[i] = a & 0xFFFFFFFF
        sp = (regs.sp - 256) & ~7
        cpsr = (regs.cpsr & ~(CPSR_T | CPSR_IT)) | (CPSR_T if address & 1 else 0)
        self._arm_restore(tid, saved)
        if self.parked:
            r[6] = self._begin_run()
            run = Regs(r, sp, self._scratch_at("parked_return"), address & ~1, cpsr)
            return self._run_parked(tid, saved, _encode_regs(saved, run),
                                    f"the call of {address:#010x}", self.call_timeout)
        self.conn.write_all_registers(_encode_regs(saved, Regs(r, sp, ret, address & ~1, cpsr)),
                                      tid)
        self.conn.set_breakpoint(ret)
        try:
            stop = self._run_until_trap(tid, ret, self.call_timeout,
                                        f"the call of {address:#010x}")
            if stop is None:
                raise MachineError(f"the call of {address:#010x} did not return within "
                                   f"{self.call_timeout} s")
            result = self.conn.read_register(0, tid)
        finally:
            if self.exit is None:
                with contextlib.suppress(MachineError):
                    self.conn.remove_breakpoint(ret)
                self.conn.write_all_registers(saved, tid)
        return result

    def syscall(self, number: int, *args: int) -> int:
        """Run system call *number* on the stopped thread; returns r0 (a
        negative errno as its two's complement)."""
        self._flush_batch()
        self._need_stopped("run a system call")
        return self._syscall(number, *args)

    def make_text_writable(self) -> None:
        """``mprotect`` every executable segment of the program RWX."""
        if self._rwx_text:
            return
        for seg in self.segments:
            if seg.executable:
                start, end = _page_down(seg.start), _page_up(seg.end)
                r = self._syscall(NR_MPROTECT, start, end - start, PROT_RWX)
                if r != 0:
                    raise MachineError(f"mprotect({start:#010x}, {end - start:#x}, RWX) in "
                                       f"the target failed: errno {-_signed(r)}")
        self._rwx_text = True

    def start_agent(self) -> int:
        """Start armlp's agent thread in the stopped program and return its id.

        The agent (``runtime/scratch.S``) is a thread of the program that
        blocks every signal but :attr:`agent_signal` and sleeps.  From then on
        :meth:`stop` signals the agent alone, so the stop interrupts none of
        the program's system calls: qemu-user turns a signal that interrupts
        a blocking host call into ``EINTR`` for the guest (a program in
        ``read``, ``poll`` or ``nanosleep`` would see it), and the agent's
        own wait is the only one interrupted.  System calls and calls run on
        the stopped agent too, never on a thread of the program's."""
        if self.agent is not None:
            return self.agent
        if self.agent_signal is None:
            raise MachineError("this stub has no agent signal: cannot start the agent thread")
        self._need_stopped("start the agent thread")
        base = self._scratch_base()
        stack = base + SCRATCH_PAGES * PAGE - 64
        tid = self._syscall(NR_CLONE, CLONE_THREAD_FLAGS, stack, 0, 0, 0, at="clone")
        if _signed(tid) <= 0:
            raise MachineError(f"clone of armlp's agent thread in the target failed: "
                               f"errno {-_signed(tid)}")
        self.agent = tid
        return tid

    # --- internals ---------------------------------------------------------------

    def _target_copy(self, address: int, data: bytes) -> None:
        """Write *data* by running armlp's copy routine in the target: the
        bytes go to a data-only staging area, the target copies them
        (aligned words with single stores, so no thread sees half a word)."""
        if self._staging is None:
            self._staging = self._mmap(0, STAGING, prot=PROT_READ | PROT_WRITE)
        copy = self._scratch_at("copy")
        for off in range(0, len(data), STAGING):
            part = data[off:off + STAGING]
            self.conn.write_memory(self._staging, part)
            self.call(copy, (address + off, self._staging, len(part)))

    # The program's text changes only through armlp: while the target is
    # stopped, reads inside its executable segments come from a page cache
    # (the livepatch core reads sites and entry words one by one).

    def _find_svc(self) -> int:
        """An ``svc #0`` to run system calls with: armlp's own in the scratch
        page once it exists; before that (for the scratch page's mmap) one in
        the program's text followed by an instruction without side effects
        outside the registers (qemu-user 7.2 steps the instruction after an
        ``svc`` together with it; the registers are restored anyway)."""
        if self._scratch is not None:
            return self._scratch_at("svc")
        if self._svc is not None:
            return self._svc
        chunk = 2048
        # A dynamically linked program's text has no svc: ld.so's has.
        for seg in [*self.segments, *self.interp_segments]:
            if not seg.executable:
                continue
            a = (seg.start + 3) & ~3
            while a < seg.end:
                n = min(chunk, seg.end - a) & ~3
                if n <= 0:
                    break
                data = self.conn.read_memory(a, n + 4 if a + n + 4 <= seg.end else n)
                for i in range(0, n, 4):
                    if struct.unpack_from("<I", data, i)[0] != SVC0 or i + 8 > len(data):
                        continue
                    if _harmless(struct.unpack_from("<I", data, i + 4)[0]):
                        self._svc = a + i
                        return a + i
                a += n
        borrowed = self._borrow_svc()
        if borrowed is not None:
            return borrowed
        raise MachineError("no usable 'svc #0' instruction in the program's or its "
                           "interpreter's text to run a system call with")

    def _borrow_svc(self) -> int | None:
        """Room for ``svc #0; nop`` when no text has a usable svc (a dynamic
        armhf program: its own text makes no system call, and its ld.so is
        Thumb code): the first 8 bytes of the program's first executable
        segment, its ELF header, which nothing executes.  Only for the
        scratch page's own mmap; given back right after (see _syscall)."""
        seg = next((s for s in self.segments if s.executable), None)
        if not self._bootstrap or seg is None or self._borrowed is not None:
            return None
        self._borrowed = (seg.start, self.conn.read_memory(seg.start, 8))
        self._poke(seg.start, struct.pack("<II", SVC0, ARM_NOP))
        return seg.start

    def _poke(self, address: int, data: bytes) -> None:
        """Write read-only text: through /proc/PID/mem for a local qemu (its
        stub refuses), else through the stub (gdbserver writes with ptrace)."""
        if self.host_memory is not None:
            try:
                self.host_memory.write(address, data)
                return
            except OSError as exc:
                raise MachineError(f"writing {len(data)} bytes at {address:#010x} through "
                                   f"/proc/{self.host_memory.pid}/mem: {exc.strerror}") from None
        self.conn.write_memory(address, data)

    def _syscall(self, number: int, *args: int, at: str = "svc") -> int:
        """System call *number* on the stopped thread, through the scratch
        page's ``svc`` named *at*; the thread's registers are restored."""
        if len(args) > 6:
            raise MachineError(f"syscall {number}: at most six arguments")
        if self._scratch is None and not self._bootstrap:
            self._bootstrap = True      # the scratch page's own mmap uses the text's svc
            try:
                self._scratch_base()
            finally:
                self._bootstrap = False
                if self._borrowed is not None:
                    lent, saved = self._borrowed
                    self._borrowed = None
                    self._poke(lent, saved)
        if self.parked and at == "svc":
            posted = self._post(number, args, f"syscall {number}", self.call_timeout)
            if posted is not None:
                return posted
        svc = self._find_svc() if self._scratch is None else self._scratch_at(at)
        tid = self.thread
        saved = self.parked_registers(tid) if self.parked else self.conn.read_all_registers(tid)
        regs = _decode_regs(saved)
        r = list(regs.r)
        for i in range(6):
            r[i] = args[i] & 0xFFFFFFFF if i < len(args) else 0
        r[7] = number
        cpsr = regs.cpsr & ~(CPSR_T | CPSR_IT)
        if self._scratch is not None:
            self._arm_restore(tid, saved)
        if self.parked:
            r[6] = self._begin_run()
            run = Regs(r, regs.sp, regs.lr, self._scratch_at("parked_svc"), cpsr)
            return self._run_parked(tid, saved, _encode_regs(saved, run),
                                    f"syscall {number}", self.call_timeout)
        self.conn.write_all_registers(_encode_regs(saved, Regs(r, regs.sp, regs.lr, svc, cpsr)),
                                      tid)
        try:
            return self._step_svc(number, tid, svc)
        finally:
            if self.exit is None:
                self.conn.write_all_registers(saved, tid)

    def _step_svc(self, number: int, tid: int, svc: int) -> int:
        """Single-step thread *tid* through the ``svc`` at *svc*; r0 after it."""
        for _ in range(16):
            stop = self.conn.step(tid)
            while not stop.exited and stop.thread not in (None, tid):
                # A thread of the program's came in through the open door.
                self.hand_back(stop.thread, stop.signal if self._programs(stop) else 0)
                stop = self.conn.wait()
            if stop.exited:
                self._stopped(stop)
                raise MachineError(f"the target {stop.describe()} during syscall {number}")
            pc = self.conn.read_register(15, tid)
            done = (svc + 4, svc + 8)            # qemu-user 7.2 steps one more
            if pc in done or (self._scratch is not None
                              and pc == self._scratch_at("restore")):
                return self.conn.read_register(0, tid)
            if pc != svc:
                raise MachineError(f"syscall {number}: single step from {svc:#010x} "
                                   f"stopped at {pc:#010x} (signal {stop.signal})")
            if self._programs(stop):
                self._pass[tid] = stop.signal       # a signal came first: keep it
        raise MachineError(f"syscall {number}: the svc at {svc:#010x} never completed")

    def _mmap(self, hint: int, size: int, *, prot: int = PROT_RWX) -> int:
        r = self._syscall(NR_MMAP2, hint, size, prot, MAP_PRIVATE | MAP_ANONYMOUS,
                          0xFFFFFFFF, 0)
        if _signed(r) < 0 and _signed(r) > -4096:
            raise MachineError(f"mmap of {size:#x} bytes RWX in the target failed: "
                               f"errno {-_signed(r)}")
        return r

    def _scratch_base(self) -> int:
        """armlp's pages in the target (see :mod:`armlp.machine.scratch`),
        mapped and written on first use.

        Why ``restore``: if armlp dies while a system call runs on a borrowed
        thread, the stub lets the thread go on without armlp; it falls
        through to ``restore``, which reloads its own registers, flags
        included, and jumps back to where it was."""
        if self._scratch is None:
            addr = self._mmap(0, SCRATCH_PAGES * PAGE)
            mask = agent_mask(self.agent_signal) if self.agent_signal else (0xFFFFFFFF,) * 2
            self.conn.write_memory(addr, scratch_code().page((mask[0], mask[1])))
            self._scratch = addr
        return self._scratch

    def _scratch_at(self, name: str) -> int:
        """Address of the scratch page's entry ``armlp_scratch_NAME``."""
        return self._scratch_base() + scratch_code().offset(name)

    def _arm_restore(self, tid: int, saved: bytes) -> None:
        """Prepare ``restore`` to give thread *tid* back its registers *saved*:
        the save block, and its r12 and pc just below its sp."""
        assert self._scratch is not None
        regs = _decode_regs(saved)
        pc = regs.pc | (1 if regs.cpsr & CPSR_T else 0)
        block = struct.pack("<17I", *regs.r, regs.sp, regs.lr, pc, regs.cpsr)
        self._poke(self._scratch + PAGE, block)
        self._poke(regs.sp - 8, struct.pack("<II", regs.r[12], pc))

    def _run_until_trap(self, tid: int, pc_wanted: int, timeout: float,
                        what: str) -> StopReply | None:
        self._cache.clear()
        self.running = True
        self.conn.resume(0, tid)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._interrupt_thread(self.thread or None)
                stop = self.conn.wait(self.conn.timeout)
                self._stopped(stop)
                return None
            try:
                stop = self.conn.wait(left)
            except MachineError as exc:
                if "timed out" not in str(exc):
                    raise
                continue
            if stop.exited:
                self._stopped(stop)
                raise MachineError(f"the target {stop.describe()} during {what}")
            if self._leftover(stop):
                self.conn.resume(0, stop.thread)
                continue
            if stop.thread not in (None, tid):
                self.hand_back(stop.thread, stop.signal if self._programs(stop) else 0)
                continue
            if stop.signal == GDB_SIGTRAP:
                self._stopped(stop)
                pc = self.conn.read_register(15, stop.thread or tid)
                if pc != pc_wanted:
                    raise MachineError(f"{what} stopped at {pc:#010x} (breakpoint or step "
                                       f"not armlp's)")
                return stop
            if stop.signal in (11, 4, 10, 8, 6):      # SEGV, ILL, BUS, FPE, ABRT
                self._stopped(stop)
                pc = self.conn.read_register(15, stop.thread or tid)
                raise MachineError(f"{what} faulted with signal {stop.signal} at pc {pc:#010x}")
            self.conn.resume(stop.signal, stop.thread)


def _harmless(word: int) -> bool:
    """An unconditional ARM instruction that only writes registers other
    than pc and r0 (the system call's result, read after qemu-user 7.2
    stepped it too): data processing (not multiply or the extra load/store
    space), ``ldr``/``ldrb`` or ``ldm`` without pc and r0."""
    if word >> 28 != 0xE:
        return False
    op = (word >> 25) & 7
    rd = (word >> 12) & 0xF
    rn = (word >> 16) & 0xF
    opcode = (word >> 21) & 0xF
    compare = 8 <= opcode <= 11 and (word >> 20) & 1     # tst/teq/cmp/cmn: no rd
    if op == 0:     # data processing, register: bits 7 and 4 both set is something else
        if (word >> 7) & 1 and (word >> 4) & 1:
            return False
        if (word >> 20) & 1 == 0 and 8 <= opcode <= 11:     # misc space (msr, bx...)
            return False
        return bool(compare) or rd not in (0, 15)
    if op == 1:     # data processing, immediate
        if (word >> 20) & 1 == 0 and 8 <= opcode <= 11:     # movw/movt/msr
            return (word >> 20) & 0x1B == 0x10 and rd not in (0, 15)   # movw, movt
        return bool(compare) or rd not in (0, 15)
    writeback = (word >> 21) & 1 or not (word >> 24) & 1
    if op in (2, 3):    # single load/store (op 3 with bit 4: media/udf)
        if op == 3 and (word >> 4) & 1:
            return False
        return bool((word >> 20) & 1) and rd not in (0, 15) and not (writeback and rn == 0)
    if op == 4:     # ldm/stm
        return (bool((word >> 20) & 1) and not (word >> 15) & 1 and not word & 1
                and not ((word >> 21) & 1 and rn == 0))
    return False


def _signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _cpsr_offset(raw: bytes) -> int:
    # qemu after the target description, gdbserver: r0-r15, cpsr, (VFP...).
    # The legacy layout (no XML): r0-r15, f0-f7 (12 bytes each), fps, cpsr.
    return 164 if len(raw) == 168 else 64


def _decode_regs(raw: bytes) -> Regs:
    if len(raw) < 68:
        raise MachineError(f"register packet of {len(raw)} bytes: expected r0-r15 and cpsr")
    core = struct.unpack_from("<16I", raw, 0)
    cpsr = struct.unpack_from("<I", raw, _cpsr_offset(raw))[0]
    return Regs(list(core[:13]), core[13], core[14], core[15], cpsr)


def _encode_regs(raw: bytes, regs: Regs) -> bytes:
    out = bytearray(raw)
    vals = regs.as_list()
    struct.pack_into("<16I", out, 0, *(v & 0xFFFFFFFF for v in vals[:16]))
    struct.pack_into("<I", out, _cpsr_offset(raw), vals[16] & 0xFFFFFFFF)
    return bytes(out)
