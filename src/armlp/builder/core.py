"""``armlp build``: a live patch from a source diff, as kpatch-build makes
a patch module -- and a proof that the tree it builds from is the running
binary's.

1. Copy the tree; run the build command with ``$CC`` pointing at armlp's
   wrapper, which records every C compilation (:mod:`armlp.builder.wrapper`).
2. Prove the base: the recorded objects reproduce the program's functions
   (:mod:`armlp.builder.base`).
3. Apply the diff, run the build again (make rebuilds what it touched).
4. Compare each rebuilt file with its original, function by function
   (:mod:`armlp.builder.compare`); refuse what a live patch cannot do.
5. Compile each changed file once more for the patch's code and write the
   patch object (:mod:`armlp.builder.emit`), checked by the patch reader
   ``armlp patch`` uses.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from armlp.builder.base import Mismatch, ProgramIndex, prove_base
from armlp.builder.compare import (
    ObjectChanges,
    SourceFacts,
    compare,
    line_pairs,
    source_facts,
)
from armlp.builder.diffs import FileDiff, apply_diff
from armlp.builder.emit import EMIT_FLAGS, Included, PatchEmitter
from armlp.builder.pieces import ObjectPieces
from armlp.elf.image import ElfImage
from armlp.errors import ArmlpError, BuildError
from armlp.inputs import check_input
from armlp.loader.relocate import SUPPORTED_TYPES

#: How many differing functions a refused base names.
SHOWN = 5


@dataclass(frozen=True)
class KernelFlavour:
    """What a patch for a kernel does differently from a program's: its
    symbols are vmlinux's (``.klp.sym.vmlinux.``), each compile of its code
    is finished as Kbuild finishes one (``recordmcount``), and a function is
    patchable by the kernel path's rules (:mod:`armlp.kernel.build`)."""

    object_name: str
    after_compile: Callable[[Path], None]
    check_patchable: Callable[[Included], None]


@dataclass(slots=True)
class Record:
    """One compilation the wrapper recorded."""

    source: Path
    cwd: Path
    flags: list[str]
    object: Path              # the recorded copy
    output: Path | None       # what the build wrote (None: the wrapper's own compile)

    def file(self, tree: Path) -> str:
        """The source's path in the tree (as the diff names it)."""
        return _inside(self.source, tree)

    def key(self, tree: Path) -> str:
        """Source and output: a file may be compiled twice (PIC and not)."""
        return f"{self.file(tree)}|{'' if self.output is None else _inside(self.output, tree)}"


def _inside(path: Path, tree: Path) -> str:
    try:
        return str(path.relative_to(tree))
    except ValueError:
        return str(path)


@dataclass
class BuildReport:
    """What ``armlp build`` made, and why."""

    patch: Path
    name: str
    program: Path
    included: list[Included] = field(default_factory=list)
    line_only: list[str] = field(default_factory=list)
    not_in_program: list[str] = field(default_factory=list)
    proven: int = 0
    objects: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "patch": str(self.patch), "name": self.name, "program": str(self.program),
            "base": {"functions_proven": self.proven, "objects": self.objects},
            "functions": [{"file": i.file, "name": i.name, "reason": i.reason,
                           "replaces": None if i.replaces is None else
                           {"name": i.replaces[0], "sympos": i.replaces[1]}}
                          for i in self.included if i.kind == "func"],
            "data": [{"file": i.file, "name": i.name, "reason": i.reason}
                     for i in self.included if i.kind == "data"],
            "line_only": self.line_only,
            "not_in_program": self.not_in_program,
            "seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


