"""The comparison engine: two builds of one C file, function by function.

A function is *changed* when its bytes (relocated words aside) or what its
relocations refer to differ, unless every difference is a line number the
diff only moved (``__LINE__`` in an assertion: an immediate or a literal
that was old line L and is now the line L moved to).  It is *new* when only
the patched build has it.  Data is compared the same way: new data travels
with the patch; changed read-only data too (the functions that use it are
then changed); changed writable data is refused, since the running program's
copy holds its state.

Why a function changed comes from the debug information of the patched
build: its own source lines are touched by the diff, or a function inlined
into it had its source touched.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstone import CS_ARCH_ARM, CS_MODE_ARM, CS_MODE_THUMB, Cs

from armlp.builder.diffs import FileDiff
from armlp.builder.pieces import ObjectPieces, Piece, start_of
from armlp.errors import BuildError

_IMM = re.compile(r"#(-?(?:0x[0-9a-f]+|\d+))")
#: Above this a word is no line number (an instruction word one more than
#: another is not a line that moved one down).
MAX_LINE = 10_000_000
_cs = Cs(CS_ARCH_ARM, CS_MODE_ARM)
_cs_thumb = Cs(CS_ARCH_ARM, CS_MODE_THUMB)


@dataclass(slots=True)
class ObjectChanges:
    """What one C file's patched build changes."""

    file: str
    changed: list[str] = field(default_factory=list)      # functions, code differs
    new: list[str] = field(default_factory=list)          # functions only patched has
    line_only: list[str] = field(default_factory=list)    # functions, only __LINE__ moved
    data_new: list[str] = field(default_factory=list)
    data_changed: list[str] = field(default_factory=list)  # read-only: a new copy travels
    data_refused: list[str] = field(default_factory=list)  # writable: cannot change live
    #: Functions changed only because they use changed read-only data: which.
    uses: dict[str, str] = field(default_factory=dict)
    #: Function-local statics GCC numbered differently: patched -> original name.
    renames: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.new or self.data_new or self.data_changed
                    or self.data_refused)


def line_pairs(diffs: Iterable[FileDiff]) -> Callable[[int, int], bool]:
    """Whether ``(old, new)`` is a line the diff moved and left unchanged."""
    files = list(diffs)

    def moved(old: int, new: int) -> bool:
        return old != new and 0 < old < MAX_LINE and \
            any(f.moved(old) == new for f in files)
    return moved


