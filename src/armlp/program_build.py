"""Building small ARM programs from C with the cross toolchain, cached.

Tests, examples and the demo build their target programs at run time.
:func:`build_program` compiles the program's own files with the patchable
flags (``-marm -pg -mapcs-frame -O2``), links them with armlp's freestanding
runtime (``src/armlp/freestanding``: ``_start``, ``__gnu_mcount_nc`` and a
tiny C library, all without mcount sites) and ``libgcc``, and caches the
result by content: the same sources, flags and runtime give the same file
without running the compiler again; any change rebuilds.

The cache key covers the bytes of every source, of every ``*.h`` next to a
source, of the freestanding runtime, the flags and the compiler's version.
The cache directory is ``$ARMLP_CACHE_DIR`` or ``$XDG_CACHE_HOME/armlp``
(default ``~/.cache/armlp``); builds are atomic and guarded by a file lock,
so parallel test workers share them safely.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from armlp.toolchain import PATCHABLE_CFLAGS, ToolchainError, tool

#: Directory of the freestanding runtime (start.S, fs.c, armlp_fs.h).
FREESTANDING_DIR = Path(__file__).resolve().parent / "freestanding"

#: Default flags for a program's own C files: every function patchable.
PROGRAM_CFLAGS: tuple[str, ...] = (*PATCHABLE_CFLAGS, "-O2")

#: Flags added to every compile of a freestanding program.
FREESTANDING_CFLAGS: tuple[str, ...] = ("-ffreestanding", "-fno-stack-protector",
                                        "-fno-pie", "-fno-pic")

#: Flags of the runtime's own files: ARM code, no -pg, so no mcount sites.
RUNTIME_CFLAGS: tuple[str, ...] = ("-marm", "-O2", "-ffreestanding", "-fno-builtin",
                                   "-fno-stack-protector", "-fno-pie", "-fno-pic")

RUNTIME_SOURCES: tuple[str, ...] = ("start.S", "fs.c")

_KEY_VERSION = b"armlp-build-1"


def cache_root() -> Path:
    """armlp's cache: $ARMLP_CACHE_DIR, else $XDG_CACHE_HOME/armlp, else
    ~/.cache/armlp (programs in build/, the runtime in runtime-<hash>/)."""
    env = os.environ.get("ARMLP_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "armlp"


def cache_dir() -> Path:
    """Root of armlp's program build cache (created on demand)."""
    return cache_root() / "build"


@functools.cache
def _compiler_id() -> bytes:
    gcc = tool("gcc")
    proc = subprocess.run([gcc, "--version"], capture_output=True, check=False)
    return gcc.encode() + b"\0" + proc.stdout


def _key(sources: Sequence[Path], flags: Sequence[Sequence[str]], freestanding: bool) -> str:
    h = hashlib.sha256(_KEY_VERSION)
    h.update(_compiler_id())
    h.update(b"freestanding" if freestanding else b"hosted")
    for group in flags:
        h.update(b"\1" + "\0".join(group).encode())
    extra: set[Path] = set()
    for src in sources:
        h.update(b"\2" + src.name.encode() + b"\0" + src.read_bytes())
        extra.update(src.parent.glob("*.h"))
    if freestanding:
        extra.update(FREESTANDING_DIR / n for n in (*RUNTIME_SOURCES, "armlp_fs.h"))
    for path in sorted(extra):
        h.update(b"\3" + str(path).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:24]


def build_program(sources: Sequence[str | Path], output: str | Path | None = None, *,
                  cflags: Sequence[str] = (), base_cflags: Sequence[str] = PROGRAM_CFLAGS,
                  ldflags: Sequence[str] = (), freestanding: bool = True) -> Path:
    """Compile and link *sources* (C or assembly) into a static ARM executable.

    The program's files get *base_cflags* (default ``-marm -pg -mapcs-frame
    -O2``) then *cflags*, so ``cflags=["-O0"]`` overrides the level.  With
    *freestanding* (the default) the link is ``-nostdlib -static`` with the
    freestanding runtime and ``-lgcc``; ``#include "armlp_fs.h"`` works.
    Without it the program links statically against glibc (whose gprof
    support provides ``__gnu_mcount_nc``).

    Returns *output* if given (the cached file is copied there), else the
    path of the cached executable.  Raises ToolchainError when a step fails.
    """
    srcs = [Path(s).resolve() for s in sources]
    if not srcs:
        raise ToolchainError("build_program: no sources")
    for s in srcs:
        if not s.is_file():
            raise ToolchainError(f"build_program: source {s} not found")
    prog_flags = [*base_cflags, *(FREESTANDING_CFLAGS if freestanding else ()), *cflags]
    if freestanding:
        prog_flags.append(f"-I{FREESTANDING_DIR}")
    key = _key(srcs, [prog_flags, list(ldflags), list(RUNTIME_CFLAGS)], freestanding)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = srcs[0].stem
    cached = root / f"{key}-{name}"
    if not cached.exists():
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not cached.exists():
                _build(srcs, prog_flags, ldflags, freestanding, root, cached)
    if output is None:
        return cached
    out = Path(output)
    if not out.exists() or out.read_bytes() != cached.read_bytes():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.copyfile(cached, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    return out


def _build(srcs: Sequence[Path], prog_flags: Sequence[str], ldflags: Sequence[str],
           freestanding: bool, root: Path, cached: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix="tmp-") as tmpdir:
        work = Path(tmpdir)
        objects: list[Path] = []
        for i, src in enumerate(srcs):
            obj = work / f"{i}-{src.stem}.o"
            _gcc(["-c", *prog_flags, "-o", obj, src])
            objects.append(obj)
        if freestanding:
            for i, rname in enumerate(RUNTIME_SOURCES):
                obj = work / f"rt{i}-{Path(rname).stem}.o"
                _gcc(["-c", *RUNTIME_CFLAGS, "-o", obj, FREESTANDING_DIR / rname])
                objects.append(obj)
            link: list[str | Path] = ["-nostdlib", "-static", "-Wl,--build-id=sha1", *ldflags, "-o",
                    work / "a.out", *objects, "-lgcc"]
        else:
            link = ["-static", *ldflags, "-o", work / "a.out", *objects]
        _gcc(link)
        os.chmod(work / "a.out", 0o755)
        os.replace(work / "a.out", cached)


def _gcc(args: Sequence[str | Path]) -> None:
    """Run the cross gcc; on failure raise ToolchainError with its diagnostics."""
    cmd = [tool("gcc"), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln or "undefined" in ln] or lines
        detail = "; ".join(errors[:4]) or f"exit {proc.returncode}"
        raise ToolchainError(f"building {Path(cmd[-1]).name}: {detail}")
