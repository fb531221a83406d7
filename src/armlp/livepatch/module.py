"""Reading a patch module: which functions it replaces, for which program.

A patch module is a relocatable ARM object built with the flags of
``armlp cflags``; ``<armlp/livepatch.h>`` puts one ``struct
armlp_func_desc`` per replaced function into ``.armlp.funcs``.  The
descriptors hold pointers, so they are read from the *relocated* module:
the loader lays it out (at a trial base to validate, at its real address to
enable) and the descriptors are decoded from the section bytes it produced.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from armlp.elf.image import ElfImage
from armlp.errors import PatchError
from armlp.loader import LoadedModule, load_objects
from armlp.objects import PROGRAM

#: ``struct armlp_func_desc``: old name, sympos, object, new function, file, line.
DESC = struct.Struct("<IIIIII")
#: ``struct armlp_object_rec`` (ARMLP_OBJECT): name (0: the program), file, line.
OBJECT_REC = struct.Struct("<III")
#: ``struct armlp_state_rec`` (ARMLP_STATE): id, version.
STATE = struct.Struct("<II")
#: ``struct armlp_callbacks_desc``: four code pointers, 0 for none.
CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
CALLBACKS_DESC = struct.Struct("<IIII")
#: A patch's name: what the kernel allows in a module name, and '.'.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Sections whose code runs at load time in a program; armlp does not run
#: them (callbacks are the way to run code when a patch is enabled).
_CONSTRUCTORS = (".init_array", ".ctors", ".preinit_array", ".fini_array", ".dtors",
                 ".init", ".fini")


@dataclass(eq=False)
class KlpFunc:
    """One replaced function (the kernel's ``struct klp_func``)."""

    old_name: str
    old_sympos: int
    new_func: int               # address in the loaded module
    new_name: str = ""
    old_addr: int = 0
    site: int = 0
    node: int = 0               # its func-stack node in the target

    @property
    def label(self) -> str:
        return f"{self.old_name},{self.old_sympos}" if self.old_sympos else self.old_name


@dataclass(eq=False)
class KlpObject:
    """The functions a patch replaces in one object: the program
    (:data:`~armlp.objects.PROGRAM`) or a shared library, by soname."""

    name: str
    funcs: list[KlpFunc] = field(default_factory=list)
    patched: bool = False


@dataclass(eq=False)
class KlpPatch:
    """A patch module (the kernel's ``struct klp_patch``)."""

    name: str
    path: Path
    image: ElfImage
    objects: list[KlpObject]
    target_build_id: str | None
    module: LoadedModule | None = None
    enabled: bool = False
    id: int = 0
    memory: int = 0
    memory_size: int = 0
    size: int = 0               # bytes the module needs (from the trial layout)
    callbacks: dict[str, int] = field(default_factory=dict)   # kind -> address
    states: dict[int, int] = field(default_factory=dict)      # id -> version
    replace: bool = False       # ARMLP_ATOMIC_REPLACE
    #: An atomic replace's nop funcs (the kernel's klp_add_nops): one per
    #: function the patches it replaces changed and it does not; new_func 0
    #: means "the original".  Discarded when the replace completes.
    nops: list[KlpFunc] = field(default_factory=list)
    #: While enabled: its struct klp_object, klp_patch and klp_state array
    #: in the target (armlp.livepatch.state), what its callbacks get.
    klp: int = 0

    @property
    def funcs(self) -> list[KlpFunc]:
        return [f for o in self.objects for f in o.funcs]

    @property
    def placed(self) -> list[KlpFunc]:
        """The functions in objects the program has loaded (a library not
        loaded yet, or unloaded, has its functions with no site)."""
        return [f for f in self.funcs if f.site]


def _module_read(module: LoadedModule, addr: int, size: int) -> bytes:
    for sec in module.sections:
        if sec.address <= addr and addr + size <= sec.end:
            if sec.nobits:
                return bytes(size)
            off = addr - sec.address
            return sec.data[off:off + size]
    raise PatchError(f"descriptor points at {addr:#x}, outside the patch module")


def _module_cstr(module: LoadedModule, addr: int) -> str:
    for sec in module.sections:
        if sec.address <= addr < sec.end and not sec.nobits:
            off = addr - sec.address
            end = sec.data.find(b"\0", off)
            return sec.data[off:end if end >= 0 else len(sec.data)].decode("utf-8", "replace")
    raise PatchError(f"descriptor string at {addr:#x} is outside the patch module")


def parse_states(data: bytes, where: str) -> dict[int, int]:
    """The ARMLP_STATE records of a ``.armlp.states`` section: id -> version
    (ids unique, not 0), for programs and kernels alike."""
    if len(data) % STATE.size:
        raise PatchError(f"{where}: .armlp.states is {len(data)} bytes, not a multiple of "
                         f"{STATE.size}")
    states: dict[int, int] = {}
    for sid, version in STATE.iter_unpack(data):
        if sid == 0 or sid in states:
            raise PatchError(f"{where}: ARMLP_STATE id {sid}: ids are unique and not 0")
        states[sid] = version
    return states


def parse_callbacks(image: ElfImage, module: LoadedModule) -> dict[str, int]:
    """The ARMLP_CALLBACKS of a relocated module: kind -> code address."""
    secs = [s for s in module.sections if s.name == ".armlp.callbacks"]
    if not secs:
        return {}
    if len(secs) > 1 or secs[0].size != CALLBACKS_DESC.size:
        raise PatchError(f"{image.path}: ARMLP_CALLBACKS may be given once")
    code = [(s.address, s.end) for s in module.sections if s.executable and not s.nobits]
    out: dict[str, int] = {}
    for kind, addr in zip(CALLBACKS, CALLBACKS_DESC.unpack(secs[0].data), strict=True):
        if addr == 0:
            continue
        if addr & 1 or not any(lo <= addr < hi for lo, hi in code):
            raise PatchError(f"{image.path}: the {kind} callback ({addr:#x}) is not an ARM "
                             f"function of the patch")
        out[kind] = addr
    return out


def _object_scopes(module: LoadedModule, path: Path) -> list[tuple[str, int, str]]:
    """Each ARMLP_OBJECT as ``(file, line, object)``, the last first: a
    descriptor belongs to the nearest one above it in its file."""
    out: list[tuple[str, int, str]] = []
    for sec in (s for s in module.sections if s.name == ".armlp.objects"):
        if sec.size % OBJECT_REC.size:
            raise PatchError(f"{path}: .armlp.objects is {sec.size} bytes, not a multiple "
                             f"of {OBJECT_REC.size}")
        for name_ptr, file_ptr, line in OBJECT_REC.iter_unpack(sec.data):
            out.append((_module_cstr(module, file_ptr) if file_ptr else "", line,
                        _module_cstr(module, name_ptr) if name_ptr else PROGRAM))
    return sorted(out, key=lambda o: -o[1])


def parse_descriptors(image: ElfImage, module: LoadedModule) -> tuple[str, list[KlpObject]]:
    """``(patch name, objects)`` from a relocated module."""
    path = image.path
    funcs_secs = [s for s in module.sections if s.name == ".armlp.funcs"]
    name_secs = [s for s in module.sections if s.name == ".armlp.name"]
    name = (name_secs[0].data.split(b"\0")[0].decode("utf-8", "replace") if name_secs
            else path.stem)
    if not NAME_RE.fullmatch(name):
        raise PatchError(f"{path}: patch name {name[:80]!r} is not 1-64 letters, digits, "
                         f"'-', '_' or '.' (set it with ARMLP_PATCH)")
    by_object: dict[str, KlpObject] = {}
    by_addr = {s.address: (s.name, s.thumb) for s in module.symbols if s.is_function}
    code = [(s.address, s.end) for s in module.sections if s.executable and not s.nobits]
    scopes = _object_scopes(module, path)
    for sec in funcs_secs:
        if sec.size % DESC.size:
            raise PatchError(f"{path}: .armlp.funcs is {sec.size} bytes, not a multiple "
                             f"of {DESC.size}")
        for old_ptr, sympos, obj_ptr, new_ptr, file_ptr, line in DESC.iter_unpack(sec.data):
            old = _module_cstr(module, old_ptr)
            if obj_ptr:
                obj = _module_cstr(module, obj_ptr)
            else:
                file = _module_cstr(module, file_ptr) if file_ptr else ""
                obj = next((name for f, at, name in scopes if f == file and at < line),
                           PROGRAM)
            if not obj or len(obj) > 255 or not obj.isprintable() or "/" in obj:
                raise PatchError(f"{path}: {old}: object {obj[:40]!r} is not a soname "
                                 f"(ARMLP_OBJECT)")
            if not old or len(old) > 256 or not old.isprintable():
                raise PatchError(f"{path}: a descriptor names no valid function to replace "
                                 f"({old[:40]!r})")
            if new_ptr == 0:
                raise PatchError(f"{path}: the replacement of {old} is NULL")
            if not any(lo <= new_ptr & ~1 < hi for lo, hi in code):
                raise PatchError(f"{path}: the replacement of {old} ({new_ptr:#x}) is not a "
                                 f"function of the patch (data, or code outside it)")
            # Bit 0 says Thumb (a function pointer's interworking bit): it
            # must agree with the function there, or a call would fault.
            new_name, thumb = by_addr.get(new_ptr & ~1, (f"{new_ptr:#x}", bool(new_ptr & 1)))
            if thumb != bool(new_ptr & 1):
                raise PatchError(f"{path}: the replacement of {old} ({new_ptr:#x}) points "
                                 f"at {'Thumb' if thumb else 'ARM'} code without its "
                                 f"interworking bit right")
            func = KlpFunc(old, sympos, new_ptr, new_name)
            by_object.setdefault(obj, KlpObject(obj)).funcs.append(func)
    # A patch that replaces nothing (callbacks and states only, as the
    # kernel's test_klp_state) still has the program as its object.
    objects = list(by_object.values()) or [KlpObject(PROGRAM)]
    labels = [f.label for o in objects for f in o.funcs]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise PatchError(f"{path}: {sorted(dup)[0]} is replaced twice in one patch")
    return name, objects


def read_patch(path: str | Path, target: ElfImage, exports: dict[str, int], *,
               base: int = 0x10000000,
               libraries: dict[str, ElfImage] | None = None) -> KlpPatch:
    """Read and validate a patch module against *target*, without touching any
    machine: lay it out at a trial *base*, resolve every symbol, decode the
    descriptors."""
    image = ElfImage(path)
    if not image.is_relocatable:
        raise PatchError(f"{image.path}: not a relocatable object (.o); build the patch "
                         f"with -c")
    ctors = [s.name for s in image.sections if s.name.startswith(_CONSTRUCTORS) and s.size]
    if ctors:
        raise PatchError(f"{image.path}: has {ctors[0]}: armlp does not run a patch's "
                         f"constructors or destructors (remove __attribute__((constructor)) "
                         f"and static initialisers that need code)")
    module = load_objects([image], base=base, target=target, exports=exports,
                          libraries=libraries)
    name, objects = parse_descriptors(image, module)
    tsec = next((s for s in module.sections if s.name == ".armlp.target"), None)
    build_id = None
    if tsec is not None:
        raw = tsec.data.split(b"\0")[0]
        if not re.fullmatch(rb"[0-9a-f]{2,128}", raw):
            raise PatchError(f"{image.path}: .armlp.target holds no build-id "
                             f"({raw[:40]!r}): rebuild the patch with armlp cflags --target")
        build_id = raw.decode()
    sections = {s.name: s for s in module.sections}
    states = sections.get(".armlp.states")
    patch = KlpPatch(name, image.path, image, objects, build_id or None, size=module.size,
                     callbacks=parse_callbacks(image, module),
                     states=parse_states(states.data, str(image.path)) if states else {},
                     replace=".armlp.replace" in sections)
    if not (patch.funcs or patch.callbacks or patch.states or patch.replace):
        raise PatchError(f"{image.path}: the patch declares nothing: no ARMLP_REPLACE, "
                         f"ARMLP_CALLBACKS, ARMLP_STATE or ARMLP_ATOMIC_REPLACE from "
                         f"<armlp/livepatch.h>")
    return patch


def relocate_patch(patch: KlpPatch, target: ElfImage, exports: dict[str, int],
                   base: int, libraries: dict[str, ElfImage] | None = None) -> LoadedModule:
    """Lay the patch out at *base* and refresh its functions' new addresses."""
    module = load_objects([patch.image], base=base, target=target, exports=exports,
                          libraries=libraries)
    _, objects = parse_descriptors(patch.image, module)
    fresh = {f.label: f.new_func for o in objects for f in o.funcs}
    for f in patch.funcs:
        f.new_func = fresh[f.label]
    patch.callbacks = parse_callbacks(patch.image, module)
    return module
