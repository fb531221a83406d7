"""Building the in-target runtime with the cross toolchain, cached.

The runtime is compiled once per content hash of its sources and flags into
the user's cache directory; a change to any source file rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from armlp.program_build import cache_root
from armlp.runtime.layout import c_asserts
from armlp.toolchain import INCLUDE_DIR, PREFIX, compile_object

SOURCES = ("entry.S", "linker.S", "ftrace.c", "livepatch.c", "transition.c", "shadow.c",
           "state.c")
HEADERS = ("armlp_rt.h",)
#: armlp's scratch page for targets behind a GDB stub (armlp.machine.scratch):
#: built here, but placed by the machine, not loaded with the runtime.
SCRATCH_SOURCE = "scratch.S"
#: No -pg: the runtime must never call the tracer it implements.  armv5te is
#: the armel baseline, so the runtime runs on every core armlp targets.
CFLAGS = ("-marm", "-march=armv5te", "-O2", "-ffreestanding", "-fno-pic",
          "-fno-stack-protector", "-fno-common", "-fno-builtin", "-Wall", "-Werror")

SOURCE_DIR = Path(__file__).parent


def _digest() -> str:
    h = hashlib.sha256()
    h.update(PREFIX.encode())
    h.update(" ".join(CFLAGS).encode())
    for name in (*HEADERS, *SOURCES, SCRATCH_SOURCE):
        path = SOURCE_DIR / name
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes())
    h.update((INCLUDE_DIR / "armlp" / "livepatch.h").read_bytes())
    h.update(c_asserts().encode())
    return h.hexdigest()[:16]


def runtime_objects() -> list[Path]:
    """The runtime's object files, built if missing or out of date."""
    return [o for o in _objects() if o.stem != Path(SCRATCH_SOURCE).stem]


def scratch_object() -> Path:
    """The scratch page's object file (see :mod:`armlp.machine.scratch`)."""
    return next(o for o in _objects() if o.stem == Path(SCRATCH_SOURCE).stem)


def _objects() -> list[Path]:
    """Every object built from this directory, built if missing or out of date."""
    out = cache_root() / f"runtime-{_digest()}"
    sources = [*SOURCES, SCRATCH_SOURCE]
    objs = [out / (Path(s).stem + ".o") for s in sources]
    if all(o.exists() for o in objs):
        return objs
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmpdir = Path(tmp)
        # Ordering: the layouts are checked before anything is built.
        check = tmpdir / "layout_check.c"
        check.write_text(c_asserts())
        compile_object(check, tmpdir / "layout_check.o",
                       [*CFLAGS, f"-I{SOURCE_DIR}", f"-I{INCLUDE_DIR}"])
        (tmpdir / "layout_check.o").unlink()
        for src in sources:
            path = SOURCE_DIR / src
            compile_object(path, tmpdir / (path.stem + ".o"),
                           [*CFLAGS, f"-I{SOURCE_DIR}", f"-I{INCLUDE_DIR}"])
        try:
            os.replace(tmpdir, out)
        except OSError:
            if not out.exists():
                raise
        tmpdir.mkdir(exist_ok=True)  # let TemporaryDirectory clean up
    return objs
