"""armlp's stack walker against GDB's backtrace on real programs (issue 11,
"reliable stacks"): a program running under plain qemu-arm is made to dump
core (SIGABRT: qemu writes the guest's core with every thread's registers),
then every thread the walker calls reliable must have, frame by frame, the
pcs ``gdb-multiarch`` prints for it, as far as GDB goes (GDB stops at
``main`` where the walker goes on to ``_start``).

- ``consistency.c``: three threads stopped in libc's ``nanosleep`` (static
  glibc, through its ``.ARM.exidx`` rows and the system call wrapper),
  inside and outside an APCS-framed caller;
- zlib's ``zstream`` caught mid-compression: APCS frames of ``-pg`` code,
  the innermost one at an arbitrary instruction.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from armlp.analysis.unwind import CodeMap, StackTrace, walk_stack
from armlp.elf.image import ElfImage
from armlp.machine.base import Regs
from armlp.program_build import build_program
from zlib_build import ZLIB_CFLAGS, ZLIB_DIR, zlib_sources

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("gdb-multiarch") is None,
                                 reason="gdb-multiarch is not installed (./run.sh setup does)")]

TESTS = Path(__file__).resolve().parent
#: struct elf_prstatus of 32-bit ARM: pr_pid at 24, pr_reg (18 words) at 72.
PR_PID, PR_REG = 24, 72


class Core:
    """A guest core file: each thread's registers, memory by address (the
    program's read-only text, which qemu leaves out, from the program)."""

    def __init__(self, path: Path, program: ElfImage) -> None:
        self.program = program
        self.threads: dict[int, Regs] = {}
        self.segments: list[tuple[int, bytes]] = []
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                    self.segments.append((seg["p_vaddr"], seg.data()))
                elif seg["p_type"] == "PT_NOTE":
                    for note in seg.iter_notes():  # type: ignore[attr-defined]
                        if note["n_type"] == "NT_PRSTATUS":
                            desc = note["n_descdata"]
                            tid, = struct.unpack_from("<I", desc, PR_PID)
                            regs = struct.unpack_from("<17I", desc, PR_REG)
                            self.threads[tid] = Regs.from_list(regs)

    def read_word(self, address: int) -> int:
        for start, data in self.segments:
            if start <= address and address + 4 <= start + len(data):
                return int(struct.unpack_from("<I", data, address - start)[0])
        return int(struct.unpack("<I", self.program.read(address, 4))[0])


def dump_core(program: Path, args: list[str], work: Path, after: float) -> Path | None:
    """Run *program* under qemu-arm in *work*, SIGABRT it after *after* s:
    the guest's core, ``qemu_<name>_<date>_<pid>.core`` (None if the program
    had ended by then)."""
    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    proc = subprocess.Popen(["qemu-arm", str(program), *args], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=unlimited)
    time.sleep(after)
    if proc.poll() is not None:
        return None
    proc.send_signal(6)
    proc.wait(30)
    cores = sorted(work.glob(f"qemu_{program.name}_*_{proc.pid}.core"))
    assert cores, f"qemu wrote no core for {program.name} in {work}"
    for extra in work.glob("core*"):            # qemu's own, from its abort
        extra.unlink()
    return cores[0]


def gdb_backtraces(program: Path, core: Path) -> dict[int, list[int]]:
    """Each thread's frame pcs as ``gdb-multiarch`` prints them."""
    out = subprocess.run(["gdb-multiarch", "-nx", "-batch", "-ex", "set pagination off",
                          "-ex", "thread apply all bt", str(program), str(core)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    traces: dict[int, list[int]] = {}
    current: list[int] | None = None
    for line in out.splitlines():
        m = re.match(r"Thread \d+ \(.*LWP (\d+)\)\)?:", line)
        if m:
            current = traces.setdefault(int(m[1]), [])
            continue
        m = re.match(r"#\d+\s+0x([0-9a-f]+) in (\S+)", line)
        if m and current is not None and m[2] != "??":
            current.append(int(m[1], 16))
    return traces


def compare(program: Path, core: Path) -> list[StackTrace]:
    """Walk every thread of *core*; assert each reliable walk matches GDB's
    frames as far as both go.  Returns the walks."""
    image = ElfImage(program)
    dump = Core(core, image)
    code = CodeMap.of_image(image)
    gdb = gdb_backtraces(program, core)
    assert set(gdb) == set(dump.threads), (gdb, dump.threads)
    walks = []
    for tid, regs in dump.threads.items():
        trace = walk_stack(code, regs, dump.read_word)
        walks.append(trace)
        if not trace.reliable:
            continue
        ours = [f.pc for f in trace.frames]
        theirs = gdb[tid]
        n = min(len(ours), len(theirs))
        assert n >= 2 and ours[:n] == theirs[:n], (
            f"thread {tid}: armlp {[str(f) for f in trace.frames]} "
            f"{[hex(p) for p in ours]}, gdb {[hex(p) for p in theirs]}")
    return walks


def test_threads_stopped_in_libc(tmp_path: Path) -> None:
    prog = build_program([TESTS / "programs" / "consistency.c"], tmp_path / "consistency",
                         freestanding=False, ldflags=["-pthread"])
    names: set[str] = set()
    for i, after in enumerate((1.0, 1.33)):
        work = tmp_path / f"run{i}"
        work.mkdir()
        core = dump_core(prog, ["30"], work, after)
        assert core is not None, "consistency.c ended early"
        walks = compare(prog, core)
        assert len(walks) == 3 and all(w.reliable for w in walks), \
            [(w.reason, [str(f) for f in w.frames]) for w in walks]
        names |= {f.function for w in walks for f in w.frames}
    assert {"__clock_nanosleep_time64", "main", "worker", "start_thread"} <= names, names


def test_zlib_mid_compression(tmp_path: Path) -> None:
    sources = [TESTS / "programs" / "zstream.c", *zlib_sources()]
    prog = build_program(sources, tmp_path / "zstream", freestanding=False,
                         cflags=[f"-I{ZLIB_DIR}", *ZLIB_CFLAGS, "-fno-pie", "-fno-common"])
    data = tmp_path / "in.bin"
    data.write_bytes(b"".join(b"%d lines of text, some repeated %d\n" % (i, i % 97)
                              for i in range(400_000)) + os.urandom(1 << 20))
    reliable = 0
    # From early on: an idle fast machine compresses it all in under a
    # second, and a sample after the end gives no core (a run whose samples
    # started at 0.5 s found one reliable walk).
    for i, after in enumerate((0.2, 0.35, 0.5, 0.65, 0.8, 1.1, 1.4, 1.7)):
        work = tmp_path / f"run{i}"
        work.mkdir()
        core = dump_core(prog, [str(data), str(work / "out.z"), "1000"], work, after)
        if core is not None:            # else it had finished: a fast machine
            reliable += sum(w.reliable for w in compare(prog, core))
        if reliable >= 3:
            break
    assert reliable >= 2, "too few reliable walks to compare"
