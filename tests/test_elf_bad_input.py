"""Bad input to ``armlp scan``: one line on stderr, exit code 2, no traceback.

Each bad file is a real one broken in a known way: truncated at every offset
of the ELF header and of the section header table, 64-bit, x86, big-endian,
stripped.  Most run through ``armlp.cli.main.main`` in this process; a few
through the installed ``armlp`` command in a subprocess.  A hypothesis fuzzer
mutates and truncates a real object and a real executable: reading and
scanning them either works or raises :class:`armlp.errors.ArmlpError`.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armlp.analysis.scan import scan
from armlp.elf.image import ElfImage
from armlp.errors import ArmlpError
from conftest import CORPUS, Builder, armlp, cross, run, scan_json

ARMLP = Path(sys.executable).with_name("armlp")


@pytest.fixture(scope="module")
def small_obj(builder: Builder) -> Path:
    return builder.compile(CORPUS / "other.c", ["-marm", "-pg", "-mapcs-frame", "-O2"],
                           name="other-bad.o")


@pytest.fixture(scope="module")
def small_exe(builder: Builder) -> Path:
    return builder.build("tiny", [cross("gcc"), "-O2", "-marm", "-pg", "-mapcs-frame",
                                  "-nostdlib", "-static", "-o", "{out}", CORPUS / "tiny.c"],
                         [CORPUS / "tiny.c"])


def assert_one_line_error(code: int, out: str, err: str, path: Path, *words: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line naming *path*."""
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    line = lines[0]
    assert line.startswith("armlp: error: "), line
    assert str(path) in line, line
    for w in words:
        assert w.lower() in line.lower(), (w, line)
    assert out == ""
    return line


def check_bad(path: Path, *words: str) -> str:
    res = armlp("scan", path)
    line = assert_one_line_error(res.code, res.out, res.err, path, *words)
    res_json = armlp("scan", "--json", path)   # the same error with --json
    assert_one_line_error(res_json.code, res_json.out, res_json.err, path, *words)
    return line


def test_sanity_good_inputs_scan(small_obj: Path, small_exe: Path) -> None:
    """The inputs broken below are good before they are broken."""
    for p in (small_obj, small_exe):
        res = armlp("scan", "--json", p)
        assert res.code == 0 and res.err == ""
        assert json.loads(res.out)["summary"]["patchable"] >= 2


