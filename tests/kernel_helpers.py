"""Shared by the kernel tests: the release's kit, patch modules built once per
run (shared by the xdist workers), and a booted guest."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from armlp.kernel.build import CORE_SOURCES, MODULE_DIR
from armlp.kernel.kit import KernelKit, kit
from conftest import REPO, Builder

os.environ.setdefault("ARMLP_KERNEL_CACHE", str(REPO / "build" / "kernel"))

SAMPLE = REPO / "examples" / "kernel" / "livepatch-sample.c"
PATCHES = Path(__file__).parent / "kernel"
SAMPLE_TEXT = "this has been live patched"
LIVEPATCH = "/sys/kernel/livepatch"


def release_kit() -> KernelKit:
    """The kit of the release the tests boot (fetched by ./run.sh setup)."""
    return kit()


def build_patch(builder: Builder, source: Path) -> Path:
    """``armlp kernel build SOURCE --out DIR``, once per run: DIR."""
    inputs = [source, *(MODULE_DIR / f for f in CORE_SOURCES),
              REPO / "src" / "armlp" / "kernel" / "build.py",
              REPO / "src" / "armlp" / "include" / "armlp" / "livepatch.h"]
    return builder.build(source.stem, [sys.executable, "-m", "armlp.cli.main", "kernel",
                                       "build", source, "--out", "{out}"], inputs)
