"""``armlp scan`` on a corpus compiled from C at every -O level (issue 2).

The corpus (tests/corpus/funcs.c, other.c, asm_funcs.S) has one function per
prologue shape.  Each is built three ways, at -O0/-O1/-O2/-Os/-O3:

* ``-marm -pg -mapcs-frame``   (``apcs``)
* ``-marm -pg -mno-apcs-frame`` (``noapcs``)
* ``-mthumb -pg``               (``thumb``)

The expected verdict of each (function, flags) pair follows from the source
and the flags alone, never from scan's own output:

============================  ============  ============  ====================
function kind                 apcs          noapcs        thumb
============================  ============  ============  ====================
ordinary C function           apcs          push          push (3)
``naked``                     push (1)      push (1)      push (1, 3)
``no_instrument_function``    no_mcount_site (2) in every build
assembly (.S, no mcount)      no_mcount_site (2)
============================  ============  ============  ====================

(1) GCC 12 emits only ``push {lr}; bl __gnu_mcount_nc`` at the top of a naked
    function, no frame at all (checked with objdump): nothing to undo but the
    mcount push, so rule ``push`` with an empty frame.
(2) no ``bl __gnu_mcount_nc`` anywhere in the function.
(3) when every instruction of its prologue is one Thumb's rule knows (a
    push, ``sub sp``, ``vpush``, r7 set from sp); otherwise not patchable,
    the reason naming the instruction.

Independently of scan, the mcount site offset and the frame size are
recomputed from ``objdump -dr`` text: the site is the instruction carrying the
``R_ARM_CALL``/``R_ARM_THM_CALL`` relocation against ``__gnu_mcount_nc``, and
the frame size is 4 x (registers in every push before the mcount
``push {lr}``) + every ``sub sp, sp, #N``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import (
    CORPUS,
    OLEVELS,
    VARIANTS,
    Builder,
    Corpus,
    Insn,
    armlp,
    cross,
    functions_by_key,
    imm,
    objdump_functions,
    parse_reglist,
    run,
    scan_json,
)

APCS_STEPS = ["lr = [fp, #-4]", "sp = [fp, #-8]", "fp = [fp, #-12]"]

#: name -> kind, for every function of funcs.c / other.c.  Every one is
#: global or noinline+noipa, so all exist at every -O level.
FUNCS_C = {
    "small_leaf": "c",
    "frame_4k": "c",          # 5000 bytes of locals: two sub sp (not one modified imm)
    "frame_64k": "c",         # 70000 bytes of locals
    "use_alloca": "c",
    "use_vla": "c",
    "many_args": "c",         # 7 arguments: 3 on the stack
    "args64": "c",            # long long arguments in register pairs
    "varargs_sum": "c",       # push {r0-r3} before the frame
    "struct_ret": "c",        # hidden result pointer in r0
    "never_returns": "c",     # noreturn
    "recursive_fib": "c",
    "not_traced": "notrace",  # __attribute__((no_instrument_function))
    "naked_fn": "naked",
    "dup_static": "c",        # static; other.c has another dup_static
    "call_dup_a": "c",
    "calls_many": "c",
}
OTHER_C = {"dup_static": "c", "call_dup_b": "c"}
ASM_S = {"asm_add": "asm", "asm_frame": "asm"}


def expected(kind: str, variant: str) -> tuple[bool, str | None, str | None]:
    """(patchable, rule, reason_code) from the source kind and the flags."""
    if kind in ("notrace", "asm"):
        return False, None, "no_mcount_site"
    if variant == "thumb":
        return True, "push", None           # if understood: see check_thumb
    if kind == "naked":
        return True, "push", None
    return True, ("apcs" if variant == "apcs" else "push"), None


def _prologue(insns: list[Insn]) -> tuple[int, list[Insn]] | None:
    """(site offset from entry, instructions before the site) per objdump."""
    start = insns[0].offset
    for i, ins in enumerate(insns):
        if any(sym == "__gnu_mcount_nc" and t in ("R_ARM_CALL", "R_ARM_PC24", "R_ARM_THM_CALL")
               for t, sym in ins.relocs) or ins.operands.endswith("<__gnu_mcount_nc>"):
            return ins.offset - start, insns[:i]
    return None


_SAVE_ONLY = {"push", "stmdb", "str"}


def frame_from_objdump(prologue: list[Insn]) -> tuple[int, dict[str, int], set[str]]:
    """(frame size, {reg: slot offset from the site sp}, registers written)
    of an ARM prologue without the final ``push {lr}``, from objdump text."""
    assert prologue and prologue[-1].mnemonic == "push" and prologue[-1].operands == "{lr}", \
        prologue[-1:]
    sp = 0
    slots: dict[str, int] = {}
    written: set[str] = set()
    for ins in prologue[:-1]:
        ops = [o.strip() for o in ins.operands.split(",", 2)]
        if ins.mnemonic == "push":
            regs = parse_reglist(ins.operands)
            sp -= 4 * len(regs)
            for k, r in enumerate(regs):
                slots.setdefault(r, sp + 4 * k)
        elif ins.mnemonic == "sub" and ops[:2] == ["sp", "sp"]:
            sp -= imm(ops[2])
        else:
            written.add(ops[0])
    frame = -sp
    return frame, {r: off + frame for r, off in slots.items()}, written


def thumb_frame_from_objdump(prologue: list[Insn]) -> tuple[int, dict[str, int], set[str]]:
    """(frame size, {reg: slot from the site sp}, registers written) of a
    Thumb prologue without the final ``push {lr}``, from objdump text."""
    assert prologue and (prologue[-1].mnemonic, prologue[-1].operands) == ("push", "{lr}")
    sp = 0
    slots: dict[str, int] = {}
    written: set[str] = set()
    for ins in prologue[:-1]:
        ops = ins.operands
        if ins.mnemonic in ("push", "push.w") or (ins.mnemonic.startswith("stmdb")
                                                  and ops.startswith("sp!")):
            regs = parse_reglist(ops[ops.index("{"):])
            sp -= 4 * len(regs)
            for k, r in enumerate(regs):
                slots.setdefault(r, sp + 4 * k)
        elif ins.mnemonic.startswith("vpush"):
            sp -= 8 * len(parse_reglist(ops))
        elif ins.mnemonic.startswith("sub") and ops.startswith("sp,"):
            sp -= imm(ops.split(",")[-1].strip())
        elif ops.startswith("r7, sp"):
            written.add("r7")
    return -sp, {r: off - sp for r, off in slots.items()}, written


def check_thumb(f: dict[str, Any], before: list[Insn]) -> None:
    """A Thumb function whose prologue is understood is patchable by rule
    push with the frame and undo objdump's reading gives; anything else is
    not, and its reason names the instruction."""
    label = f"{f['name']},{f['sympos']}"
    if f["reason_code"] == "unknown_instruction":
        assert f["patchable"] is False and f["undo"] is None, label
        assert "is not understood" in f["reason"], label
        return
    assert f["patchable"] is True and f["rule"] == "push" and f["reason"] is None, \
        (label, f["reason"])
    frame, slots, written = thumb_frame_from_objdump(before)
    undo = f["undo"]
    assert undo["frame_size"] == frame, (label, [f"{i.mnemonic} {i.operands}" for i in before])
    assert {r["reg"]: r["site_sp_offset"] for r in undo["restore"]} == \
        {r: slots[r] for r in written}, label
    assert undo["steps"][-1] == f"sp = site_sp + {frame}", label


def check_function(f: dict[str, Any], kind: str, variant: str,
                   insns: list[Insn] | None) -> None:
    want_patchable, want_rule, want_reason = expected(kind, variant)
    label = f"{f['name']},{f['sympos']}"
    assert f["mode"] == ("thumb" if variant == "thumb" else "arm"), label
    if variant != "thumb" or kind in ("notrace", "asm"):     # Thumb: see check_thumb
        assert f["patchable"] is want_patchable, (label, f["reason"])
        assert f["rule"] == want_rule, label
        assert f["reason_code"] == want_reason, (label, f["reason"])
    assert insns, f"objdump shows no code for {label}"
    pro = _prologue(insns)
    if kind in ("notrace", "asm"):
        assert pro is None, f"{label}: objdump shows an mcount call; the corpus is wrong"
        assert f["mcount_site"] is None and f["site_offset"] is None
        return
    assert pro is not None, f"{label}: objdump shows no mcount call"
    site_offset, before = pro
    assert f["site_offset"] == site_offset, label
    assert f["mcount_site"] == f["address"] + site_offset, label
    if variant == "thumb":
        check_thumb(f, before)
        return
    if not want_patchable:
        assert f["undo"] is None and isinstance(f["reason"], str) and f["reason"]
        return
    undo = f["undo"]
    assert isinstance(undo, dict) and f["reason"] is None, label
    assert undo["rule"] == want_rule
    frame, slots, written = frame_from_objdump(before)
    assert undo["frame_size"] == frame, (label, [f"{i.mnemonic} {i.operands}" for i in before])
    if want_rule == "apcs":
        first = before[0]
        assert (first.mnemonic, first.operands) == ("mov", "ip, sp"), label
        assert any(i.mnemonic == "push" and {"fp", "ip", "lr", "pc"} <= set(
            parse_reglist(i.operands)) for i in before), label
        assert undo["steps"] == APCS_STEPS, label
        return
    # push rule: sp goes back by the frame, every register the prologue wrote
    # (other than ip, the scratch register) is reloaded from its save slot.
    restore = {r["reg"]: r["site_sp_offset"] for r in undo["restore"]}
    want = {r: slots[r] for r in written - {"ip", "sp"}}
    assert restore == want, label
    assert undo["steps"][-1] == f"sp = site_sp + {frame}", label
    if kind == "naked":
        assert undo["frame_size"] == 0 and before == before[-1:], label


PAIRS = [(v, o) for v in VARIANTS for o in OLEVELS]


@pytest.mark.parametrize(("variant", "olevel"), PAIRS, ids=[f"{v}{o}" for v, o in PAIRS])
@pytest.mark.parametrize(("source", "table"), [("funcs", FUNCS_C), ("other", OTHER_C)],
                         ids=["funcs.c", "other.c"])
def test_corpus_verdicts(corpus: Corpus, variant: str, olevel: str, source: str,
                         table: dict[str, str]) -> None:
    path = corpus.objects[(variant, olevel)][source]
    doc = scan_json(path)
    assert doc["kind"] == "relocatable"
    funcs = functions_by_key(doc)
    assert {name for name, _ in funcs} == set(table), "scan must see exactly the C functions"
    dis = objdump_functions(path)
    failures = []
    for name, kind in table.items():
        f = funcs[(name, 0)]
        try:
            check_function(f, kind, variant, dis.get(name))
        except AssertionError as exc:
            failures.append(f"{name} ({kind}, {variant} {olevel}): {exc}")
    assert not failures, "\n".join(failures)
    if variant == "thumb" and source == "funcs":     # most Thumb prologues are understood
        understood = [f for f in funcs.values() if f["patchable"]]
        assert len(understood) >= len(funcs) // 2, [f["reason"] for f in funcs.values()]


def test_corpus_assembly(corpus: Corpus) -> None:
    assert corpus.asm is not None
    doc = scan_json(corpus.asm)
    funcs = functions_by_key(doc)
    assert {n for n, _ in funcs} == set(ASM_S)
    dis = objdump_functions(corpus.asm)
    for name, kind in ASM_S.items():
        check_function(funcs[(name, 0)], kind, "apcs", dis[name])
    assert doc["summary"]["patchable"] == 0
    assert any("-pg" in n for n in doc["notes"])


def test_corpus_large_frames_need_several_subs(corpus: Corpus) -> None:
    """The corpus really exercises frames that no single ``sub`` can make."""
    path = corpus.objects[("apcs", "-O2")]["funcs"]
    dis = objdump_functions(path)
    for name, least in (("frame_4k", 5000), ("frame_64k", 70000)):
        pro = _prologue(dis[name])
        assert pro is not None
        subs = [i for i in pro[1] if i.mnemonic == "sub" and i.operands.startswith("sp, sp")]
        assert len(subs) >= 2 and sum(imm(i.operands.split(",")[2]) for i in subs) >= least
        f = functions_by_key(scan_json(path))[(name, 0)]
        assert f["undo"]["frame_size"] >= least + 16


# --- a linked static executable agrees with its objects --------------------

LINK_FLAGS = ("-marm", "-pg", "-mapcs-frame")


@pytest.fixture(scope="session", params=["-O0", "-O2"])
def linked(request: pytest.FixtureRequest, builder: Builder
           ) -> tuple[Path, dict[str, Path]]:
    olevel = request.param
    objs = {
        "funcs": builder.compile(CORPUS / "funcs.c", [*LINK_FLAGS, olevel],
                                 name=f"funcs{olevel}-link.o"),
        "other": builder.compile(CORPUS / "other.c", [*LINK_FLAGS, olevel],
                                 name=f"other{olevel}-link.o"),
        "asm_funcs": builder.compile(CORPUS / "asm_funcs.S", ["-marm"]),
        "main": builder.compile(CORPUS / "main.c", [*LINK_FLAGS, olevel],
                                name=f"main{olevel}-link.o"),
    }
    exe = builder.link(list(objs.values()), ["-static", *LINK_FLAGS], f"prog{olevel}")
    return exe, objs


COMPARED = ("patchable", "rule", "reason_code", "site_offset", "undo", "size", "mode")


def test_executable_agrees_with_objects(linked: tuple[Path, dict[str, Path]]) -> None:
    exe, objs = linked
    edoc = scan_json(exe)
    assert edoc["kind"] == "executable"
    efuncs = functions_by_key(edoc)
    # Link order funcs.o, other.o: the static dup_static functions are sympos 1, 2.
    sympos_of = {("funcs", "dup_static"): 1, ("other", "dup_static"): 2}
    compared = 0
    for stem, obj in objs.items():
        for (name, sympos), of in functions_by_key(scan_json(obj)).items():
            assert sympos == 0, "names are unique inside each object"
            key = (name, sympos_of.get((stem, name), 0))
            assert key in efuncs, f"{key} from {stem}.o missing in the executable"
            ef = efuncs[key]
            diff = {k: (of[k], ef[k]) for k in COMPARED if of[k] != ef[k]}
            assert not diff, f"{name},{key[1]} ({stem}.o vs executable): {diff}"
            if of["mcount_site"] is not None:
                assert ef["mcount_site"] == ef["address"] + of["site_offset"]
            compared += 1
    assert compared == len(FUNCS_C) + len(OTHER_C) + len(ASM_S) + 1   # + main
    # The two statics really are the two different functions (other.c's is bigger).
    assert efuncs[("dup_static", 1)]["size"] < efuncs[("dup_static", 2)]["size"]
    assert ("dup_static", 0) not in efuncs
    # Every -pg function of the program (ours only: glibc is not built with
    # -pg) is patchable; libc functions have no site.
    ours = set(FUNCS_C) | set(OTHER_C) | {"main"}
    for (name, _), ef in efuncs.items():
        if name not in ours:
            continue
        assert ef["patchable"] is (name not in ("not_traced",)), name


def test_executable_sites_match_objdump(linked: tuple[Path, dict[str, Path]]) -> None:
    """In the linked image, the sites scan decodes are exactly the
    ``bl <__gnu_mcount_nc>`` instructions objdump shows in our functions."""
    exe, _ = linked
    dis = objdump_functions(exe)
    efuncs = functions_by_key(scan_json(exe))
    for name in (set(FUNCS_C) | set(OTHER_C)) - {"dup_static"}:
        pro = _prologue(dis[name])
        f = efuncs[(name, 0)]
        if pro is None:
            assert f["mcount_site"] is None, name
        else:
            assert f["site_offset"] == pro[0], name


# --- __mcount_loc: the kernel's table of sites -------------------------------

MCOUNT_LOC_S = r"""
@ Functions following the kernel's pattern: recordmcount's table entry
@ (.pushsection __mcount_loc) right before each "1: bl __gnu_mcount_nc".
    .syntax unified
    .arm
    .text

    .macro record
    .pushsection __mcount_loc, "a"
    .word 1f
    .popsection
    .endm

    .macro func name, record_it
    .global \name
    .type \name, %function
    .p2align 2