def test_not_an_elf(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("this is not an ELF file\n" * 10)
    check_bad(p, "not an ELF")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    check_bad(p, "not an ELF")


def test_directory(tmp_path: Path) -> None:
    check_bad(tmp_path, "directory")


def test_missing_file(tmp_path: Path) -> None:
    check_bad(tmp_path / "no-such-file.o", "no such file")


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_truncated_every_offset(small_obj: Path, tmp_path: Path) -> None:
    data = small_obj.read_bytes()
    shoff, = struct.unpack_from("<I", data, 0x20)
    shnum, = struct.unpack_from("<H", data, 0x30)
    end = shoff + 40 * shnum
    assert end == len(data), "gcc puts the section header table last in a .o"
    cuts = [*range(0, 52), *range(shoff, end)]
    for n in cuts:
        p = _write(tmp_path, f"cut{n}.o", data[:n])
        res = armlp("scan", p)
        line = assert_one_line_error(res.code, res.out, res.err, p)
        want = "not an ELF" if n < 4 else "truncated"
        assert want.lower() in line.lower(), (n, line)
    assert len(cuts) > 52 + 40 * 8


def test_64bit_elf(builder: Builder, tmp_path: Path) -> None:
    host = shutil.which("gcc") or shutil.which("cc")
    assert host, "a host C compiler is needed to make a 64-bit ELF"
    obj = builder.compile(CORPUS / "other.c", ["-O1"], name="other-host64.o", compiler=host)
    assert obj.read_bytes()[4] == 2
    check_bad(obj, "64-bit")


def test_x86_elf_patched(small_obj: Path, tmp_path: Path) -> None:
    data = bytearray(small_obj.read_bytes())
    struct.pack_into("<H", data, 18, 3)        # e_machine = EM_386
    check_bad(_write(tmp_path, "x86.o", bytes(data)), "x86", "not ARM")


def test_x86_elf_compiled(tmp_path: Path) -> None:
    """A real 32-bit x86 object where the host compiler can make one."""
    host = shutil.which("gcc")
    assert host
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    obj = tmp_path / "x86.o"
    proc = subprocess.run([host, "-m32", "-c", "-o", obj, src], capture_output=True, check=False)
    if proc.returncode != 0:     # no multilib: test_x86_elf_patched still covers x86
        return
    check_bad(obj, "x86")


def test_big_endian_patched(small_obj: Path, tmp_path: Path) -> None:
    data = bytearray(small_obj.read_bytes())
    data[5] = 2                                 # EI_DATA = ELFDATA2MSB
    check_bad(_write(tmp_path, "be.o", bytes(data)), "big-endian")


def test_big_endian_compiled(builder: Builder) -> None:
    obj = builder.compile(CORPUS / "other.c", ["-mbig-endian", "-marm", "-pg", "-O2"],
                          name="other-be.o")
    assert obj.read_bytes()[5] == 2
    check_bad(obj, "big-endian")


def test_be8_flag(small_exe: Path, tmp_path: Path) -> None:
    data = bytearray(small_exe.read_bytes())
    flags, = struct.unpack_from("<I", data, 36)
    struct.pack_into("<I", data, 36, flags | 0x00800000)
    check_bad(_write(tmp_path, "be8", bytes(data)), "big-endian")


def test_stripped_executable(small_exe: Path, tmp_path: Path) -> None:
    out = tmp_path / "stripped"
    run([cross("strip"), "-o", out, small_exe])
    check_bad(out, "no symbol table")


def test_no_section_headers(small_exe: Path, tmp_path: Path) -> None:
    data = bytearray(small_exe.read_bytes())
    struct.pack_into("<I", data, 0x20, 0)           # e_shoff = 0
    struct.pack_into("<H", data, 0x30, 0)           # e_shnum = 0
    check_bad(_write(tmp_path, "noshdr", bytes(data)), "section header")


def test_function_option_on_bad_input(tmp_path: Path) -> None:
    p = _write(tmp_path, "junk", b"\x7fELF\x01\x01\x01" + b"\0" * 9)
    res = armlp("scan", "--function", "main", p)
    assert_one_line_error(res.code, res.out, res.err, p, "truncated")


@pytest.mark.parametrize("kind", ["missing", "truncated", "stripped"])
def test_subprocess(kind: str, small_exe: Path, tmp_path: Path) -> None:
    """The installed ``armlp`` command: same one line, exit 2, no traceback."""
    assert ARMLP.exists(), f"{ARMLP} not installed (pip install -e .)"
    if kind == "missing":
        p = tmp_path / "missing.o"
    elif kind == "truncated":
        p = _write(tmp_path, "trunc", small_exe.read_bytes()[:40])
    else:
        p = tmp_path / "stripped"
        run([cross("strip"), "-o", p, small_exe])
    for extra in ([], ["--json"]):
        proc = subprocess.run([ARMLP, "scan", *extra, p], capture_output=True, text=True,
                              check=False)
        assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, p)


def _limit_memory() -> None:
    import resource
    # room for Python and Unicorn's translation buffer, not for the zeros
    resource.setrlimit(resource.RLIMIT_AS, (2560 << 20, 2560 << 20))


def _as_nobits(exe: Path, section: str, size: int, out: Path) -> Path:
    """*exe* with *section*'s header saying NOBITS (zeros, not in the
    file) of *size* bytes, written to *out*."""
    data = bytearray(exe.read_bytes())
    sec = ElfImage(exe).section(section)
    assert sec is not None
    at = struct.unpack_from("<I", data, 0x20)[0] + 40 * sec.index
    struct.pack_into("<I", data, at + 4, 8)             # sh_type: SHT_NOBITS
    struct.pack_into("<I", data, at + 20, size)         # sh_size
    return _write(out.parent, out.name, bytes(data))


def _scan_limited(p: Path) -> dict[str, Any]:
    """``armlp scan --json`` of *p* under :func:`_limit_memory`; exit 0."""
    proc = subprocess.run([ARMLP, "scan", "--json", p], capture_output=True, text=True,
                          check=False, preexec_fn=_limit_memory)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_a_section_header_claiming_gigabytes_costs_nothing(small_exe: Path,
                                                            tmp_path: Path) -> None:
    """A ``.text`` whose header says NOBITS (zeros, not in the file) of
    3.75 GB: scan and verify answer as for code without calls, under a
    2.5 GiB address-space limit (they built the zeros before: 3 s and 2 GB
    resident for scan)."""
    p = _as_nobits(small_exe, ".text", 0xF0000000, tmp_path / "nobits-text")
    summary = _scan_limited(p)["summary"]
    assert summary["functions"] > 0
    assert summary["by_verdict"] == {"unpatchable/no_mcount_site": summary["functions"]}
    proc = subprocess.run([ARMLP, "verify", p], capture_output=True, text=True, check=False,
                          preexec_fn=_limit_memory)
    assert proc.returncode == 0 and "0 of 0 patchable" in proc.stdout, proc.stderr


