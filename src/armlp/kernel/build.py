"""``armlp kernel build``: a kernel live patch module from a patch's C.

The patch is written as for programs (``<armlp/livepatch.h>``: ARMLP_PATCH,
ARMLP_REPLACE, ARMLP_REPLACE_POS, ARMLP_SYMBOL) with the kernel's own
headers.  Building it:

1. compiles the patch alone with Kbuild and reads what it replaces (the
   ``.armlp.kfuncs`` records) and which kernel symbols it names;
2. finds each function in the release's vmlinux and scans it with armlp's own
   analysis: its mcount site, its prologue and the recipe that undoes it; a
   function that is not patchable is refused here, with the reason;
3. generates the module's tables: per function its address, size, site, the
   crc32 of its code (checked by the core at load) and its trampoline, whose
   words are encoded here by the same encoders the program path uses;
4. builds the core module (``armlp_klp.ko``) and the patch module with
   Kbuild, and writes both beside ``load-order``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from armlp.analysis.mcount import SiteFinder
from armlp.analysis.prologue import DescribeFn
from armlp.analysis.scan import analyse_function
from armlp.elf.image import ElfImage
from armlp.elf.symbols import STT_FUNC, STT_OBJECT, FunctionSymbol
from armlp.errors import ArmlpError, PatchError
from armlp.inputs import check_input
from armlp.kernel.kit import KernelKit
from armlp.livepatch.module import STATE, parse_states
from armlp.livepatch.trampoline import undo_words
from armlp.toolchain import INCLUDE_DIR

MODULE_DIR = Path(__file__).parent / "module"
CORE_NAME = "armlp_klp"
CORE_SOURCES = ("core.c", "patch.c", "transition.c", "shadow.c", "core.h", "klp.h")
CORE_OBJECTS = "core.o patch.o transition.o shadow.o"
CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
KSYM_PREFIX = ".klp.sym.vmlinux."
NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,55}$")
REC = struct.Struct("<128s128s64sI")
CALLBACKS_REC = struct.Struct("<64s64s64s64s")
#: Sections whose code is gone after boot.
INIT_SECTIONS = (".init.text", ".exit.text")


class KernelBuildError(ArmlpError):
    """A kernel patch cannot be built: a refused function, a failed Kbuild."""


@dataclass(frozen=True)
class Replacement:
    """One ARMLP_REPLACE, resolved in the release's vmlinux."""

    old_name: str
    old_sympos: int
    new_name: str
    fn: FunctionSymbol
    site: int
    crc: int
    rule: str
    tramp: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"old_name": self.old_name, "old_sympos": self.old_sympos,
                "new_name": self.new_name, "address": self.fn.address, "size": self.fn.size,
                "site": self.site, "rule": self.rule, "crc32": self.crc,
                "trampoline": [f"{w:#010x}" for w in self.tramp]}


@dataclass(frozen=True)
class KernelSymbol:
    """A vmlinux symbol a patch uses by address, and the other names vmlinux
    gives that address (kallsyms shows one of them)."""

    name: str
    addr: int
    aliases: tuple[str, ...] = ()


@dataclass
class KernelPatch:
    """What a patch's source asks for, resolved; and where its modules went."""

    source: Path
    name: str
    release: str
    funcs: list[Replacement] = field(default_factory=list)
    symbols: dict[str, KernelSymbol] = field(default_factory=dict)      # by asm name
    callbacks: dict[str, str] = field(default_factory=dict)             # pre_patch -> C name
    states: list[tuple[int, int]] = field(default_factory=list)          # (id, version)
    replace: bool = False
    modules: list[Path] = field(default_factory=list)
    #: The patch's code as an object (a diff build); else *source* is
    #: compiled into the module.
    code: Path | None = None

    def to_json(self) -> dict[str, object]:
        return {"patch": self.name, "source": str(self.source), "release": self.release,
                "functions": [f.to_json() for f in self.funcs],
                "symbols": {s.name: s.addr for s in self.symbols.values()},
                "callbacks": self.callbacks, "replace": self.replace,
                "states": [{"id": i, "version": v} for i, v in self.states],
                "load_order": [m.name for m in self.modules]}


