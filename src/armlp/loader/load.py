"""``load_objects``: relocatable ARM objects to a :class:`LoadedModule`.

The steps follow the kernel's ``load_module``: collect the allocated
sections, reserve veneers (``count_plts``), lay out (``layout_sections``),
resolve symbols (``simplify_symbols``), apply relocations
(``apply_relocations``: :func:`apply_relocate` for REL sections,
:func:`apply_relocate_add` for RELA).  Every step is pure; nothing touches a
machine until the caller runs :meth:`LoadedModule.write_to`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from armlp.elf.image import ElfImage
from armlp.elf.relocs import Relocation
from armlp.elf.symbols import STB_LOCAL, STT_SECTION
from armlp.errors import LoaderError, SymbolError
from armlp.loader.layout import (
    Allocator,
    InputSection,
    ObjectFile,
    collect_sections,
    layout_sections,
)
from armlp.loader.module import LoadedModule, LoadedSection
from armlp.loader.relocate import (
    ARM_BRANCH_TYPES,
    BRANCH_TYPES,
    MARKER_TYPES,
    SUPPORTED_TYPES,
    Resolved,
    apply_relocate,
    apply_relocate_add,
    describe,
)
from armlp.loader.resolve import SymbolResolver, UndefinedSymbol
from armlp.loader.veneers import VENEER_SIZE, VeneerArea

ObjectSource = str | Path | ElfImage


def load_object(source: ObjectSource, **kwargs: object) -> LoadedModule:
    """:func:`load_objects` for one object."""
    return load_objects([source], **kwargs)  # type: ignore[arg-type]


def load_objects(sources: Sequence[ObjectSource], *, base: int | None = None,
                 allocator: Allocator | None = None,
                 section_addresses: Mapping[tuple[str, str], int] | None = None,
                 target: ElfImage | None = None, target_name: str | None = None,
                 exports: Mapping[str, int] | None = None,
                 libraries: Mapping[str, ElfImage] | None = None,
                 veneer_address: int | None = None) -> LoadedModule:
    """Lay out, resolve and relocate *sources* (``.o`` paths or images).

    *base* or *allocator* (``allocator(size, align) -> address``) places the
    contiguous region: code, the veneer area, read-only data, data, bss.
    *section_addresses* pins sections by ``(object, section name)`` (object:
    its path or file name) outside that region.  Undefined symbols resolve
    against the set's globals, *exports* (name -> address, bit 0 for Thumb)
    and *target* (the patched program; ``.klp.sym.<target_name>.<name>,<pos>``
    selects a static by sympos; ``.klp.sym.<soname>.<name>,<pos>`` one of
    *libraries*, soname -> image at its load address).  Raises LoaderError;
    touches no machine.
    """
    if not sources:
        raise LoaderError("no objects to load")
    objects = [ObjectFile(s) for s in sources]
    inputs = collect_sections(objects)
    fixed = _fixed_keys(objects, inputs, section_addresses or {})
    relocs = {inp.key: objects[inp.obj].image.relocations_for(inp.section) for inp in inputs}
    _check_types(objects, inputs, relocs)
    veneer_size = _count_veneers(objects, inputs, relocs) * VENEER_SIZE
    layout = layout_sections(objects, inputs, veneer_size=veneer_size, base=base,
                             allocator=allocator, fixed=fixed, veneer_address=veneer_address)
    resolver = SymbolResolver(objects, layout.addresses, target=target,
                              target_name=target_name, exports=exports,
                              libraries=libraries)
    resolved = _resolve_all(objects, inputs, relocs, resolver)
    veneers = VeneerArea(layout.veneer_address, veneer_size // VENEER_SIZE)
    sections = []
    for inp in sorted(inputs, key=lambda i: layout.addresses[i.key]):
        obj = objects[inp.obj]
        addr = layout.addresses[inp.key]
        data = bytearray(obj.image.section_data(inp.section))
        rels = relocs[inp.key]
        table = resolved[inp.key]

        def lookup(rel: Relocation, table: dict[tuple[str, int], Resolved] = table) -> Resolved:
            return table[rel.reloc_section, rel.index]

        rel_list = [r for r in rels if r.addend is None]
        rela_list = [r for r in rels if r.addend is not None]
        apply_relocate(data, addr, rel_list, lookup, veneers, where=obj.name, arch=obj.arch)
        apply_relocate_add(data, addr, rela_list, lookup, veneers, where=obj.name,
                           arch=obj.arch)
        sections.append(LoadedSection(obj.name, inp.section.name, inp.section.index, addr,
                                      bytes(data), inp.align, inp.section.is_exec,
                                      inp.kind >= 3, not inp.section.has_bytes))
    return LoadedModule(sections, resolver.module_symbols(), list(veneers.veneers),
                        (veneers.address, veneers.data() if veneer_size else b""),
                        layout.region)


def _fixed_keys(objects: Sequence[ObjectFile], inputs: Sequence[InputSection],
                given: Mapping[tuple[str, str], int]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for (oname, sname), addr in given.items():
        keys = [i.key for i in inputs
                if i.section.name == sname and objects[i.obj].matches(oname)]
        if len(keys) != 1:
            raise LoaderError(f"section address for {oname}:{sname}: {len(keys)} allocated "
                              f"sections of the objects match")
        out[keys[0]] = addr
    return out


def _check_types(objects: Sequence[ObjectFile], inputs: Sequence[InputSection],
                 relocs: Mapping[tuple[int, int], list[Relocation]]) -> None:
    for inp in inputs:
        for rel in relocs[inp.key]:
            if rel.type not in SUPPORTED_TYPES:
                raise LoaderError(describe(objects[inp.obj].name, rel.section, rel,
                                           _sym_label(objects[inp.obj], rel)) +
                                  ": unsupported relocation type")


def _sym_label(obj: ObjectFile, rel: Relocation) -> str:
    sym = rel.symbol
    if sym.type == STT_SECTION and sym.shndx < len(obj.image.sections):
        return obj.image.sections[sym.shndx].name
    return sym.name


def _count_veneers(objects: Sequence[ObjectFile], inputs: Sequence[InputSection],
                   relocs: Mapping[tuple[int, int], list[Relocation]]) -> int:
    """An upper bound of the veneers needed: distinct (mode, symbol, addend) of
    the branch relocations (the kernel's ``count_plts``)."""
    keys: set[tuple[object, ...]] = set()
    for inp in inputs:
        data = objects[inp.obj].image.section_data(inp.section)
        for rel in relocs[inp.key]:
            if rel.type not in BRANCH_TYPES:
                continue
            sym = rel.symbol
            who: object = sym.name if sym.bind != STB_LOCAL and sym.name else (inp.obj,
                                                                               sym.index)
            addend: object = rel.addend
            if addend is None and rel.offset + 4 <= len(data):
                addend = struct.unpack_from("<I", data, rel.offset)[0] & (
                    0x00FFFFFF if rel.type in ARM_BRANCH_TYPES else 0x07FF03FF)
            keys.add((rel.type in ARM_BRANCH_TYPES, who, addend))
    return len(keys)


def _resolve_all(objects: Sequence[ObjectFile], inputs: Sequence[InputSection],
                 relocs: Mapping[tuple[int, int], list[Relocation]], resolver: SymbolResolver,
                 ) -> dict[tuple[int, int], dict[tuple[str, int], Resolved]]:
    """Resolve every relocation's symbol; report all undefined symbols at once."""
    out: dict[tuple[int, int], dict[tuple[str, int], Resolved]] = {}
    undefined: list[str] = []
    for inp in inputs:
        obj = objects[inp.obj]
        table: dict[tuple[str, int], Resolved] = {}
        for rel in relocs[inp.key]:
            if rel.type in MARKER_TYPES:     # dependency markers: nothing to resolve
                table[rel.reloc_section, rel.index] = Resolved(0, False, rel.symbol.name)
                continue
            try:
                table[rel.reloc_section, rel.index] = resolver.resolve(inp.obj, rel.symbol)
            except UndefinedSymbol as exc:
                undefined.append(f"{describe(obj.name, rel.section, rel, rel.symbol.name)}: "
                                 f"{exc}")
            except (LoaderError, SymbolError) as exc:
                raise LoaderError(f"{describe(obj.name, rel.section, rel, _sym_label(obj, rel))}"
                                  f": {exc}") from exc
        out[inp.key] = table
    if undefined:
        names = sorted({u.rsplit("undefined symbol ", 1)[1].split(" ")[0] for u in undefined})
        raise LoaderError(f"{len(names)} undefined symbol(s) {', '.join(names)}: "
                          + "; ".join(undefined))
    return out