def _word(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", b.ljust(at + 4, b"\0"), at)[0])


def _explained(old: int, new: int, moved: Callable[[int, int], bool]) -> bool:
    if moved(old, new):                     # a literal pool word
        return True
    a = next(_cs.disasm(struct.pack("<I", old), 0), None)
    b = next(_cs.disasm(struct.pack("<I", new), 0), None)
    return a is not None and b is not None and _moved_operands(a, b, moved)


#: Instructions that put an immediate in a register, whichever encoding the
#: value allows: a line number that moved may change from one to the other
#: (``movw r1, #1997`` becomes ``mov r1, #2000``, a modified immediate).
_SET_IMMEDIATE = {"movw": "mov", "mov.w": "mov"}


def _moved_operands(a: Any, b: Any, moved: Callable[[int, int], bool]) -> bool:
    """Whether instructions *a* and *b* differ only by immediates that are
    line numbers the diff moved."""
    if _SET_IMMEDIATE.get(a.mnemonic, a.mnemonic) != _SET_IMMEDIATE.get(b.mnemonic, b.mnemonic):
        return False
    if _IMM.sub("#", a.op_str) != _IMM.sub("#", b.op_str):
        return False
    pairs = [(int(x, 0), int(y, 0)) for x, y in zip(_IMM.findall(a.op_str),
                                                    _IMM.findall(b.op_str), strict=True)]
    diff = [(x, y) for x, y in pairs if x != y]
    return bool(diff) and all(moved(x, y) for x, y in diff)


def line_only(a: Piece, b: Piece, moved: Callable[[int, int], bool]) -> bool:
    """Whether *a* and *b* differ only by line numbers the diff moved (ARM
    code word by word; Thumb code instruction by instruction, 16 and 32
    bits, and the words after what decodes, a literal pool)."""
    if a.size != b.size or a.refs != b.refs or a.code == b.code:
        return False
    if a.sym.value & 1:
        ia, ib = list(_cs_thumb.disasm(a.code, 0)), list(_cs_thumb.disasm(b.code, 0))
        if [i.size for i in ia] != [i.size for i in ib]:
            return False
        end = sum(i.size for i in ia)
        return all(x.bytes == y.bytes or _moved_operands(x, y, moved)
                   for x, y in zip(ia, ib, strict=True)) and \
            all(moved(_word(a.raw, i), _word(b.raw, i)) for i in range(end, len(a.code), 4)
                if a.code[i:i + 4] != b.code[i:i + 4])
    return all(_explained(_word(a.raw, i), _word(b.raw, i), moved)
               for i in range(0, len(a.code), 4) if a.code[i:i + 4] != b.code[i:i + 4])


_NUMBERED = re.compile(r"(.+)\.(\d+)")


def _numbered_statics(orig: ObjectPieces | None, patched: ObjectPieces) -> dict[str, str]:
    """Match function-local statics across builds.  GCC names them
    ``name.N`` with N counted over the file, so a new one renumbers others.
    A static is matched by the function that declares it (its DWARF), as
    kpatch correlates them; failing that, by order, which only holds when
    the diff adds or removes none."""
    def groups(pieces: dict[str, Piece]) -> dict[str, list[tuple[int, str]]]:
        out: dict[str, list[tuple[int, str]]] = {}
        for name, p in pieces.items():
            m = _NUMBERED.fullmatch(name)
            if m and p.kind == "data" and p.local:
                out.setdefault(m[1], []).append((int(m[2]), name))
        return {k: sorted(v) for k, v in out.items()}
    before = orig.pieces if orig is not None else {}
    file = patched.file
    old, new = groups(before), groups(patched.pieces)
    renames: dict[str, str] = {}
    for base, names in new.items():
        was = old.get(base)
        if was is None or [n for _, n in was] == [n for _, n in names]:
            continue
        mine = _owners(orig, [n for _, n in was]) if orig is not None else None
        theirs = _owners(patched, [n for _, n in names])
        if mine is not None and theirs is not None:
            # kpatch's rule: a static is its function's; one of a function
            # only the patched build has is new, whatever its number.
            for user, n in theirs.items():
                o = mine.get(user)
                if o is None and n in before:
                    renames[n] = f"{n}#new"
                elif o is not None and o != n:
                    renames[n] = o
            continue
        if len(was) != len(names):
            raise BuildError(f"{file}: the diff adds or removes a function-local static "
                             f"named {base!r}; GCC renumbers those ({', '.join(n for _, n in was)}"
                             f" become {', '.join(n for _, n in names)}), and their debug "
                             f"information does not say whose each is, so armlp cannot tell "
                             f"which holds which state: give the new one another name")
        renames.update({n: o for (_, n), (_, o) in zip(names, was, strict=True) if n != o})
    return renames


def _owners(obj: ObjectPieces, statics: list[str]) -> dict[str, str] | None:
    """Each of *statics* (``name.N`` of one name) by the function that
    declares it, from the object's DWARF (the wrapper builds with -g): a
    static variable's DIE is under its function's, and its location is its
    offset in its section.  None unless every one is found, each function
    declaring one of them."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    base = statics[0].rsplit(".", 1)[0]
    at: dict[int, list[str]] = {}
    for n in statics:
        at.setdefault(start_of(obj.pieces[n].sym), []).append(n)
    if any(len(v) > 1 for v in at.values()):
        return None                     # two sections, one offset: not told apart
    out: dict[str, str] = {}
    try:
        with open(obj.path, "rb") as f:
            dwarf = ELFFile(f).get_dwarf_info(relocate_dwarf_sections=True)
            for cu in dwarf.iter_CUs():
                for fn in cu.get_top_DIE().iter_children():
                    name = _die_name(fn) if fn.tag == "DW_TAG_subprogram" else None
                    stack = list(fn.iter_children()) if name else []
                    while stack:
                        d = stack.pop()
                        stack.extend(d.iter_children())
                        loc = d.attributes.get("DW_AT_location")
                        if d.tag != "DW_TAG_variable" or _die_name(d) != base or \
                                loc is None or loc.form != "DW_FORM_exprloc" or \
                                len(loc.value) != 5 or loc.value[0] != 0x03:   # DW_OP_addr
                            continue
                        found = at.get(int.from_bytes(bytes(loc.value[1:]), "little"))
                        if found is None or name in out:
                            return None
                        out[str(name)] = found[0]
    except (ELFError, KeyError, ValueError, AttributeError, OSError):
        return None
    return out if sorted(out.values()) == sorted(statics) else None


def compare(orig: ObjectPieces | None, patched: ObjectPieces,
            moved: Callable[[int, int], bool]) -> ObjectChanges:
    """What *patched* changes against *orig* (None: a file new in the diff)."""
    out = ObjectChanges(patched.file)
    before = orig.pieces if orig is not None else {}
    out.renames = _numbered_statics(orig, patched)
    for name, p in patched.pieces.items():
        old = before.get(out.renames.get(name, name))
        if out.renames and old is not None:
            p = dataclasses.replace(p, refs=tuple(
                (at, t, (k[0], out.renames.get(k[1], k[1]), k[2])
                 if k[0] == "sym" and isinstance(k[1], str) else k)
                for at, t, k in p.refs))
        if p.kind == "func":
            if old is None or old.kind != "func":
                out.new.append(name)
            elif not old.same(p):
                (out.line_only if line_only(old, p, moved) else out.changed).append(name)
        elif old is None:
            out.data_new.append(name)
        elif not old.same(p):               # data: no line-number excuse
            (out.data_refused if old.writable or p.writable else out.data_changed).append(name)
    # A function that uses changed read-only data must use the new copy.
    # PIC code reaches data pc-relatively: known only by its section.
    copied = set(out.data_changed)
    sections = {patched.pieces[n].section.name for n in copied}
    if copied:
        for p in patched.functions():
            if p.name in out.changed or p.name in out.new:
                continue
            used = next((k[1] for _, _, k in p.refs if (k[0] == "sym" and k[1] in copied) or
                         (k[0] == "prel" and k[1] in sections)), None)
            if used is not None:
                out.changed.append(p.name)
                out.uses[p.name] = used if used in copied else ", ".join(sorted(copied))
    return out


def _die_name(die: object) -> str | None:
    from elftools.dwarf.die import DIE
    assert isinstance(die, DIE)
    for _ in range(4):
        attr = die.attributes.get("DW_AT_name")
        if attr is not None:
            return str(attr.value.decode("utf-8", "replace"))
        origin = die.attributes.get("DW_AT_abstract_origin") or \
            die.attributes.get("DW_AT_specification")
        if origin is None:
            return None
        die = die.get_DIE_from_attribute(origin.name)
    return None


@dataclass(slots=True)
class SourceFacts:
    """From a patched object's debug information: each function's first line
    in its file, and the functions inlined into each function."""

    decl: dict[str, tuple[str, int]] = field(default_factory=dict)   # name -> (file, line)
    inlined: dict[str, set[str]] = field(default_factory=dict)

    def touched(self, diffs: Iterable[FileDiff]) -> set[str]:
        """The functions whose own source lines the diff touches (a touched
        line belongs to the last function declared at or above it)."""
        out: set[str] = set()
        by_file: dict[str, list[tuple[int, str]]] = {}
        for name, (file, line) in self.decl.items():
            by_file.setdefault(Path(file).name, []).append((line, name))
        for d in diffs:
            funcs = sorted(by_file.get(Path(d.path).name, []))
            for line in d.touched:
                above = [name for start, name in funcs if start <= line]
                if above:
                    out.add(above[-1])
        return out


def source_facts(path: Path, wanted: set[str]) -> SourceFacts:
    """Read the DWARF of *path* (a recorded object, built with -g): every
    function's declaration line, and what was inlined into the *wanted*
    ones (only their subtrees are walked: a 200,000-line file has a
    million DIEs)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    facts = SourceFacts()
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return facts
            # Not relocated: an ARM object's REL relocations keep their
            # addends in place, so every offset into .debug_str and
            # .debug_line is right as it is; only addresses (which are not
            # read) stay section-relative.  Relocating is most of the time.
            dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
            for cu in dwarf.iter_CUs():
                lp = dwarf.line_program_for_CU(cu)
                files = lp["file_entry"] if lp is not None else []
                base = 0 if lp is not None and lp.header["version"] >= 5 else 1
                for die in cu.get_top_DIE().iter_children():
                    if die.tag != "DW_TAG_subprogram":
                        continue
                    name = _die_name(die)
                    if name is None:
                        continue
                    line = die.attributes.get("DW_AT_decl_line")
                    fidx = die.attributes.get("DW_AT_decl_file")
                    if line is not None and fidx is not None and \
                            0 <= fidx.value - base < len(files):
                        fname = files[fidx.value - base].name.decode("utf-8", "replace")
                        facts.decl.setdefault(name, (fname, int(line.value)))
                    if name not in wanted:
                        continue
                    inl: set[str] = set()
                    stack = list(die.iter_children())
                    while stack:
                        d = stack.pop()
                        if d.tag == "DW_TAG_inlined_subroutine":
                            n = _die_name(d)
                            if n:
                                inl.add(n)
                        stack.extend(d.iter_children())
                    if inl:
                        facts.inlined.setdefault(name, set()).update(inl)
    except (ELFError, KeyError, ValueError, AttributeError):
        return facts    # reasons get vaguer; the patch does not change
    return facts
