"""``armlp scan --json`` on two processes (armlp.analysis.split): the same
bytes as one process gives, from a vmlinux and from the programs and
objects of the corpus; the helper's part scanned here when the helper
fails; and the helper's way of reading the symbol table (no name decoded
but its functions') giving what the decoded table gives."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from armlp.analysis import split
from armlp.analysis.scan import ScanResult, scan, scan_part
from armlp.analysis.split import write_scan_json
from armlp.elf.image import ElfImage
from armlp.elf.symbols import FunctionSymbol, SymbolTable
from conftest import CORPUS, REPO, Builder, Corpus
from kernel_helpers import release_kit

FLAGS = ("-marm", "-pg", "-mapcs-frame", "-O2")


@pytest.fixture(scope="module")
def files(builder: Builder, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
          ) -> list[Path]:
    """A static program (two static functions of one name: a sympos), the
    corpus's objects (ARM and Thumb), an armhf Thumb-2 object and a
    UTF-8-named object."""
    objs = [builder.compile(CORPUS / f"{n}.c", FLAGS, name=f"{n}-split.o")
            for n in ("funcs", "other", "main")]
    assert corpus.asm is not None
    program = builder.link([*objs, corpus.asm], ["-static", *FLAGS[:3]], "prog-split")
    tmp = tmp_path_factory.mktemp("split")
    thumb2 = tmp / "thumb2.o"
    subprocess.run(["arm-linux-gnueabihf-gcc", "-mthumb", "-pg", "-O2", "-c",
                    str(CORPUS / "thumb2.c"), "-o", str(thumb2)], check=True)
    utf8 = tmp / "utf8.c"
    utf8.write_text("int caf\u00e9(int x) { return x + 1; }\n", encoding="utf-8")
    objects = [path for by_source in corpus.objects.values() for path in by_source.values()]
    return [program, thumb2, builder.compile(utf8, FLAGS, name="utf8-split.o"), *objects]


def _json(image: ElfImage, jobs: int) -> str:
    out = io.StringIO()
    write_scan_json(image, out, jobs=jobs)
    return out.getvalue()


def test_two_processes_write_what_one_writes(files: list[Path]) -> None:
    for path in files:
        one = ElfImage(path)
        want = scan(one).to_json_text()
        assert _json(one, 1) == want, path
        assert _json(ElfImage(path), 2) == want, path


@pytest.mark.slow
def test_a_vmlinux_on_two_processes_is_the_same_scan() -> None:
    """The case the split is for: 45,000 functions, sympos that are not 0,
    the __mcount_loc check over both parts' sites."""
    vmlinux = release_kit().vmlinux
    image = ElfImage(vmlinux)
    assert split.worth_splitting(image) or split.processors() < 2
    want = scan(ElfImage(vmlinux)).to_json_text()
    assert '"sympos":2' in want and '"mcount_loc":{' in want
    assert _json(image, 2) == want


def test_a_failed_helper_leaves_its_part_to_this_process(files: list[Path],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The helper dies before it sends anything (here: its scan raises):
    this process scans the helper's part itself, and the output is the
    same."""
    parent = os.getpid()

    def failing_in_the_helper(image: ElfImage, funcs: list[FunctionSymbol], start: int,
                              stop: int) -> tuple[ScanResult, list[int | None]]:
        if os.getpid() != parent:
            raise RuntimeError("the helper fails")
        return scan_part(image, funcs, start, stop)

    monkeypatch.setattr(split, "scan_part", failing_in_the_helper)
    program = files[0]
    assert _json(ElfImage(program), 2) == scan(ElfImage(program)).to_json_text()


def test_the_helper_decodes_only_its_functions_names(files: list[Path]) -> None:
    """What the helper reads of the symbol table -- the order of the
    functions, the records of its part with their sympos left for later,
    mcount found by name -- gives what the decoded table gives, and, in the
    ARM code of a linked image, decodes no other name (decoding them all is
    what the split saves)."""
    from armlp.analysis.mcount import SiteFinder

    for path in files:
        table = ElfImage(path).symbols
        index, shndx = table.function_layout(by_address=True)
        half = len(index) // 2
        part = table.function_records(index[half:], shndx[half:], None)
        image = ElfImage(path)
        finder = SiteFinder(image)
        if path == files[0]:
            # ARM code of a linked image, as a vmlinux (an object's sites are
            # its relocations' symbols, named; where a section holds Thumb
            # code, its mapping symbols are read by name)
            assert "names" not in image.symbols._cols.__dict__
            assert "names" not in table._cols.__dict__
        want = ElfImage(path).symbols.functions(by_address=True)
        assert [f._replace(sympos=0) for f in want[half:]] == part, path
        assert finder.targets == SiteFinder(ElfImage(path)).targets


@pytest.mark.parametrize("name", ["main", "dup_static", "__gnu_mcount_nc", "no_such_name",
                                  "$a", "$t", "caf\u00e9", "x\0y"])
def test_named_in_the_raw_tables_is_named_in_the_decoded_ones(files: list[Path],
                                                              name: str) -> None:
    """``named`` before any name is decoded searches the raw tables (the
    string, then each symbol pointing at it): the same symbols as after."""
    for path in files:
        raw = ElfImage(path).symbols
        got = raw.named(name)
        assert "names" not in raw._cols.__dict__ or not name.isascii() or "\0" in name
        decoded = ElfImage(path).symbols
        assert decoded._cols.names                      # decoded first
        assert got == decoded.named(name) == decoded.by_name.get(name, []), (path, name)


def test_an_odd_string_table_is_read_through_the_names(tmp_path: Path) -> None:
    """A string table whose last name has no NUL cannot be searched for a
    name and its NUL: named falls back to the decoded names."""
    from armlp.elf.symbols import _Columns, _RawTables

    strtab = b"\0main\0tail"
    words = [0, 0, 0, 0, 1, 0x100, 4, 0x12 | 1 << 16, 6, 0x200, 4, 0x12 | 1 << 16]
    raw = b"".join(w.to_bytes(4, "little") for w in words)
    data = strtab + raw
    view = memoryview(data)
    st_names = view[len(strtab):].cast("I")[0::4]
    cols = _Columns(view[len(strtab):].cast("I")[1::4], view[len(strtab):].cast("I")[2::4],
                    bytes(raw[12::16]), view[len(strtab):].cast("H")[7::8],
                    raw=_RawTables(data, view[:len(strtab)], 0, len(strtab), 3, st_names))
    assert cols.find_name("main") is None
    table = SymbolTable((), ["", ".text"], columns=cols)
    assert [s.index for s in table.named("tail")] == [2]
    assert [s.index for s in table.named("main")] == [1]


def test_the_command_takes_jobs(files: list[Path]) -> None:
    """``--jobs 1`` and ``--jobs 2`` print the same; anything else is a
    usage error."""
    cmd = [sys.executable, "-m", "armlp.cli.main", "scan", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    one, two = (subprocess.run([*cmd, "--jobs", j, str(files[0])], capture_output=True,
                               text=True, env=env, check=True).stdout for j in ("1", "2"))
    assert one == two and one.startswith("{")
    bad = subprocess.run([*cmd, "--jobs", "3", str(files[0])], capture_output=True, text=True,
                         env=env, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("armlp: error:") and \
        "invalid choice" in bad.stderr
