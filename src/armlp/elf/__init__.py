"""Reading 32-bit little-endian ARM ELF files: executables, relocatable
objects and kernel images (pyelftools underneath)."""

from armlp.elf.image import ElfImage, Section
from armlp.elf.symbols import FunctionSymbol, Symbol, SymbolTable

__all__ = ["ElfImage", "FunctionSymbol", "Section", "Symbol", "SymbolTable"]
