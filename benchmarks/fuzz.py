"""Fuzzing armlp's inputs: mutated patch objects and programs.

Each mutant is a real file (the original with 1-8 random bytes or words
replaced, seeded) given to a real command in this process: a patch to
``armlp run --machine emu`` (loading and checking it; the program runs a
bounded number of instructions), a program to ``scan``, ``verify`` and
``trace``.  A mutant passes when armlp exits 0 or 1, or 2 with one printable
``armlp: error:`` line that is not an internal error, within the time bound.
Prints the counts per outcome and writes benchmarks/results/fuzz.json.

    .venv/bin/python benchmarks/fuzz.py [--mutants 3000] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from armlp.cli.main import main as armlp_main

#: A mutant that takes longer than this is a hang.
TIME_BOUND = 20.0


def mutate(data: bytes, rng: random.Random) -> bytes:
    """*data* with 1-8 bytes or aligned words replaced (random, all-ones, or a
    random 32-bit value)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        k = rng.random()
        if k < 0.6:
            b[i] = rng.randrange(256)
        else:
            i &= ~3
            word = 0xFFFFFFFF if k < 0.7 else rng.randrange(1 << 32)
            b[i:i + 4] = word.to_bytes(4, "little")[:len(b) - i]
    return bytes(b)


@dataclass
class Outcome:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet_fd1() -> Iterator[None]:
    """The emulated program writes its output to fd 1 itself: hide it."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _run(args: Sequence[str]) -> tuple[int | str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with _quiet_fd1(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = armlp_main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        except BaseException as exc:  # the finding itself
            return "traceback", f"{type(exc).__name__}: {exc}", time.monotonic() - t0
    return code, err.getvalue(), time.monotonic() - t0


def judge(code: int | str, err: str, seconds: float) -> str:
    """The outcome of one mutant: ok-0, ok-1, ok-2, or what went wrong."""
    if code == "traceback":
        return "traceback"
    if seconds > TIME_BOUND:
        return "hang"
    if code in (0, 1):
        return f"ok-{code}"
    last = err.rstrip("\n").split("\n")[-1]
    if code != 2 or not last.startswith("armlp: error: "):
        return "bad-exit"
    if "internal error" in last:
        return "internal-error"
    if not last.isprintable():
        return "raw-bytes"
    return "ok-2"


def fuzz(kind: str, original: Path, n: int, seed: int, extra: Sequence[str] = ()) -> Outcome:
    """*n* mutants of *original* through command *kind* (``patch`` means
    ``run --machine emu PROGRAM --patch MUTANT``, PROGRAM in *extra*)."""
    rng = random.Random(seed)
    data = original.read_bytes()
    result = Outcome()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            path = Path(tmp) / f"mutant-{i}"
            path.write_bytes(mutate(data, rng))
            if kind == "patch":
                args = ["run", "--machine", "emu", "--max-instructions", "2000000", *extra,
                        "--patch", str(path)]
            elif kind == "trace":
                args = ["trace", "--max-instructions", "2000000", str(path)]
            else:
                args = [kind, *extra, str(path)]
            code, err, seconds = _run(args)
            verdict = judge(code, err, seconds)
            result.counts[verdict] += 1
            if not verdict.startswith("ok"):
                result.failures.append(f"{kind} mutant {i} (seed {seed}): {verdict}: "
                                       f"{err.strip()[-200:]}")
    return result


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from armlp.elf.image import ElfImage
    from armlp.program_build import build_program
    from armlp.toolchain import patch_cflags, run_tool
    from results_io import write_results

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutants", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        prog = build_program([repo / "examples" / "programs" / "service.c"],
                             Path(tmp) / "service")
        fix = Path(tmp) / "fix.o"
        run_tool("gcc", [*patch_cflags(ElfImage(prog).build_id), "-c",
                         repo / "examples" / "patches" / "fix_price.c", "-o", fix])
        figures: dict[str, object] = {}
        for kind, original, extra, n in (("patch", fix, [str(prog)], opts.mutants),
                                         ("scan", prog, ["--json"], opts.mutants),
                                         ("verify", prog, ["--trials", "2"], opts.mutants // 2),
                                         ("trace", prog, [], opts.mutants // 10)):
            t0 = time.monotonic()
            out = fuzz(kind, original, n, opts.seed, extra)
            took = time.monotonic() - t0
            print(f"{kind:7} {n:5} mutants in {took:6.1f} s: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(out.counts.items())))
            for f in out.failures[:5]:
                print(f"    {f}")
            figures[kind] = {"mutants": n, "seconds": round(took, 1), **out.counts}
    write_results("fuzz", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