def build(source: Path, kit: KernelKit, out: Path, *, name: str | None = None) -> KernelPatch:
    """Build *source* into ``out/<name>.ko`` with the core module beside it."""
    source = check_input(source, "patch source").resolve()
    if source.suffix != ".c":
        raise KernelBuildError(f"{source}: a kernel patch is a C file")
    work = Path(tempfile.mkdtemp(prefix="armlp-kbuild-"))
    try:
        first = _pass_one(source, kit, work / "pass1")
        patch_name, records, ksyms, callbacks = _read_pass_one(first)
        states, replace = _read_states(first)
        mod_name = module_name(name or patch_name or source.stem)
        image = ElfImage(kit.vmlinux)
        patch = KernelPatch(source, mod_name, kit.release)
        patch.funcs = [resolve(image, *r) for r in records]
        patch.symbols = {s: resolve_symbol(image, s) for s in ksyms}
        patch.callbacks = callbacks
        patch.states, patch.replace = states, replace
        if not patch.funcs and not callbacks:
            raise KernelBuildError(f"{source}: replaces nothing and has no callbacks "
                                   f"(no ARMLP_REPLACE, no ARMLP_CALLBACKS)")
        write_modules(kit, patch, work / "patch", out)
        return patch
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_modules(kit: KernelKit, patch: KernelPatch, work: Path, out: Path) -> None:
    """Build *patch*'s module in *work* and write it, the core module and
    ``load-order`` into *out*."""
    core = core_module(kit)
    files: dict[str, str | bytes] = {"armlp_gen.c": generate(patch)}
    objects = "armlp_gen.o"
    if patch.code is not None:
        # The diff build's object goes in as it is (Kbuild's shipped objects).
        files["armlp_code.o_shipped"] = patch.code.read_bytes()
        files[".armlp_code.o.cmd"] = "cmd_armlp_code.o := shipped\n"     # modpost reads it
        objects += " armlp_code.o"
    pko = _kbuild(kit, work, files,
                  f"obj-m := {patch.name}.o\n{patch.name}-y := {objects}\n"
                  f"ccflags-y := -I{INCLUDE_DIR} -I{MODULE_DIR}\n"
                  f"KBUILD_EXTRA_SYMBOLS := {core / 'Module.symvers'}\n")
    out.mkdir(parents=True, exist_ok=True)
    patch.modules = [out / f"{CORE_NAME}.ko", out / f"{patch.name}.ko"]
    shutil.copyfile(core / f"{CORE_NAME}.ko", patch.modules[0])
    shutil.copyfile(pko / f"{patch.name}.ko", patch.modules[1])
    (out / "load-order").write_text("".join(m.name + "\n" for m in patch.modules))


def core_module(kit: KernelKit) -> Path:
    """The directory of the core module built for *kit*'s release: built once
    per release and source (kept in the kit, by a hash of the sources)."""
    sources = {f: (MODULE_DIR / f).read_text() for f in CORE_SOURCES}
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:16]
    done = kit.root / CORE_NAME / digest
    if (done / f"{CORE_NAME}.ko").exists():
        return done
    tmp = Path(tempfile.mkdtemp(prefix=f".{CORE_NAME}-", dir=kit.root))
    try:
        _kbuild(kit, tmp / "src", sources,
                f"obj-m := {CORE_NAME}.o\n{CORE_NAME}-y := {CORE_OBJECTS}\n")
        done.parent.mkdir(exist_ok=True)
        if not done.exists():
            (tmp / "src").rename(done)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def module_name(name: str) -> str:
    mod = name.replace("-", "_")
    if not NAME_RE.match(mod):
        raise KernelBuildError(f"patch name {name!r}: a module name is 1-55 letters, digits, "
                               f"'_' or '-'")
    if mod == CORE_NAME:
        raise KernelBuildError(f"patch name {name!r} is the core module's")
    return mod


def _pass_one(source: Path, kit: KernelKit, d: Path) -> Path:
    """The patch compiled alone, for its records (no module is linked)."""
    d.mkdir(parents=True)
    # The records' layouts as this module reads them, asserted against the header.
    asserts = [(f"sizeof(struct {name})", size) for name, size in (
        ("armlp_kfunc_rec", REC.size), ("armlp_kcallbacks_rec", CALLBACKS_REC.size),
        ("armlp_state_rec", STATE.size))]
    (d / "armlp_pass1.c").write_text(
        f'#include "{source}"\n' + "".join(
            f'_Static_assert({e} == {v}, "{e} is not {v} as armlp/kernel/build.py says");\n'
            for e, v in asserts))
    (d / "Kbuild").write_text(f"obj-m := armlp_pass1.o\n"
                              f"ccflags-y := -I{INCLUDE_DIR} -I{MODULE_DIR}\n")
    _make(kit, d, "armlp_pass1.o")
    return d / "armlp_pass1.o"


