"""Relocatable ARM objects into a target: layout, symbol resolution,
relocations (REL and RELA) and veneers, as the kernel's module loader does.

    module = load_objects(["patch.o"], allocator=alloc, target=program,
                          exports=runtime_symbols)
    module.write_to(machine)
"""

from armlp.loader.layout import Allocator, ObjectFile
from armlp.loader.load import load_object, load_objects
from armlp.loader.module import LoadedModule, LoadedSection, ModuleSymbol
from armlp.loader.relocate import (
    SUPPORTED_TYPES,
    ArchInfo,
    Resolved,
    apply_relocate,
    apply_relocate_add,
    rel_addend,
    relocate_one,
)
from armlp.loader.resolve import SymbolResolver, parse_klp_name
from armlp.loader.veneers import Veneer, VeneerArea

__all__ = [
    "SUPPORTED_TYPES",
    "Allocator",
    "ArchInfo",
    "LoadedModule",
    "LoadedSection",
    "ModuleSymbol",
    "ObjectFile",
    "Resolved",
    "SymbolResolver",
    "Veneer",
    "VeneerArea",
    "apply_relocate",
    "apply_relocate_add",
    "load_object",
    "load_objects",
    "parse_klp_name",
    "rel_addend",
    "relocate_one",
]
