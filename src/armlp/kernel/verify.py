"""The proof reaches the kernel: ``armlp verify VMLINUX``.

For each patchable function of a kernel image, the emulator runs the path a
call takes once armlp_klp has patched it, on the kernel's own code:

1. the function's prologue, from the image;
2. its mcount site calling ``ftrace_regs_caller`` (what ftrace writes there
   for an ops with SAVE_REGS), the image's own ftrace_regs_caller saving a
   ``pt_regs`` and calling the ops;
3. a handler doing what armlp_klp's does: ``regs->ARM_pc = trampoline``;
4. ftrace_regs_caller restoring r0-r12, lr and pc from ``pt_regs`` (sp it
   computes itself);
5. the trampoline ``armlp kernel build`` generates for that function (the
   same :func:`~armlp.livepatch.trampoline.undo_words`), ending in a branch
   to the new function: here a probe.

At the probe, r0-r11, sp, lr and the stack arguments must be the caller's:
the context a direct call of the new function would see.
"""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Iterable, Iterator

from armlp.analysis.scan import FunctionReport
from armlp.arm.a32 import IP, LR, PC, encode_b, encode_bl, encode_bx, encode_ldr_imm, encode_str_imm
from armlp.elf.image import ElfImage
from armlp.errors import ArmlpError
from armlp.livepatch.trampoline import undo_words
from armlp.machine.base import CodeWrite
from armlp.machine.emulator import Emulator
from armlp.machine.exec_loader import load_kernel_image
from armlp.verify import UDF_PAGE, Bench, FunctionProof, PathResult

#: offsetof(struct pt_regs, ARM_pc): uregs[15].
S_PC = 15 * 4
SCRATCH = 1 << 20
PATH = "kernel"


class KernelProver:
    """Proves the kernel path (see the module docstring) per function."""

    def __init__(self, image: ElfImage, *, seed: int = 0) -> None:
        if image.kind != "vmlinux":
            raise ArmlpError(f"{image.path}: not a kernel image (vmlinux)")
        self.image = image
        self.emu = Emulator(count_instructions=True)
        base = load_kernel_image(self.emu, image, SCRATCH)
        regs_caller = self._symbol("ftrace_regs_caller")
        regs_call = self._symbol("ftrace_regs_call")
        self.regs_caller = regs_caller
        # [base] the handler, [base+12] its trampoline slot, [base+0x100] the
        # trampoline, [base+0x1000] the probe page, then the stack.
        self.handler, self.slot, self.tramp = base, base + 12, base + 0x100
        probe = base + 0x1000
        self.emu.write(probe, UDF_PAGE)
        self.emu.write(self.handler, struct.pack(
            "<3I", encode_ldr_imm(IP, PC, 4),        # ip = [slot]
            encode_str_imm(IP, 3, S_PC),              # regs->ARM_pc = ip  (r3 = regs)
            encode_bx(LR)))
        call = self.emu.read(regs_call, 4)
        self.emu.write_code([CodeWrite(regs_call, call,
                                       struct.pack("<I", encode_bl(regs_call, self.handler)))])
        self.bench = Bench(self.emu, probe, base + SCRATCH - 0x1000, random.Random(seed))

    def _symbol(self, name: str) -> int:
        try:
            return self.image.symbols.lookup(name, where=self.image.path.name).value
        except ArmlpError as exc:
            raise ArmlpError(f"{exc}: not a kernel with ftrace with regs") from None

    def prove(self, reports: Iterable[FunctionReport], trials: int = 8) -> list[FunctionProof]:
        out: list[FunctionProof] = []
        for r in reports:
            proof = FunctionProof(r.fn.name, r.fn.sympos, r.fn.address, r.verdict.rule)
            proof.paths[PATH] = self._prove_one(r, trials)
            out.append(proof)
        return out

    @contextlib.contextmanager
    def hooked(self, r: FunctionReport, new_pc: int) -> Iterator[None]:
        """Inside, *r*'s site calls ftrace_regs_caller, whose handler sets the
        saved pc to *new_pc* (ftrace's call, armlp_klp's handler)."""
        assert r.site is not None
        emu = self.emu
        emu.write(self.slot, struct.pack("<I", new_pc))
        site = emu.read(r.site, 4)
        emu.write_code([CodeWrite(r.site, site,
                                  struct.pack("<I", encode_bl(r.site, self.regs_caller)))])
        try:
            yield
        finally:
            emu.write_code([CodeWrite(r.site, emu.read(r.site, 4), site)])

    def _prove_one(self, r: FunctionReport, trials: int) -> PathResult:
        assert r.undo is not None
        words = undo_words(r.undo, 0)
        words.append(encode_b(self.tramp + 4 * len(words), self.bench.probe))
        self.emu.write(self.tramp, struct.pack(f"<{len(words)}I", *words))
        self.emu.flush_icache(self.tramp, 4 * len(words))
        with self.hooked(r, self.tramp):
            return self.bench.check_path(r.fn.address, trials)