def _read_pass_one(obj: Path) -> tuple[str | None, list[tuple[str, int, str]], list[str],
                                        dict[str, str]]:
    img = ElfImage(obj)
    name_sec = img.section(".armlp.name")
    name = None
    if name_sec is not None:
        name = img.section_data(name_sec).split(b"\0", 1)[0].decode("utf-8", "replace")
    records: list[tuple[str, int, str]] = []
    sec = img.section(".armlp.kfuncs")
    if sec is not None:
        data = img.section_data(sec)
        for off in range(0, len(data) - REC.size + 1, REC.size):
            old, new, _obj, pos = REC.unpack_from(data, off)
            records.append((_cstr(old), pos, _cstr(new)))
    ksyms = symbols_used(img)
    callbacks: dict[str, str] = {}
    sec = img.section(".armlp.kcallbacks")
    if sec is not None:
        data = img.section_data(sec)
        if len(data) != CALLBACKS_REC.size:
            raise KernelBuildError(f"{obj.name}: ARMLP_CALLBACKS may be given once")
        for kind, raw in zip(CALLBACKS, CALLBACKS_REC.unpack(data), strict=True):
            c_name = _cstr(raw)
            if c_name not in ("0", "NULL", "((void *)0)"):
                callbacks[kind] = c_name
    return name, records, ksyms, callbacks


def _read_states(obj: Path) -> tuple[list[tuple[int, int]], bool]:
    """ARMLP_STATE records and whether ARMLP_ATOMIC_REPLACE was given."""
    img = ElfImage(obj)
    sec = img.section(".armlp.states")
    try:
        states = parse_states(img.section_data(sec), obj.name) if sec is not None else {}
    except PatchError as exc:
        raise KernelBuildError(str(exc)) from None
    return sorted(states.items()), img.section(".armlp.replace") is not None


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("ascii", "replace")


def resolve(image: ElfImage, old: str, sympos: int, new: str) -> Replacement:
    """*old* in vmlinux, scanned: refused here unless patchable."""
    same = [f for f in image.symbols.functions() if f.name == old]
    where = f"{image.path.name}"
    if not same:
        raise KernelBuildError(f"{old}: no such function in {where}")
    if sympos == 0 and len(same) > 1:
        raise KernelBuildError(f"{old}: {len(same)} functions have that name in {where}: "
                               f"say which with ARMLP_REPLACE_POS({old}, 1..{len(same)}, ...)")
    fn = same[0] if sympos == 0 else next((f for f in same if max(f.sympos, 1) == sympos),
                                          None)
    if fn is None:
        raise KernelBuildError(f"{old}: no sympos {sympos} ({len(same)} with that name)")
    label = f"{old},{sympos}" if sympos else old
    if fn.section_name in INIT_SECTIONS:
        raise KernelBuildError(f"{label}: not patchable: in {fn.section_name}, freed after boot")
    rep = analyse_function(image, SiteFinder(image), fn, {}, DescribeFn())
    verdict = rep.verdict
    if not verdict.patchable or rep.site is None or verdict.undo is None:
        raise KernelBuildError(f"{label}: not patchable: {verdict.reason}")
    try:
        words = undo_words(verdict.undo, 0)
    except PatchError as exc:
        raise KernelBuildError(f"{label}: not patchable: {exc}") from None
    code = bytearray(image.read(fn.address, fn.size))
    off = rep.site - fn.address
    code[off:off + 4] = bytes(4)          # the site word is ftrace's
    return Replacement(old, sympos, new, fn, rep.site, zlib.crc32(code), verdict.rule or "",
                       tuple(words))


def symbols_used(obj: ElfImage) -> list[str]:
    """The vmlinux symbols an object names by address (``.klp.sym.vmlinux.``)."""
    return sorted({s.name for s in obj.symbols.symbols
                   if not s.defined and s.name.startswith(KSYM_PREFIX)})


def resolve_symbol(image: ElfImage, asm_name: str) -> KernelSymbol:
    spec = asm_name[len(KSYM_PREFIX):]
    name, _, pos = spec.rpartition(",")
    if not name or not pos.isdigit():
        raise KernelBuildError(f"{asm_name}: ARMLP_SYMBOL needs NAME and a sympos number")
    try:
        sym = image.symbols.lookup(name, int(pos), where=image.path.name)
    except ArmlpError as exc:
        raise KernelBuildError(f"ARMLP_SYMBOL({name}, {pos}): {exc}") from None
    aliases = sorted(_names_at(image).get(sym.value, set()) - {name})
    return KernelSymbol(name, sym.value, tuple(aliases))


@functools.lru_cache(maxsize=2)
def _names_at(image: ElfImage) -> dict[int, set[str]]:
    """vmlinux's function and data names by address."""
    out: dict[int, set[str]] = {}
    for s in image.symbols.symbols:
        if s.defined and s.name and s.type in (STT_FUNC, STT_OBJECT):
            out.setdefault(s.value, set()).add(s.name)
    return out


