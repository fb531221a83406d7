"""The Debian ARM cross toolchain (``arm-linux-gnueabi-*``), as armlp uses it.

One place knows the tool names and the flags that make a function live
patchable, so tests, examples, the runtime build and ``armlp cflags`` agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from armlp.errors import ArmlpError

PREFIX = os.environ.get("ARMLP_CROSS_PREFIX", "arm-linux-gnueabi-")

#: Flags that give every function an APCS frame and an mcount site.
PATCHABLE_CFLAGS = ("-marm", "-pg", "-mapcs-frame")
#: The same for Thumb-2 code (Debian armhf's default instruction set): an
#: mcount site in every function, exception tables for the stack walk.
PATCHABLE_THUMB_CFLAGS = ("-mthumb", "-pg", "-funwind-tables")


#: Flags for a patch module: patchable like the program, position dependent
#: (the loader does not build GOTs), no common symbols, unmerged strings.
_PATCH_ONLY = ("-O2", "-fno-pie", "-fno-pic", "-fno-common", "-fno-merge-constants",
               "-ffreestanding", "-fno-stack-protector")
PATCH_CFLAGS = (*PATCHABLE_CFLAGS, *_PATCH_ONLY)
INCLUDE_DIR = Path(__file__).parent / "include"


def patch_cflags(target_build_id: str | None = None, *, thumb: bool = False) -> list[str]:
    """The flags to compile a live patch with (``armlp cflags``; *thumb*:
    its code in Thumb-2, ARM's otherwise: either patches either kind)."""
    flags = [*(PATCHABLE_THUMB_CFLAGS if thumb else PATCHABLE_CFLAGS), *_PATCH_ONLY,
             f"-I{INCLUDE_DIR}"]
    if target_build_id:
        flags.append(f"-DARMLP_TARGET_BUILD_ID={target_build_id}")
    return flags


class ToolchainError(ArmlpError):
    """The cross toolchain is missing or a build step failed."""


def tool(name: str) -> str:
    """Absolute path of cross tool *name* (``gcc``, ``ld``, ``objdump`` ...)."""
    path = shutil.which(PREFIX + name)
    if path is None:
        raise ToolchainError(f"{PREFIX}{name} not found: install gcc-arm-linux-gnueabi and "
                             f"binutils-arm-linux-gnueabi (./run.sh setup does)")
    return path


def run_tool(name: str, args: Sequence[str | Path], *, cwd: Path | None = None) -> str:
    """Run a cross tool; raise ToolchainError with its stderr on failure."""
    cmd = [tool(name), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        # the compiler's first error says what is wrong; its last line is often a caret
        detail = next((ln.strip() for ln in msg if "error" in ln),
                      msg[-1] if msg else f"exit {proc.returncode}")
        raise ToolchainError(f"{PREFIX}{name} failed: {detail}")
    return proc.stdout


def compile_object(source: Path, output: Path, cflags: Sequence[str] = ()) -> Path:
    """Compile one C or assembly file to a relocatable object."""
    run_tool("gcc", ["-c", *cflags, "-o", output, source])
    return output
