"""The ``armlp scan`` command line: JSON shape, --function, --all, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from armlp.analysis.scan import scan
from armlp.elf.image import ElfImage
from conftest import CORPUS, Builder, Corpus, armlp, functions_by_key, scan_json

FLAGS = ("-marm", "-pg", "-mapcs-frame", "-O2")


@pytest.fixture(scope="module")
def program(builder: Builder, corpus: Corpus) -> Path:
    """funcs.c + other.c + asm_funcs.S + main.c, static: two dup_static."""
    objs = [builder.compile(CORPUS / f"{n}.c", FLAGS, name=f"{n}-cli.o")
            for n in ("funcs", "other", "main")]
    assert corpus.asm is not None
    return builder.link([*objs, corpus.asm], ["-static", *FLAGS[:3]], "prog-cli")


def _check_entry(f: dict[str, object]) -> None:
    assert isinstance(f["name"], str) and f["name"]
    assert isinstance(f["sympos"], int) and f["sympos"] >= 0
    assert isinstance(f["address"], int) and f["address"] >= 0
    assert isinstance(f["size"], int) and f["size"] >= 0
    assert f["mode"] in ("arm", "thumb")
    assert f["mcount_site"] is None or isinstance(f["mcount_site"], int)
    assert isinstance(f["patchable"], bool)
    assert f["rule"] in ("apcs", "push", None)
    assert f["reason"] is None or (isinstance(f["reason"], str) and f["reason"])
    # reason null iff patchable; undo present iff patchable; rule iff patchable
    assert (f["reason"] is None) == f["patchable"], f
    assert (f["undo"] is not None) == f["patchable"], f
    assert (f["rule"] is not None) == f["patchable"], f
    if f["patchable"]:
        assert isinstance(f["mcount_site"], int)
        undo = f["undo"]
        assert isinstance(undo, dict)
        assert undo["rule"] == f["rule"]
        assert isinstance(undo["frame_size"], int) and undo["frame_size"] >= 0
        assert undo["frame_size"] % 4 == 0
        assert isinstance(undo["steps"], list) and all(isinstance(s, str) for s in undo["steps"])
        assert undo["steps"]
    if f["mcount_site"] is not None:
        site = f["mcount_site"]
        assert isinstance(site, int)
        assert f["address"] <= site < f["address"] + max(f["size"], 4)


@pytest.mark.parametrize("which", ["apcs-O2", "noapcs-O0", "thumb-Os", "asm", "program"])
def test_json_shape(which: str, corpus: Corpus, program: Path) -> None:
    if which == "program":
        path = program
    elif which == "asm":
        assert corpus.asm is not None
        path = corpus.asm
    else:
        v, o = which.split("-")
        path = corpus.objects[(v, f"-{o}")]["funcs"]
    res = armlp("scan", "--json", path)
    assert res.code == 0 and res.err == ""
    assert res.out.count("\n") == 1, "one JSON object on one line"
    doc = json.loads(res.out)
    assert isinstance(doc, dict)
    funcs = doc["functions"]
    assert isinstance(funcs, list) and funcs
    for f in funcs:
        _check_entry(f)
    s = doc["summary"]
    assert s["functions"] == len(funcs)
    assert s["patchable"] == sum(f["patchable"] for f in funcs)
    assert s["with_mcount_site"] == sum(f["mcount_site"] is not None for f in funcs)
    assert sum(s["by_verdict"].values()) == len(funcs)
    assert doc["file"] == str(path)


def test_function_shows_prologue_and_undo(program: Path) -> None:
    funcs = functions_by_key(scan_json(program))
    for sympos in (1, 2):
        f = funcs[("dup_static", sympos)]
        res = armlp("scan", "--function", f"dup_static,{sympos}", program)
        assert res.code == 0, res.err
        out = res.out
        assert f"dup_static,{sympos}" in out
        site_lines = [ln for ln in out.splitlines() if "<- mcount site" in ln]
        assert len(site_lines) == 1
        assert site_lines[0].split()[0] == f"{f['mcount_site']:08x}:"
        assert re.search(r"\bbl\b", site_lines[0])
        # the disassembled prologue: one line per instruction up to the site
        insn_lines = [ln for ln in out.splitlines() if re.match(r"\s+[0-9a-f]{8}:", ln)]
        assert len(insn_lines) == f["site_offset"] // 4 + 1
        assert "mov ip, sp" in insn_lines[0]
        assert "str lr, [sp, #-4]!" in insn_lines[-2] or "push {lr}" in insn_lines[-2]
        assert "patchable" in out and "apcs" in out
        for step in f["undo"]["steps"]:
            assert f"  {step}" in out.splitlines(), step


def test_function_json(program: Path) -> None:
    f = functions_by_key(scan_json(program))[("varargs_sum", 0)]
    res = armlp("scan", "--json", "--function", "varargs_sum", program)
    assert res.code == 0
    doc = json.loads(res.out)
    _check_entry(doc)
    assert {k: doc[k] for k in f} == f
    pro = doc["prologue"]
    assert [p["address"] for p in pro] == list(range(f["address"], f["mcount_site"] + 4, 4))
    assert pro[0]["text"] == "mov ip, sp" and "r0, r1, r2, r3" in pro[1]["text"]
    assert "<- mcount site" in pro[-1]["text"]


def test_function_unpatchable(corpus: Corpus) -> None:
    path = corpus.objects[("thumb", "-O2")]["funcs"]
    res = armlp("scan", "--function", "frame_4k", path)       # a Thumb-1 frame over 1 KiB
    assert res.code == 0
    assert "not patchable" in res.out and "Thumb prologue instruction 'ldr r7" in res.out
    assert "<- mcount site" in res.out
    res = armlp("scan", "--function", "not_traced", path)
    assert res.code == 0 and "no mcount site" in res.out


def _one_line_error(res_code: int, err: str, *words: str) -> None:
    assert res_code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("armlp: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_ambiguous_name_needs_sympos(program: Path) -> None:
    for extra in ([], ["--json"]):
        res = armlp("scan", *extra, "--function", "dup_static", program)
        _one_line_error(res.code, res.err, "ambiguous", "'dup_static'", "SYMPOS 1..2",
                        str(program))
        assert res.out == ""


@pytest.mark.parametrize("spec", ["no_such_function", "dup_static,3", "small_leaf,2"])
def test_unknown_function(program: Path, spec: str) -> None:
    res = armlp("scan", "--function", spec, program)
    _one_line_error(res.code, res.err, spec.split(",")[0], str(program))
    assert res.out == ""


def test_unique_name_is_sympos_1(program: Path) -> None:
    """As klp_find_object_symbol: sympos 0 or 1 both name a unique symbol."""
    a = armlp("scan", "--json", "--function", "small_leaf", program)
    b = armlp("scan", "--json", "--function", "small_leaf,1", program)
    assert a.code == b.code == 0 and a.out == b.out


@pytest.mark.parametrize("spec", ["dup_static,x", ",1", "dup_static,-1"])
def test_bad_function_spec(program: Path, spec: str) -> None:
    res = armlp("scan", "--function", spec, program)
    _one_line_error(res.code, res.err, repr(spec))
    assert res.out == ""


def test_all_lists_patchable_functions(corpus: Corpus) -> None:
    path = corpus.objects[("apcs", "-O2")]["funcs"]
    funcs = functions_by_key(scan_json(path))
    default = armlp("scan", path)
    everything = armlp("scan", "--all", path)
    assert default.code == 0 and everything.code == 0

    def table_names(out: str) -> set[str]:
        return {m.group(1) for m in re.finditer(r"^[│|] (\w+)\s", out, re.M)}

    patchable = {n for (n, _), f in funcs.items() if f["patchable"]}
    unpatchable = {n for (n, _), f in funcs.items() if not f["patchable"]}
    assert patchable and unpatchable
    assert table_names(default.out) >= unpatchable
    assert not table_names(default.out) & patchable
    assert table_names(everything.out) >= patchable | unpatchable
    assert "patchable (apcs)" in everything.out and "patchable (push)" in everything.out


def test_summary_text(corpus: Corpus) -> None:
    path = corpus.objects[("noapcs", "-O1")]["funcs"]
    doc = scan_json(path)
    res = armlp("scan", path)
    s = doc["summary"]
    assert f"{s['functions']} functions, {s['with_mcount_site']} with an mcount site, " \
           f"{s['patchable']} patchable" in res.out
    for k, v in s["by_verdict"].items():
        assert re.search(rf"{re.escape(k)}\s*[│|]\s*{v}\b", res.out), k


def test_usage_errors() -> None:
    res = armlp("scan")
    assert res.code == 2 and "Traceback" not in res.err


@pytest.mark.parametrize("link", [["-pie", "-fPIE"], ["-no-pie"]], ids=["pie", "no-pie"])
def test_dynamic_programs_call_mcount_through_the_plt(builder: Builder, link: list[str]
                                                      ) -> None:
    """A dynamically linked -pg program (Debian's default is PIE) calls
    __gnu_mcount_nc through its PLT: scan finds those sites as in a static
    program, at the same offsets into the functions."""
    src = Path(__file__).parent / "programs" / "glibc_hello.c"
    flags = ["-marm", "-pg", "-mapcs-frame", "-O2", *link]
    dyn = builder.link([builder.compile(src, flags, name=f"hello-{link[0]}.o")], link,
                       f"hello-dyn-{link[0]}")
    static = builder.link([builder.compile(src, ["-marm", "-pg", "-mapcs-frame", "-O2"])],
                          ["-static"], "hello-static")
    got = {f["name"]: f for f in scan_json(dyn)["functions"]}
    want = {f["name"]: f for f in scan_json(static)["functions"]}
    for name in ("work", "read_errno", "main"):
        assert got[name]["patchable"], got[name]
        assert got[name]["site_offset"] == want[name]["site_offset"]
        assert got[name]["rule"] == want[name]["rule"]



def test_symbol_names_are_read_as_pyelftools_reads_them(program: Path, builder: Builder,
                                                        tmp_path: Path) -> None:
    """Names come from the string table a slice per symbol: every name of a
    static program must be pyelftools' (GNU ld shares string tails: some
    names start inside another's string), and a UTF-8 name stays UTF-8."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    source = tmp_path / "utf8.c"
    source.write_text("int caf\u00e9(int x) { return x + 1; }\n", encoding="utf-8")
    utf8 = builder.compile(source, FLAGS, name="utf8-names.o")
    for path in (program, utf8):
        with path.open("rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            assert isinstance(symtab, SymbolTableSection)
            want = [sym.name for sym in symtab.iter_symbols()]
            strtab = symtab.stringtable.data()
            inner = [sym["st_name"] for sym in symtab.iter_symbols()
                     if sym["st_name"] and strtab[sym["st_name"] - 1] != 0]
        got = [sym.name for sym in ElfImage(path).symbols.symbols]
        assert got == want, path
        if path == program:
            assert inner, "no shared string tails: the test proves less than it says"
    assert "caf\u00e9" in [f["name"] for f in scan_json(utf8)["functions"]]


def test_functions_by_address_are_the_functions_sorted(program: Path, corpus: Corpus) -> None:
    """``functions(by_address=True)``, which scan walks, sorts the records
    before making them: it must give exactly the functions sorted by section
    and address (Thumb bit off; ties in symbol-table order), ARM and Thumb."""
    objects = [path for by_source in corpus.objects.values() for path in by_source.values()]
    thumb = 0
    for path in (program, *objects):
        table = ElfImage(path).symbols
        want = sorted(table.functions(), key=lambda f: (f.section, f.address))
        assert table.functions(by_address=True) == want, path
        thumb += sum(f.mode == "thumb" for f in want)
    assert thumb, "no Thumb function: the Thumb bit's part is not shown"


def test_named_finds_what_by_name_holds(program: Path) -> None:
    """``named``, which answers scan's few lookups without indexing every
    symbol (a scan of the names, then a set of them from the fifth lookup
    on), gives what ``by_name`` gives: functions, objects, static names that
    repeat, mapping symbols and names no symbol has."""
    from armlp.elf.symbols import SCANNED_LOOKUPS

    want = ElfImage(program).symbols.by_name
    names = ["main", "dup_static", "__gnu_mcount_nc", "no_such_name", "$a", "$d", "",
             *list(want)[:40]]
    assert len(names) > 2 * SCANNED_LOOKUPS and len(want["dup_static"]) == 2
    table = ElfImage(program).symbols
    assert [table.named(n) for n in names] == [want.get(n, []) for n in names]
    assert "by_name" not in table.__dict__


@pytest.mark.parametrize(("strtab", "offsets", "names"), [
    (b"", [0], [""]),                                    # an empty table: offset 0 only
    (b"\0ab\0b", [0, 1, 2, 4], ["", "ab", "b", "b"]),    # a tail, no NUL at the end
    (b"\0caf\xc3\xa9\0x\xff", [1, 2, 7], ["caf\u00e9", "af\u00e9", "x\ufffd"]),   # UTF-8
])
def test_symbol_names_of_odd_string_tables(strtab: bytes, offsets: list[int],
                                           names: list[str]) -> None:
    """What no linker writes but a corrupt or hand-made file can hold: a
    table without its final NUL still ends its last name, a bad byte is
    replaced, an empty table names offset 0 the empty string."""
    from armlp.elf.symbols import _symbol_names

    assert _symbol_names(strtab, offsets) == names


def test_the_fast_json_writer_says_what_to_json_says(program: Path, corpus: Corpus) -> None:
    """``scan --json`` builds its text by hand, per function from shared
    pieces, for speed: it must parse to exactly the plain ``to_json()``
    (every key, every function, in order), for ARM programs and objects."""
    objects = [path for by_source in corpus.objects.values() for path in by_source.values()]
    assert objects
    for path in (program, *objects):
        result = scan(ElfImage(path))
        assert json.loads(result.to_json_text()) == result.to_json(), path


def test_the_command_exits_with_all_its_output_and_quietly_into_a_closed_pipe(
        program: Path) -> None:
    """As a command, armlp leaves the scan's objects to the operating system
    (it exits without freeing them): what it printed must still arrive
    whole, and a reader that stops early (``| head``) must get no error."""
    cmd = [sys.executable, "-m", "armlp.cli.main", "scan", "--json", str(program)]
    whole = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0 and whole.stderr == ""
    assert json.loads(whole.stdout) == scan(ElfImage(program)).to_json()
    assert len(whole.stdout) > 4 * 65536           # more than a pipe holds
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(9) == b'{"file":"'
    proc.stdout.close()                             # as `| head -c 9` does
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == b""