\name:
    mov ip, sp
    push {fp, ip, lr, pc}
    sub fp, ip, #4
    push {lr}
    .if \record_it
    record
    .endif
    .global \name\()_site
\name\()_site:
1:  bl __gnu_mcount_nc
    .global \name\()_body
\name\()_body:
    mov r0, #1
    ldmdb fp, {fp, sp, pc}
    .size \name, . - \name
    .endm

    func fa, 1
    func fb, 1
    func fc, RECORD_FC
    .if EXTRA
    @ a table entry that is not an mcount site (points into fa's body)
    .pushsection __mcount_loc, "a"
    .word fa_body
    .popsection
    .endif

    .global __gnu_mcount_nc
    .type __gnu_mcount_nc, %function
__gnu_mcount_nc:
    mov ip, lr
    pop {lr}
    bx ip
    .size __gnu_mcount_nc, . - __gnu_mcount_nc

    .global _start
    .type _start, %function
_start:
    bl fa
    bl fb
    bl fc
    mov r7, #1
    svc #0
    .size _start, . - _start

    .section .note.GNU-stack, "", %progbits
"""


def _symbols(path: Path) -> dict[str, int]:
    out = {}
    for line in run([cross("nm"), path]).splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[2]] = int(parts[0], 16)
    return out


@pytest.mark.parametrize(("record_fc", "extra"), [(1, 0), (1, 1), (0, 0), (0, 1)],
                         ids=["agrees", "only-in-table", "only-decoded", "both"])
def test_mcount_loc(builder: Builder, tmp_path: Path, record_fc: int, extra: int) -> None:
    src = tmp_path / "mcount_loc.S"
    src.write_text(MCOUNT_LOC_S.replace("RECORD_FC", str(record_fc))
                   .replace("EXTRA", str(extra)))
    obj = builder.compile(src, ["-marm"], name=f"mcount_loc-{record_fc}{extra}.o")
    image = builder.link([obj], ["-nostdlib", "-static"], f"mcount_loc-{record_fc}{extra}")
    syms = _symbols(image)
    sites = [syms[f"{n}_site"] for n in ("fa", "fb", "fc")]
    doc = scan_json(image)
    assert doc["kind"] == "vmlinux"
    funcs = functions_by_key(doc)
    for n, site in zip(("fa", "fb", "fc"), sites, strict=True):
        f = funcs[(n, 0)]
        assert f["mcount_site"] == site and f["rule"] == "apcs", n
    table = set(sites[:2]) | ({sites[2]} if record_fc else set()) | (
        {syms["fa_body"]} if extra else set())
    assert doc["mcount_loc"] == {
        "entries": len(table),
        "agrees": bool(record_fc and not extra),
        "only_in_table": [syms["fa_body"]] if extra else [],
        "only_decoded": [] if record_fc else [sites[2]],
    }
    text = armlp("scan", image)
    assert text.code == 0
    if record_fc and not extra:
        assert "all agree" in text.out
    else:
        assert "disagrees" in text.out
        for a in doc["mcount_loc"]["only_in_table"] + doc["mcount_loc"]["only_decoded"]:
            assert f"{a:#x}" in text.out


def test_no_mcount_loc_in_user_programs(linked: tuple[Path, dict[str, Path]]) -> None:
    exe, _ = linked
    assert scan_json(exe)["mcount_loc"] is None