def test_an_mcount_loc_table_claiming_gigabytes_costs_nothing(builder: Builder,
                                                               tmp_path: Path) -> None:
    """A kernel-style ``__mcount_loc`` section whose header says NOBITS of
    1.5 GB: the table is zeros, read as such without building them."""
    src = tmp_path / "loc.c"
    src.write_text((CORPUS / "tiny.c").read_text() +
                   '\n__attribute__((used, section("__mcount_loc"))) '
                   'static unsigned loc[4] = {1, 2, 3, 4};\n')
    exe = builder.build("tiny-loc", [cross("gcc"), "-O2", "-marm", "-pg", "-mapcs-frame",
                                     "-nostdlib", "-static", "-o", "{out}", src], [src])
    p = _as_nobits(exe, "__mcount_loc", 0x60000000, tmp_path / "nobits-loc")
    loc_json = _scan_limited(p)["mcount_loc"]
    assert loc_json["entries"] == 1 and loc_json["only_in_table"] == [0]


# --- fuzzing ---------------------------------------------------------------------

def _scan_bytes(name: str, data: bytes) -> None:
    """Read and scan *data*; every failure must be an ArmlpError."""
    try:
        img = ElfImage(name, data)
        result = scan(img)
        json.dumps(result.to_json())
        for r in result.functions[:3]:
            result.find(r.fn.name, r.fn.sympos or None)
    except ArmlpError:
        pass


def _mutations(size: int, hot: list[tuple[int, int]]) -> st.SearchStrategy[
        list[tuple[int, int]]]:
    """Byte writes, half of them in the ranges that matter (headers, tables)."""
    anywhere = st.integers(0, size - 1)
    hot_offsets = st.sampled_from(hot).flatmap(lambda r: st.integers(r[0], r[1] - 1))
    offsets = st.one_of(hot_offsets, anywhere)
    values = st.one_of(st.integers(0, 255), st.sampled_from([0, 0xFF, 0x7F, 0x80, 1, 2]))
    return st.lists(st.tuples(offsets, values), min_size=1, max_size=8)


def _hot_ranges(data: bytes) -> list[tuple[int, int]]:
    shoff, = struct.unpack_from("<I", data, 0x20)
    shnum, = struct.unpack_from("<H", data, 0x30)
    hot = [(0, 52), (shoff, shoff + 40 * shnum)]
    for i in range(shnum):
        sh = struct.unpack_from("<IIIIIIIIII", data, shoff + 40 * i)
        if sh[1] in (2, 3, 9, 7) and sh[5]:        # symtab, strtab, rel, note
            hot.append((sh[4], sh[4] + sh[5]))
    return hot


def _fuzz(base: bytes, name: str, muts: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(base)
    for off, val in muts:
        data[off] = val
    if cut is not None:
        del data[cut:]
    _scan_bytes(name, bytes(data))


FUZZ_SETTINGS = settings(max_examples=1600, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))


def test_fuzz_object(small_obj: Path) -> None:
    base = small_obj.read_bytes()
    hot = _hot_ranges(base)

    @FUZZ_SETTINGS
    @given(muts=_mutations(len(base), hot),
           cut=st.one_of(st.none(), st.integers(0, len(base))))
    def run_one(muts: list[tuple[int, int]], cut: int | None) -> None:
        _fuzz(base, str(small_obj), muts, cut)

    run_one()


def test_fuzz_executable(small_exe: Path) -> None:
    base = small_exe.read_bytes()
    hot = _hot_ranges(base)

    @FUZZ_SETTINGS
    @given(muts=_mutations(len(base), hot),
           cut=st.one_of(st.none(), st.integers(0, len(base))))
    def run_one(muts: list[tuple[int, int]], cut: int | None) -> None:
        _fuzz(base, str(small_exe), muts, cut)

    run_one()


def test_dwarf_of_a_large_file_is_not_read_and_the_scan_is_the_same(
        small_exe: Path, tmp_path: Path) -> None:
    """A file of 16 MiB or more is read without its ``.debug_*`` sections
    (a vmlinux is 90 % DWARF): those bytes are zeros in memory, every other
    byte is the file's, and the scan is the scan of the file without them."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"\xab" * (17 << 20))
    big = tmp_path / "big"
    subprocess.run([cross("objcopy"), "--add-section", f".debug_info={blob}", str(small_exe),
                    str(big)], check=True)
    raw = big.read_bytes()
    image = ElfImage(big)
    (dwarf,) = [s for s in image.sections if s.name == ".debug_info"]
    assert dwarf.size == 17 << 20
    data = image.data
    assert len(data) == len(raw)
    assert data[dwarf.offset:dwarf.offset + dwarf.size].count(0) == dwarf.size
    assert data[:dwarf.offset] == raw[:dwarf.offset]
    assert data[dwarf.offset + dwarf.size:] == raw[dwarf.offset + dwarf.size:]
    small = scan_json(small_exe)
    del small["file"]
    large = scan_json(big)
    del large["file"]
    assert large == small
