"""zlib as one freestanding, patchable ARM program (issue 4's real-code proof).

Every library file of zlib (Debian's source package, extracted by
``./run.sh setup`` into ``build/zlib``) -- gz* included, their POSIX calls
served by ``examples/zlib/zlib_stubs.c`` -- compiled with ``-marm -pg
-mapcs-frame -O2`` (plus *extra* flags) by :func:`armlp.program_build.build_program`
together with ``examples/zlib/zlib_main.c``, which round-trips 64 KiB of text
through compress2/uncompress, streaming deflate/inflate, inflateBack and the
gz file functions.  A missing source tree fails the test (never a skip).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from armlp.program_build import build_program

ROOT = Path(__file__).resolve().parent.parent
ZLIB_DIR = ROOT / "build" / "zlib"
EXAMPLE = ROOT / "examples" / "zlib"

#: zlib's library files (the Makefile's OBJZ + OBJG).
ZLIB_FILES = ("adler32", "compress", "crc32", "deflate", "gzclose", "gzlib", "gzread",
              "gzwrite", "infback", "inffast", "inflate", "inftrees", "trees", "uncompr",
              "zutil")

#: HAVE_UNISTD_H: zconf.h declares read/write/lseek/close; HAVE_STDARG_H:
#: gzprintf uses vsnprintf.
ZLIB_CFLAGS = ("-DHAVE_UNISTD_H", "-DHAVE_STDARG_H")


def zlib_input(path: Path, size: int = 8 << 20) -> bytes:
    """*size* bytes of deterministic, compressible text written to *path*
    (words of a 4,000-word vocabulary): deflate finds matches in it."""
    rng = random.Random(1234)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(4000)]
    data = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size]
    path.write_bytes(data)
    return data


def zlib_sources() -> list[Path]:
    if not (ZLIB_DIR / "zlib.h").is_file():
        pytest.fail(f"zlib sources missing in {ZLIB_DIR}: run ./run.sh setup (fetches the "
                    f"Debian source package zlib)")
    return [ZLIB_DIR / f"{name}.c" for name in ZLIB_FILES]


def build_zlib_program(extra: Sequence[str] = ()) -> Path:
    """The zlib program, built (or taken from armlp's build cache)."""
    sources = [EXAMPLE / "zlib_main.c", EXAMPLE / "zlib_stubs.c", *zlib_sources()]
    return build_program(sources, cflags=[f"-I{ZLIB_DIR}", *ZLIB_CFLAGS, *extra])
