"""Seeded fuzzing of armlp's inputs in CI (issue 9, item 10): a few hundred
mutants of a patch object and of a program through the commands that read
them.  Every mutant must end in exit 0 or 1, or 2 with one printable
``armlp: error:`` line that is not an internal error, within the time bound.
``benchmarks/fuzz.py`` runs the same harness longer and prints the counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from armlp.elf.image import ElfImage
from armlp.program_build import build_program
from armlp.toolchain import patch_cflags, run_tool

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from fuzz import fuzz, judge  # noqa: E402


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fuzz")
    prog = build_program([REPO / "examples" / "programs" / "service.c"], d / "service")
    fix = d / "fix.o"
    run_tool("gcc", [*patch_cflags(ElfImage(prog).build_id), "-c",
                     REPO / "examples" / "patches" / "fix_price.c", "-o", fix])
    return prog, fix


def test_the_judge_tells_findings_apart() -> None:
    assert judge(2, "armlp: error: x.o: not an ELF file\n", 0.1) == "ok-2"
    assert judge("traceback", "KeyError: 3", 0.1) == "traceback"
    assert judge(2, "armlp: error: internal error (KeyError: 3); ...\n", 0.1) == "internal-error"
    assert judge(2, "armlp: error: bad name '\x1b[2J'\n", 0.1) == "raw-bytes"
    assert judge(0, "", 60.0) == "hang"


@pytest.mark.slow
@pytest.mark.parametrize("kind,n,seed", [("patch", 200, 1), ("scan", 300, 2),
                                          ("verify", 150, 3), ("trace", 40, 4)])
def test_mutants_give_one_line_or_work(service: tuple[Path, Path], kind: str, n: int,
                                       seed: int) -> None:
    prog, fix = service
    original, extra = {"patch": (fix, [str(prog)]), "scan": (prog, ["--json"]),
                       "verify": (prog, ["--trials", "2"]), "trace": (prog, [])}[kind]
    out = fuzz(kind, original, n, seed, extra)
    assert out.failures == []
    assert sum(out.counts.values()) == n
    assert out.counts["ok-2"] > n // 10        # the mutants do reach the checks
