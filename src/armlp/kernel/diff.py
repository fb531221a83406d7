"""``armlp kernel build --diff``: a kernel live patch from a source diff, as
kpatch-build makes one, with the engine ``armlp build`` uses for programs.

1. The tree is the release's own source (:mod:`armlp.kernel.source`).  Only
   the directories of the files the diff changes are copied (a kernel tree
   is 1.5 GB); each is compiled with Kbuild against the release's headers as
   an out-of-tree directory whose Makefile is the tree's own, so its
   per-file flags apply (``kernel/sched`` has some), and whose other headers
   come from the tree (``-I``).
2. :func:`armlp.builder.core.build_patch` runs that build through its
   compiler wrapper before and after the diff, proves that the original
   objects are vmlinux's functions byte for byte (other source, flags or
   compiler than Debian's are refused here, naming the functions that
   differ), compares them, and writes the patch's code: the changed
   functions and what they need, the entries of the kernel's tables that
   belong to them, vmlinux's symbols by address.
3. Each replaced function must be patchable by the kernel path's rules
   (:func:`armlp.kernel.build.resolve`), and the module is written around
   the code as around a patch's C (:func:`armlp.kernel.build.write_modules`).

Only C files: a changed header would need every file including it compiled
again, which this build does not find; it is refused with that reason.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from armlp.builder.core import BuildReport, KernelFlavour, build_patch, default_name
from armlp.builder.diffs import parse_diff
from armlp.builder.emit import KERNEL_NEW, Included
from armlp.elf.image import ElfImage
from armlp.errors import ArmlpError
from armlp.inputs import check_input
from armlp.kernel.build import (
    KernelBuildError,
    KernelPatch,
    Replacement,
    module_name,
    resolve,
    resolve_symbol,
    symbols_used,
    write_modules,
)
from armlp.kernel.kit import KERNEL_CROSS, KernelKit
from armlp.kernel.source import source_tree

#: Debian 12 builds its kernels with GCC 12 (``CONFIG_CC_VERSION_TEXT``).
KERNEL_CC = f"{KERNEL_CROSS}gcc-12"


def build_diff(diff: Path, kit: KernelKit, out: Path, *,
               name: str | None = None) -> tuple[KernelPatch, BuildReport]:
    """The module of *diff* against *kit*'s release, in *out*.  ``$KCFLAGS``
    is added to every compile, as Kbuild adds it (a kernel built with it)."""
    diff = check_input(diff, "diff")
    if shutil.which(KERNEL_CC) is None:
        raise KernelBuildError(f"{KERNEL_CC} not found (install gcc-arm-linux-gnueabihf)")
    mod_name = module_name(name or default_name(diff).replace(".", "_"))
    tree = source_tree(kit)
    dirs = _directories(diff, tree)
    cflags = shlex.split(os.environ.get("KCFLAGS", ""))
    work = Path(tempfile.mkdtemp(prefix="armlp-kdiff-"))
    try:
        src = work / "src"
        for d, _ in dirs:
            _copy_dir(tree / d, src / d)
        make = [f"make -s -C {shlex.quote(str(kit.headers))} M=\"$PWD/{d}\" ARCH=arm "
                f"CROSS_COMPILE={KERNEL_CROSS} CC=\"$CC\" "
                f"KCFLAGS={shlex.quote(' '.join(['-I' + str(tree / d), *cflags]))} "
                + " ".join(objs) for d, objs in dirs]
        image = ElfImage(kit.vmlinux)
        funcs: list[Replacement] = []

        def patchable(inc: Included) -> None:
            # Refused here, with the scan's reason, before any module is built.
            # Ordering: called in the order the emitter describes the
            # replacements, which is the order of its KERNEL_NEW aliases.
            assert inc.replaces is not None
            funcs.append(resolve(image, *inc.replaces, KERNEL_NEW.format(len(funcs))))

        recordmcount = kit.headers / "scripts" / "recordmcount"
        flavour = KernelFlavour("vmlinux", lambda o: _tool([str(recordmcount), str(o)]),
                                patchable)
        code = work / "code.o"
        report = build_patch(diff, src, kit.vmlinux, " && ".join(make), code, name=mod_name,
                             cc=KERNEL_CC, workdir=work / "build", check=False,
                             kernel=flavour)
        patch = KernelPatch(diff, mod_name, kit.release, code=code)
        patch.funcs = funcs
        patch.symbols = {s: resolve_symbol(image, s) for s in symbols_used(ElfImage(code))}
        write_modules(kit, patch, work / "module", out)
        return patch, report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _directories(diff: Path, tree: Path) -> list[tuple[str, list[str]]]:
    """The directories of the C files *diff* changes, with their objects;
    refuses what this build cannot do."""
    raw = diff.read_bytes()
    files = []
    for level in (1, 0):
        try:
            files = parse_diff(raw, level)
        except ArmlpError as exc:
            raise KernelBuildError(str(exc)) from None
        if all((tree / f.path).parent.is_dir() for f in files):
            break
    else:
        missing = next(f.path for f in files if not (tree / f.path).parent.is_dir())
        raise KernelBuildError(f"{missing}: no such directory in the kernel's source")
    dirs: dict[str, list[str]] = {}
    for f in files:
        if f.path.endswith(".h"):
            raise KernelBuildError(f"{f.path}: the diff changes a header; armlp kernel build "
                                   f"--diff compiles only the C files a diff changes (the "
                                   f"files that include a header are not searched)")
        if not f.path.endswith(".c"):
            raise KernelBuildError(f"{f.path}: the diff changes a file that is not C source")
        d, _, base = f.path.rpartition("/")
        dirs.setdefault(d or ".", []).append(base[:-2] + ".o")
    return sorted(dirs.items())


def _copy_dir(src: Path, dst: Path) -> None:
    """The files of one directory of the tree (not its subdirectories)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and not p.is_symlink():
            shutil.copy2(p, dst / p.name)


def _tool(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise KernelBuildError(f"{Path(cmd[0]).name} failed: "
                               f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