def _run_build(command: str, tree: Path, env: dict[str, str], log: Path, what: str) -> None:
    with open(log, "wb") as out:
        rc = subprocess.call(command, shell=True, cwd=tree, env=env, stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if rc != 0:
        lines = log.read_bytes().decode("utf-8", "replace").strip().splitlines()
        last = next((ln for ln in reversed(lines) if "error" in ln.lower()),
                    lines[-1] if lines else "")
        raise BuildError(f"the {what} build failed (exit {rc}): {last.strip()[:300]} "
                         f"(whole log: {log})")


def _records(where: Path) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for meta in sorted(where.glob("*.json")):
        d = json.loads(meta.read_text())
        out[str(meta)] = Record(Path(d["source"]), Path(d["cwd"]), list(d["flags"]),
                                meta.with_suffix(".o"),
                                Path(d["object"]) if d["object"] else None)
    return out


def _by_key(records: dict[str, Record], tree: Path) -> dict[str, Record]:
    """Records by source path in the tree (the last compile of a file wins)."""
    return {r.key(tree): r for r in records.values()}


def default_name(diff: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", diff.stem)[:64].strip("-.")
    return name or "patch"


def _reason(name: str, ch: ObjectChanges, touched: set[str],
            inlined: dict[str, set[str]]) -> str:
    if name in ch.new:
        return "new"
    if name in ch.uses:
        return f"changed: uses {ch.uses[name]}, which changed"
    base = name.split(".")[0]
    if base in touched:
        return "changed"
    inl = sorted(inlined.get(base, set()) & touched)
    if inl:
        return f"changed: inlines {', '.join(inl)}, which changed"
    return "changed: its code differs though none of its own lines did (a macro, a type " \
           "or a constant it uses?)"


def _shared_constants(changes: dict[str, tuple[ObjectChanges, ObjectPieces]]) -> set[str]:
    """The global constants the diff changes: a new copy of each travels
    with the patch, and every function of the program that reads one must
    read the copy."""
    return {n for ch, patched in changes.values() for n in ch.data_changed
            if not patched.pieces[n].local}


def _add_constant_users(changes: dict[str, tuple[ObjectChanges, ObjectPieces]],
                        ours: dict[str, ObjectPieces], patched: dict[str, Record]) -> None:
    """The functions of other files that read a changed global constant
    (through an undefined symbol there) are in the patch too, as the users
    in its own file are (kpatch-build's rule for changed data users)."""
    shared = _shared_constants(changes)
    if not shared:
        return
    owner = {n: ch.file for ch, p in changes.values() for n in ch.data_changed if n in shared}
    for key, obj in ours.items():
        for p in obj.functions():
            used = next((k[1] for _, _, k in p.refs if k[0] == "ext" and k[1] in shared), None)
            if used is None:
                continue
            if key not in changes:
                changes[key] = (ObjectChanges(obj.file), ObjectPieces(patched[key].object))
            ch = changes[key][0]
            if p.name not in ch.changed and p.name not in ch.new:
                ch.changed.append(p.name)
            ch.uses.setdefault(p.name, f"{used} ({owner[used]})")


def _confirm_line_only(ch: ObjectChanges, facts: SourceFacts,
                       diffs: list[FileDiff]) -> None:
    """A function whose own lines, or an inlined function's, the diff
    touches changed, whatever its differing words look like: a constant
    that happens to equal a moved line number is not a line number."""
    if not ch.line_only:
        return
    touched = facts.touched(diffs)
    for name in list(ch.line_only):
        base = name.split(".")[0]
        if base in touched or facts.inlined.get(base, set()) & touched:
            ch.line_only.remove(name)
            ch.changed.append(name)


def _emit_compile(cc: str, rec: Record, out: Path,
                  kernel: KernelFlavour | None = None) -> ObjectPieces:
    cmd = [cc, *rec.flags, *EMIT_FLAGS, "-c", str(rec.source), "-o", str(out)]
    proc = subprocess.run(cmd, cwd=rec.cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"compiling the patch's code from {rec.source.name} failed: "
                         f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    if kernel is not None:
        kernel.after_compile(out)
    return ObjectPieces(out)


def build_patch(diff: Path, source: Path, program: Path, command: str, output: Path, *,
                name: str | None = None, cc: str, workdir: Path | None = None,
                check: bool = True, kernel: KernelFlavour | None = None) -> BuildReport:
    """Build the live patch of *diff* for *program* (see the module docstring);
    *kernel*: for a kernel (*program* is its vmlinux)."""
    diff = check_input(diff, "diff")
    program = check_input(program, "program")
    if not source.is_dir():
        raise BuildError(f"{source}: not a directory (--source is the program's source tree)")
    image = ElfImage(program)
    if image.is_relocatable:
        raise BuildError(f"{program}: a relocatable object; --program is the executable or "
                         f"library that runs")
    index = ProgramIndex(image)
    if kernel is not None:
        index.object = kernel.object_name
    name = name or default_name(diff)
    if not output.resolve().parent.is_dir():
        raise BuildError(f"{output}: no directory {output.parent} to write the patch in")
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        raise BuildError(f"--workdir {workdir}: not a directory")
    report = BuildReport(output, name, program)
    t0 = time.monotonic()
    work = workdir.resolve() if workdir else Path(tempfile.mkdtemp(prefix="armlp-build-"))
    try:
        tree = work / "tree"
        if tree.exists():
            shutil.rmtree(tree)
        shutil.copytree(source, tree, symlinks=True)
        wrapper = work / "armlp-cc"
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m "
                           f"armlp.builder.wrapper \"$@\"\n")
        wrapper.chmod(0o755)
        env = dict(os.environ, CC=str(wrapper), ARMLP_BUILD_CC=cc)
        src_path = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src_path, env.get("PYTHONPATH")]))
        records: dict[str, dict[str, Record]] = {}

        def run(what: str) -> None:
            rec_dir = work / what
            shutil.rmtree(rec_dir, ignore_errors=True)
            rec_dir.mkdir(parents=True)
            t = time.monotonic()
            _run_build(command, tree, dict(env, ARMLP_BUILD_RECORD=str(rec_dir)),
                       work / f"{what}.log", what)
            report.timings[f"build_{what}"] = time.monotonic() - t
            records[what] = _by_key(_records(rec_dir), tree)

        run("original")
        if not records["original"]:
            raise BuildError(f"the build command compiled no C file through $CC (does it "
                             f"honour CC?): {command}")
        # Ordering: the base proof before the diff is applied (a Thumb file
        # may be compiled again from the tree as the program was built).
        t = time.monotonic()
        orig = {k: ObjectPieces(r.object) for k, r in records["original"].items()}
        ours, bad = _prove(index, orig, records["original"], tree, report,
                           lambda rec: _exact_compile(cc, rec, work))
        if bad:
            shown = "; ".join(f"{m.name} ({m.file}: {m.why})" for m in bad[:SHOWN])
            raise BuildError(f"the tree does not rebuild {program}: {len(bad)} of "
                             f"{len(bad) + report.proven} functions differ, first {shown}; "
                             f"other source, flags or compiler than the program's?")
        if not ours:
            hint = "built as a module? only vmlinux is patched" if kernel is not None \
                else "another program's tree?"
            raise BuildError(f"none of the {len(orig)} files the build compiled is in {program} "
                             f"({hint})")
        proof_s = time.monotonic() - t
        diffs = apply_diff(diff, tree)
        run("patched")
        t = time.monotonic() - proof_s      # the comparison's clock includes the proof
        _check_files(diffs, {records["original"][k].file(tree) for k in ours},
                     {r.file(tree) for r in records["patched"].values()}, program)
        changes: dict[str, tuple[ObjectChanges, ObjectPieces]] = {}
        facts: dict[str, SourceFacts] = {}
        for key, rec in records["patched"].items():
            if key not in ours and key in orig:
                continue                        # a file of another program of the tree
            patched = ObjectPieces(rec.object)
            # __LINE__ is the line of the file being compiled: only its moves count.
            own = [d for d in diffs if Path(d.path).name == rec.source.name]
            ch = compare(ours.get(key), patched, line_pairs(own))
            if ch.changed or ch.new or ch.line_only:
                # Read once per file: what line-only needs and the reasons.
                facts[key] = source_facts(patched.path, {
                    n.split(".")[0] for n in [*ch.changed, *ch.new, *ch.line_only]})
                _confirm_line_only(ch, facts[key], diffs)
            report.line_only += [f"{ch.file}:{n}" for n in ch.line_only]
            if not ch.empty:
                changes[key] = (ch, patched)
        # A file the patched build did not recompile (make saw no change) is
        # the original build's.
        latest = {**records["original"], **records["patched"]}
        _add_constant_users(changes, ours, latest)
        for ch, _ in changes.values():
            if ch.data_refused:
                raise BuildError(f"{ch.file}: the diff changes the size or initial value of "
                                 f"{ch.data_refused[0]}, which the running program holds: a live "
                                 f"patch cannot change existing data; keep its layout and put new "
                                 f"state in a shadow variable (klp_shadow_get_or_alloc)")
        if not any(ch.changed or any(not p.pieces[n].local and n in index.globals
                                     for n in ch.new) for ch, p in changes.values()):
            only = f" ({len(report.line_only)} differ only by line numbers)" \
                if report.line_only else ""
            raise BuildError(f"the diff changes no function of {program}{only}")
        report.timings["compare"] = time.monotonic() - t
        t = time.monotonic()
        emitter = PatchEmitter(index, _shared_constants(changes), kernel=kernel is not None)
        emit_dir = work / "emit"
        emit_dir.mkdir(exist_ok=True)
        for key, (ch, patched) in sorted(changes.items()):
            # Roots: the changed functions, and new global ones (another file's
            # changed function may call them); new statics come when used.
            orig_obj = ours.get(key)
            # A changed function the program does not have (a weak definition
            # another file overrides, one the linker dropped) is never called.
            absent = [n for n in ch.changed if orig_obj is not None and n in orig_obj.pieces
                      and ".cold" not in n and not index.candidates(orig_obj.file,
                                                                     orig_obj.pieces[n])]
            report.not_in_program += [f"{ch.file}:{n}" for n in absent]
            roots = [n for n in ch.changed if n not in absent] + \
                [n for n in ch.new if not patched.pieces[n].local]
            if not roots and not ch.data_changed:
                continue
            # A file only in the patch for a constant's users has no facts.
            touched = facts[key].touched(diffs) if key in facts else set()
            inlined = facts[key].inlined if key in facts else {}
            funcs = {n: _reason(n, ch, touched, inlined) for n in roots}
            # New data travels, unless the program has a global of its name
            # (a common symbol, or a variable moved from another file): the
            # program's holds the state.
            copies = {n: "new" for n in ch.data_new
                      if patched.pieces[n].local or n not in index.globals}
            copies.update({n: "changed read-only data" for n in ch.data_changed})
            rec = latest[key]
            orig_obj = ours.get(key)
            if kernel is None and orig_obj is not None and \
                    _same_data_layout(orig_obj, patched, ch, index):
                emission = patched
            else:
                emission = _emit_compile(cc, rec, emit_dir / f"{len(os.listdir(emit_dir))}.o",
                                         kernel)
            emitter.add_object(emission, orig_obj, funcs, copies, ch.renames)
        if not any(i.replaces for i in emitter.included):
            raise BuildError(f"the diff changes no function of {program}: what it changes "
                             f"the program does not have ("
                             f"{', '.join(report.not_in_program) or 'new code only'})")
        if kernel is None:
            _check_patchable(emitter, index)
        else:
            for inc in emitter.included:
                if inc.replaces is not None:
                    kernel.check_patchable(inc)
        # Written beside, checked, then renamed: no unloadable patch is left.
        staged = output.with_name(f".{output.name}.armlp-tmp")
        emitter.write(staged, name, image.build_id)
        report.included = emitter.included
        report.timings["emit"] = time.monotonic() - t
        report.timings["total"] = time.monotonic() - t0
        try:
            if check:
                _check_patch(staged, image)
            os.replace(staged, output)
        finally:
            staged.unlink(missing_ok=True)
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _same_data_layout(orig: ObjectPieces, patched: ObjectPieces, ch: ObjectChanges,
                      index: ProgramIndex) -> bool:
    """Whether the patched build's own object can supply the patch's code:
    its data where the program has it (no datum new, changed or moved, and
    each data section of the file at one place in the binary, so that a
    section anchor plus an offset lands on the same datum there) and only
    relocations the loader applies (no GOT: PIC code needs the compile
    with -fno-pic).  Saves compiling the file a third time."""
    if ch.data_new or ch.data_changed or ch.data_refused:
        return False
    bases: dict[str, set[int]] = {}
    for p in patched.pieces.values():
        if p.kind == "data":
            old = orig.pieces.get(p.name)
            if old is None or old.sym.value != p.sym.value or \
                    old.section.name != p.section.name:
                return False
            sym = index.find(orig.file, old)
            if sym is not None:
                bases.setdefault(p.section.name, set()).add(sym.value - old.sym.value)
    if any(len(b) > 1 for b in bases.values()):
        return False
    return all(r.type in SUPPORTED_TYPES for relocs in patched.relocs.values() for r in relocs)