def generate(patch: KernelPatch) -> str:
    """The patch module's C: the patch's source, its trampolines, its tables."""
    describe = DescribeFn()
    out = [f"/* Generated by armlp kernel build from {patch.source.name} for "
           f"{patch.release}: do not edit. */"]
    if patch.code is None:
        out += [f'#include "{patch.source}"', '#include "klp.h"', ""]
    else:
        out += ["#include <linux/module.h>", '#include "klp.h"', ""]
        out += [f"extern void {f.new_name}(void);" for f in patch.funcs]
    for asm_name, ks in patch.symbols.items():
        # Global: a diff build's code is another object of the module.
        out.append(f'asm(".globl \\"{asm_name}\\"\\n.set \\"{asm_name}\\", {ks.addr:#010x}");')
    for i, f in enumerate(patch.funcs):
        lines = [".pushsection .text.armlp_tramp, \\\"ax\\\", %progbits", ".arm", ".align 2",
                 f".type armlp_tramp_{i}, %function", f"armlp_tramp_{i}:"]
        lines += [f"\\t.inst {w:#010x}\\t@ {describe(w)}" for w in f.tramp]
        lines += [f"\\tb {f.new_name}", f".size armlp_tramp_{i}, . - armlp_tramp_{i}",
                  ".popsection"]
        out.append(f"/* {f.old_name}: rule {f.rule}, site +{f.site - f.fn.address:#x} */")
        out.append("asm(" + "\n    ".join(f'"{line}\\n"' for line in lines) + ");")
        out.append(f"extern char armlp_tramp_{i}[];")
    out += ["", "static struct klp_func armlp_funcs[] = {"]
    for i, f in enumerate(patch.funcs):
        out.append(f'\t{{ .old_name = "{f.old_name}", .old_sympos = {f.old_sympos}, '
                   f".new_func = (void *){f.new_name},\n"
                   f"\t  .old_addr = {f.fn.address:#010x}, .old_size = {f.fn.size:#x}, "
                   f".site = {f.site:#010x}, .old_crc = {f.crc:#010x},\n"
                   f"\t  .trampoline = armlp_tramp_{i}, .tramp_size = {4 * len(f.tramp) + 4} }},")
    out += ["\t{ }", "};", "", "static struct klp_state armlp_states[] = {"]
    out += [f"\t{{ .id = {i}, .version = {v} }}," for i, v in patch.states]
    out += ["\t{ }", "};", "", "static struct klp_sym armlp_syms[] = {"]
    out += [f'\t{{ "{ks.name}", {ks.addr:#010x}, '
            + (f'"{" ".join(ks.aliases)}"' if ks.aliases else "NULL") + " },"
            for ks in patch.symbols.values()]
    out += ["\t{ }", "};", "",
            "static struct klp_object armlp_objs[] = {",
            "\t{ .name = NULL, .funcs = armlp_funcs, .callbacks = {",
            *[f"\t\t.{kind} = {c_name}," for kind, c_name in patch.callbacks.items()],
            "\t} },", "\t{ }", "};", "",
            "static struct klp_patch armlp_patch = {",
            "\t.mod = THIS_MODULE,", "\t.objs = armlp_objs,",
            f'\t.release = "{patch.release}",', "\t.syms = armlp_syms,",
            "\t.states = armlp_states,", f"\t.replace = {'true' if patch.replace else 'false'},",
            "};", "",
            "static int __init armlp_patch_init(void)", "{",
            "\treturn klp_enable_patch(&armlp_patch);", "}", "",
            "static void __exit armlp_patch_exit(void)", "{", "}", "",
            "module_init(armlp_patch_init);", "module_exit(armlp_patch_exit);",
            'MODULE_LICENSE("GPL");', 'MODULE_INFO(armlp_livepatch, "Y");', ""]
    return "\n".join(out)


def _kbuild(kit: KernelKit, d: Path, files: Mapping[str, str | bytes], kbuild: str) -> Path:
    d.mkdir(parents=True)
    for name, text in files.items():
        if isinstance(text, bytes):
            (d / name).write_bytes(text)
        else:
            (d / name).write_text(text)
    (d / "Kbuild").write_text(kbuild)
    _make(kit, d, "modules")
    return d


def _make(kit: KernelKit, d: Path, target: str) -> None:
    args = [*kit.make_args(d)[:-1], target]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        errors = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                  if "error" in ln.lower()] or (proc.stderr or proc.stdout).splitlines()
        detail = errors[0].strip() if errors else f"exit {proc.returncode}"
        raise KernelBuildError(f"Kbuild failed: {detail}")
