"""Shared test helpers: building ARM programs with the cross toolchain.

Everything is compiled at test time from the sources in ``tests/corpus``.
Builds are cached by the hash of their command line and inputs in a
directory shared by the pytest-xdist workers of one run (guarded by a file
lock), so each object is compiled once per run however many workers ask.

A missing toolchain is a failure, never a skip: the suite exists to check
real compiler output.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from armlp.cli.main import main as armlp_main
from live_helpers import Built, Live, build_live

CORPUS = Path(__file__).parent / "corpus"
CROSS = "arm-linux-gnueabi-"
REPO = Path(__file__).resolve().parent.parent


def cross(tool: str) -> str:
    """Absolute path of a cross tool; fails the test when it is missing."""
    path = shutil.which(CROSS + tool)
    if path is None:
        pytest.fail(f"{CROSS}{tool} not found: install gcc-arm-linux-gnueabi and "
                    f"binutils-arm-linux-gnueabi (the suite needs the real toolchain)")
    return path


def run(cmd: Sequence[str | Path], cwd: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                    f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class Builder:
    """Content-addressed build cache shared by the workers of one test run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _key(self, parts: Sequence[str], inputs: Sequence[Path]) -> str:
        h = hashlib.sha256()
        for p in parts:
            h.update(p.encode() + b"\0")
        for f in inputs:
            h.update(Path(f).read_bytes())
            h.update(b"\0")
        return h.hexdigest()[:20]

    def build(self, name: str, cmd: Sequence[str | Path], inputs: Sequence[Path]) -> Path:
        """Run *cmd* (``{out}`` stands for the output path) once per content key."""
        key = self._key([name, *map(str, cmd)], inputs)
        out = self.root / f"{key}-{name}"
        if out.exists():
            return out
        with open(self.root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not out.exists():
                tmp = self.root / f"{key}.{os.getpid()}.tmp-{name}"
                run([str(c).replace("{out}", str(tmp)) for c in cmd])
                os.replace(tmp, out)
        return out

    def compile(self, source: Path, flags: Sequence[str], name: str | None = None,
                compiler: str | None = None) -> Path:
        cc = compiler or cross("gcc")
        stem = name or f"{source.stem}.o"
        return self.build(stem, [cc, "-c", *flags, "-o", "{out}", source], [source])

    def link(self, objects: Sequence[Path], flags: Sequence[str], name: str) -> Path:
        return self.build(name, [cross("gcc"), *flags, "-o", "{out}", *objects], objects)


@pytest.fixture(scope="session")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker has basetemp <run>/popen-gwN: share <run>.
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    for t in ("gcc", "as", "ld", "objdump", "objcopy", "strip"):
        cross(t)
    return Builder(root / "armlp-build-cache")


# --- the scan corpus ---------------------------------------------------------

#: The flag sets of the corpus (issue 2): APCS frames, no frames, Thumb.
VARIANTS: dict[str, tuple[str, ...]] = {
    "apcs": ("-marm", "-pg", "-mapcs-frame"),
    "noapcs": ("-marm", "-pg", "-mno-apcs-frame"),
    "thumb": ("-mthumb", "-pg"),
}
OLEVELS = ("-O0", "-O1", "-O2", "-Os", "-O3")
C_SOURCES = ("funcs.c", "other.c")


@dataclass
class Corpus:
    """Paths of the compiled corpus: objects[(variant, olevel)][source stem]."""

    objects: dict[tuple[str, str], dict[str, Path]] = field(default_factory=dict)
    asm: Path | None = None


@pytest.fixture(scope="session")
def corpus(builder: Builder) -> Corpus:
    jobs = [(v, o, src) for v in VARIANTS for o in OLEVELS for src in C_SOURCES]
    out = Corpus()

    def one(job: tuple[str, str, str]) -> tuple[str, str, str, Path]:
        v, o, src = job
        path = builder.compile(CORPUS / src, [*VARIANTS[v], o],
                               name=f"{Path(src).stem}{o}-{v}.o")
        return v, o, Path(src).stem, path

    with ThreadPoolExecutor(max_workers=4) as pool:
        for v, o, stem, path in pool.map(one, jobs):
            out.objects.setdefault((v, o), {})[stem] = path
    out.asm = builder.compile(CORPUS / "asm_funcs.S", ["-marm"])
    return out


# --- running armlp in-process -----------------------------------------------

@dataclass
class CliResult:
    code: int
    out: str
    err: str


def armlp(*args: str | Path) -> CliResult:
    """``armlp ARGS`` in this process, with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = armlp_main([str(a) for a in args])
        except SystemExit as exc:   # argparse usage errors
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


_SCAN_CACHE: dict[Path, dict[str, Any]] = {}


def scan_json(path: Path) -> dict[str, Any]:
    """``armlp scan --json PATH``, parsed (cached per path)."""
    cached = _SCAN_CACHE.get(path)
    if cached is None:
        res = armlp("scan", "--json", path)
        assert res.code == 0, res.err
        assert res.err == ""
        cached = json.loads(res.out)
        _SCAN_CACHE[path] = cached
    return cached


def functions_by_key(doc: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    funcs = doc["functions"]
    assert isinstance(funcs, list)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for f in funcs:
        key = (f["name"], f["sympos"])
        assert key not in out, f"duplicate function {key}"
        out[key] = f
    return out


# --- objdump, parsed independently of armlp ---------------------------------

@dataclass
class Insn:
    offset: int
    mnemonic: str
    operands: str
    relocs: list[tuple[str, str]] = field(default_factory=list)   # (type, symbol)


_FUNC_RE = re.compile(r"^([0-9a-f]+) <([^>]+)>:$")
_INSN_RE = re.compile(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{4,8}(?: [0-9a-f]{4})?\s+)"
                      r"([a-z][\w.]*)\s*([^@;]*?)\s*(?:[@;].*)?$")
_RELOC_RE = re.compile(r"^\s*([0-9a-f]+): (R_ARM_\w+)\s+(\S+)")


def objdump_functions(path: Path) -> dict[str, list[Insn]]:
    """``objdump -dr`` of *path*, as {symbol: instructions} (first symbol wins)."""
    text = run([cross("objdump"), "-dr", path])
    funcs: dict[str, list[Insn]] = {}
    cur: list[Insn] | None = None
    for line in text.splitlines():
        m = _FUNC_RE.match(line)
        if m:
            name = m.group(2)
            cur = None if name in funcs else funcs.setdefault(name, [])
            continue
        if cur is None:
            continue
        m = _RELOC_RE.match(line)
        if m and cur:
            cur[-1].relocs.append((m.group(2), m.group(3)))
            continue
        m = _INSN_RE.match(line)
        if m:
            cur.append(Insn(int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return funcs


_REGS = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "sl", "fp", "ip", "sp",
         "lr", "pc"]


def parse_reglist(text: str) -> list[str]:
    """``{r4-r9, sl, fp, lr}`` -> register names, expanding ranges."""
    inner = text.strip().strip("{}")
    out: list[str] = []
    for part in inner.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(_REGS[_REGS.index(lo.strip()):_REGS.index(hi.strip()) + 1])
        elif part:
            out.append(part)
    return out


def imm(text: str) -> int:
    """``#4992`` or ``#0x1380`` -> int."""
    return int(text.strip().lstrip("#"), 0)


def wait_for_target(proc: subprocess.Popen[Any], timeout: float = 30.0) -> Any:
    """The TargetInfo of the only controller running (ARMLP_RUNTIME_DIR set by
    the test), once it serves its socket; fails if *proc* ends first."""
    import time

    from armlp.control.paths import find_target
    from armlp.errors import ArmlpError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return find_target(None)
        except ArmlpError:
            if proc.poll() is not None:
                pytest.fail(f"the controller ended with status {proc.returncode} before "
                            f"serving its socket")
            if time.monotonic() > deadline:
                pytest.fail("the controller never came up")
            time.sleep(0.02)


def settle(socket: str, timeout: float = 20.0, *, force: bool = False) -> bool:
    """Wait until the target's transition is over (what ``--wait`` does);
    with *force*, force one still open after *timeout* (threads that never
    make a system call cannot be checked).  True if it finished unforced."""
    import time

    from armlp.control.protocol import request

    deadline = time.monotonic() + timeout
    while True:
        t = request(socket, {"op": "status"})["transition"]
        if t is None:
            return True
        if time.monotonic() > deadline:
            if not force:
                pytest.fail(f"transition of {t['patch']} still open: {t['blocked']}")
            return not force_transition(socket, t["patch"])
        time.sleep(0.02)


def force_transition(socket: str, name: str) -> bool:
    """``force`` *name*'s transition; False if a retry of the controller's
    finished it first (the request then says it is not in transition)."""
    from armlp.control.paths import ControlError
    from armlp.control.protocol import request

    try:
        request(socket, {"op": "force", "name": name})
    except ControlError as exc:
        if "is not in transition" not in str(exc):
            raise
        return False
    return True


def program_and_patch(program: Path, patch: Path, out: Path,
                      gcc: str = "") -> tuple[Path, Path]:
    """Build the pthreads program *program* (static glibc, ARM, ``-pg
    -mapcs-frame``) and the live patch *patch* bound to its build-id, both
    into directory *out*.  With *gcc* (``arm-linux-gnueabihf-gcc``), both
    are what Debian armhf builds: Thumb-2, hard-float, the program
    dynamically linked and PIE (compiled with ``-mthumb -pg``, linked
    without)."""
    from armlp.elf.image import ElfImage
    from armlp.program_build import build_program
    from armlp.toolchain import PATCHABLE_THUMB_CFLAGS, patch_cflags, tool

    if gcc:
        prog, obj = out / program.stem, out / f"{program.stem}.o"
        run([gcc, *PATCHABLE_THUMB_CFLAGS, "-O2", "-c", program, "-o", obj])
        run([gcc, obj, "-pthread", "-o", prog])
    else:
        prog = build_program([program], out / program.stem, freestanding=False,
                             ldflags=["-pthread"])
    fix = out / f"{patch.stem}.o"
    subprocess.run([gcc or tool("gcc"), *patch_cflags(ElfImage(prog).build_id, thumb=bool(gcc)),
                    "-c", str(patch), "-o", str(fix)], check=True)
    return prog, fix


# --- the live tests' programs and processes (tests/test_live*.py) ------------

@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The programs and patches of test_live.py and test_live_faults.py."""
    return build_live(tmp_path_factory.mktemp("live"))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A private runtime directory; every process started through it is
    killed (by process group) in teardown."""
    lv = Live(tmp_path)
    try:
        yield lv
    finally:
        lv.kill_all()