def _exact_compile(cc: str, rec: Record, work: Path) -> ObjectPieces | None:
    """*rec*'s file compiled with the program's own flags and ``-g`` only.

    In Thumb code ``-ffunction-sections`` does change the bytes: GAS makes a
    branch or tail call within one section 16 bits wide (``b.n``) where it
    can, and one to another section 32 bits.  The recorded object still
    serves the comparison (both builds have it); the base proof of a Thumb
    file that differs is made again with the build's exact code."""
    out = work / "exact" / rec.object.name
    out.parent.mkdir(exist_ok=True)
    rc = subprocess.call([cc, *rec.flags, "-g", "-c", str(rec.source), "-o", str(out)],
                         cwd=rec.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ObjectPieces(out) if rc == 0 else None


def _prove(index: ProgramIndex, orig: dict[str, ObjectPieces], records: dict[str, Record],
           tree: Path, report: BuildReport,
           exact: Callable[[Record], ObjectPieces | None],
           ) -> tuple[dict[str, ObjectPieces], list[Mismatch]]:
    """The compiles that built the binary, one per source file, proven: of a
    file compiled twice (a static and a shared build), the one whose
    functions are the binary's (a Thumb file's from :func:`_exact_compile`
    when its recorded object differs).  Returns them and, for files no
    compile of which matches, the mismatches."""
    by_file: dict[str, list[str]] = {}
    for key, rec in records.items():
        if index.belongs(orig[key]):
            by_file.setdefault(rec.file(tree), []).append(key)
    ours: dict[str, ObjectPieces] = {}
    bad: list[Mismatch] = []
    for keys in by_file.values():
        first: tuple[int, list[Mismatch]] | None = None
        for key in keys:
            proven, wrong = prove_base(index, [orig[key]])
            if wrong and any(p.sym.value & 1 for p in orig[key].functions()):
                again = exact(records[key])
                if again is not None:
                    proven, wrong = prove_base(index, [again])
            if not wrong:
                ours[key] = orig[key]
                report.proven += proven
                break
            first = first or (proven, wrong)
        else:
            if first is not None:
                report.proven += first[0]
                bad += first[1]
    report.objects = len(ours)
    return ours, bad


def _check_files(diffs: list[FileDiff], ours: set[str], patched: set[str],
                 program: Path) -> None:
    """Refuse a diff that changes C files the program is not built from."""
    for d in diffs:
        if d.path.endswith((".S", ".s", ".asm")):
            raise BuildError(f"{d.path}: the diff changes assembly source; armlp build "
                             f"compares C functions only")
        if d.path.endswith(".c") and d.path not in ours and d.path not in patched:
            raise BuildError(f"{d.path}: the diff changes a file {program} is not built from")


def _check_patchable(emitter: PatchEmitter, index: ProgramIndex) -> None:
    from armlp.analysis.scan import scan
    result = scan(index.image)
    for inc in emitter.included:
        if inc.replaces is None:
            continue
        try:
            rep = result.find(*inc.replaces)
        except ArmlpError:
            continue
        if not rep.verdict.patchable:
            raise BuildError(f"{inc.file}: {inc.name} changed but cannot be live patched: "
                             f"{rep.verdict.reason}")


def _check_patch(path: Path, image: ElfImage) -> None:
    """Read the patch as ``armlp patch`` will: it lays out, every symbol
    resolves, its descriptors name functions of the program."""
    from armlp.elf.symbols import SHN_UNDEF
    from armlp.livepatch.module import read_patch
    exports: dict[str, int] = {}
    libraries = {}
    if image.kind == "shared":
        libraries[image.soname or image.path.name] = image
    if image.interpreter or libraries:
        # What the program's libraries define is resolved when the patch is
        # applied (armlp patch reads the libraries the process has mapped);
        # here the names only need an address.
        exports = {s.name: 0x1000 for s in ElfImage(path).symbols.symbols
                   if s.shndx == SHN_UNDEF and s.name and not image.symbols.named(s.name)}
    try:
        read_patch(path, image, exports, libraries=libraries)
    except ArmlpError as exc:
        raise BuildError(f"the patch armlp wrote does not load: {exc}") from None
