"""Real world: a streaming compressor built from Debian's zlib source, live
patched under ``armlp run`` (qemu-arm) in the middle of its stream."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from armlp.build import build_program
from armlp.elf.image import ElfImage
from armlp.toolchain import patch_cflags, tool

HERE = Path(__file__).resolve().parent
ZLIB = HERE.parent / "build" / "zlib"
LIBRARY = ("adler32", "compress", "crc32", "deflate", "infback", "inffast", "inflate",
           "inftrees", "trees", "uncompr", "zutil")
ZFLAGS = [f"-I{ZLIB}", "-DHAVE_UNISTD_H", "-DHAVE_STDARG_H"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (ZLIB / "zlib.h").exists():
        pytest.fail(f"{ZLIB} is missing: ./run.sh setup fetches Debian's zlib source")
    tmp = tmp_path_factory.mktemp("zlib")
    prog = build_program([HERE / "programs" / "zstream.c", *(ZLIB / f"{n}.c" for n in LIBRARY)],
                         tmp / "zstream", freestanding=False, cflags=ZFLAGS)
    flags = patch_cflags(ElfImage(prog).build_id)
    out = {"prog": prog}
    for name in ("zlib_same", "zlib_literals"):
        obj = tmp / f"{name}.o"
        subprocess.run([tool("gcc"), *flags, *ZFLAGS, "-c", str(HERE / "patches" / f"{name}.c"),
                        "-o", str(obj)], check=True)
        out[name] = obj
    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(3000)]
    data = b" ".join(rng.choice(words) for _ in range(900_000))     # ~5 MiB of text
    (tmp / "input").write_bytes(data)
    out["input"] = tmp / "input"
    baseline = tmp / "baseline.z"
    subprocess.run(["qemu-arm", str(prog), str(out["input"]), str(baseline)], check=True,
                   capture_output=True)
    out["baseline"] = baseline
    return out


def armlp_run(work: dict[str, Path], patch: Path, output: Path, tmp_path: Path) -> str:
    env = dict(os.environ, ARMLP_RUNTIME_DIR=str(tmp_path / "rt"))
    res = subprocess.run([sys.executable, "-m", "armlp.cli.main", "run", str(work["prog"]),
                          str(work["input"]), str(output), "--patch", f"{patch}@0.15"],
                         capture_output=True, text=True, env=env, check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    return res.stderr


@pytest.mark.slow
def test_copies_from_the_unchanged_source_keep_the_output_byte_identical(
        work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "same.z"
    err = armlp_run(work, work["zlib_same"], out, tmp_path)
    assert "patch zlib-same enabled" in err
    for fn in ("longest_match", "fill_window", "deflate_slow", "adler32_z", "adler32"):
        assert f"{fn} -> {fn}" in err
    data = out.read_bytes()
    assert data == work["baseline"].read_bytes()
    assert zlib.decompress(data) == work["input"].read_bytes()


@pytest.mark.slow
def test_a_visible_change_shows_from_the_patch_point_on(work: dict[str, Path],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "literals.z"
    err = armlp_run(work, work["zlib_literals"], out, tmp_path)
    assert "patch zlib-literals enabled" in err
    data, base = out.read_bytes(), work["baseline"].read_bytes()
    common = next((i for i, (a, b) in enumerate(zip(data, base, strict=False)) if a != b),
                  min(len(data), len(base)))
    # Identical up to the patch point (which came after a good part of the
    # stream), different from there on: literals only, so larger.
    assert 0.02 * len(base) < common < len(base)
    assert len(data) > len(base) * 1.2
    assert zlib.decompress(data) == work["input"].read_bytes()
