"""armlp's scratch pages in a target behind a GDB stub.

Three pages armlp maps in the target (see ``runtime/scratch.S``):

* the code page: ``svc #0`` for system calls on a borrowed thread, the
  return address of calls, a copy routine, ``restore`` (gives a borrowed
  thread back its registers should armlp die mid-way), and the start of the
  agent thread;
* the data page: the borrowed thread's saved registers (``restore`` reads
  them);
* the agent's stack.

The code is assembled with the runtime (cached by content) and placed by
copying its one section: it is position independent and has no relocations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from armlp.errors import MachineError
from armlp.runtime.build import scratch_object

PAGE = 0x1000
#: Code page, data page (the save block), the agent's stack.
SCRATCH_PAGES = 3
#: ``udf #16``: what fills the rest of the code page.
UDF = 0xE7F001F0
_PREFIX = "armlp_scratch_"


@dataclass(frozen=True)
class ScratchCode:
    """The scratch page's code and the offsets of its entry points."""

    code: bytes
    offsets: dict[str, int]

    def offset(self, name: str) -> int:
        """Offset of ``armlp_scratch_NAME`` in the code page."""
        try:
            return self.offsets[name]
        except KeyError:
            raise MachineError(f"the scratch page has no entry {_PREFIX}{name}") from None

    def page(self, agent_mask: tuple[int, int]) -> bytes:
        """The code page as written to the target, with the agent's signal
        mask (two words, guest signal n is bit n - 1) filled in."""
        page = bytearray(UDF.to_bytes(4, "little") * (PAGE // 4))
        page[:len(self.code)] = self.code
        at = self.offset("agent_mask")
        page[at:at + 8] = agent_mask[0].to_bytes(4, "little") + agent_mask[1].to_bytes(4, "little")
        return bytes(page)


@functools.cache
def scratch_code() -> ScratchCode:
    """Build (cached) and read the scratch page's code."""
    path = scratch_object()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        if text is None or elf.get_section_by_name(".rel.text") is not None:
            raise MachineError(f"{path}: the scratch page must be one .text section without "
                               f"relocations")
        code = bytes(text.data())
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise MachineError(f"{path}: no symbol table")
        offsets = {s.name[len(_PREFIX):]: int(s["st_value"]) for s in symtab.iter_symbols()
                   if s.name.startswith(_PREFIX)}
    if len(code) > PAGE:
        raise MachineError(f"{path}: the scratch code ({len(code)} bytes) exceeds a page")
    return ScratchCode(code, offsets)


def agent_mask(allowed_signal: int) -> tuple[int, int]:
    """A guest signal mask blocking every signal but *allowed_signal*."""
    if not 1 <= allowed_signal <= 64:
        raise MachineError(f"guest signal {allowed_signal} out of range 1-64")
    mask = ((1 << 64) - 1) & ~(1 << (allowed_signal - 1))
    return mask & 0xFFFFFFFF, mask >> 32
