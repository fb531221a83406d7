"""Benchmark: ``armlp scan --json`` against ``arm-linux-gnueabi-objdump -d``.

Generates a large C program (20,000+ functions of the shapes real C code has:
leaf arithmetic, loops, switch statements, calls, more than four arguments,
64-bit arguments, varargs, large locals, static functions sharing a name
across files), compiles it with the live-patchable flags into one static ARM
executable, then times both commands as whole processes, interleaved, several
times, and compares them pair by pair (the median of the ratios of runs made
side by side; the ratio of the medians is printed too).

Target (issue 2): armlp at least 10x faster than ``objdump -d`` (which
disassembles everything; scan reads only prologues) and under 1 s for 20,000
functions.

    .venv/bin/python benchmarks/scan.py [--functions N] [--runs N]
    .venv/bin/python benchmarks/scan.py --kernel [VMLINUX] [--runs N]

``--kernel`` times Debian's armhf vmlinux (45,000 functions, 243 MB with
its DWARF) that ``./run.sh setup`` fetches into ``build/kernel`` instead,
against issue 9's target of 20x (``benchmarks/results/scan_kernel.json``).

The binary is cached under ``build/bench/<hash>/`` keyed by the generator's
own source and parameters, so reruns only time.  Figures go to stdout and to
``benchmarks/results/scan.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scan.json"
CROSS = os.environ.get("ARMLP_CROSS_PREFIX", "arm-linux-gnueabi-")
CFLAGS = ["-marm", "-pg", "-mapcs-frame", "-O2", "-static"]
TARGET_RATIO = 10.0
#: Issue 9: a kernel image at least 20x faster than objdump -d.
KERNEL_TARGET_RATIO = 20.0
TARGET_SECONDS = 1.0
TARGET_FUNCTIONS = 20_000
#: Functions to generate: a little over the target, since GCC folds a few
#: identical ones (-fipa-icf) into one symbol.
GENERATE = 20_300
#: Generated function names start with these (libc's own are not counted).
GENERATED_PREFIXES = ("fn_", "helper_", "main")


# -- the program --------------------------------------------------------------

@dataclass(frozen=True)
class Callee:
    """A public generated function and how to call it with int expressions."""

    name: str
    call: Callable[[list[str]], str]


class Generator:
    """Writes the C files of the benchmark program, deterministically."""

    def __init__(self, functions: int, files: int, seed: int = 2024) -> None:
        self.rng = random.Random(seed)
        self.functions = functions
        self.files = files
        self.callees: list[Callee] = []
        self.prototypes: list[str] = []

    # Each shape returns (prototype or None for static, definition text).

    def _leaf(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        c = [r.randrange(3, 97) for _ in range(6)]
        proto = f"int {name}(int a, int b)"
        body = f"""{proto}
{{
    int x = a * {c[0]} + (b >> {c[1] % 7 + 1});
    int y = (a ^ b) - {c[2]};
    x ^= x >> {c[3] % 5 + 2};
    if (x > y)
        x -= y * {c[4]};
    else
        x += (y & 0xff) << {c[5] % 4};
    x += (unsigned)y / {c[1]};
    return x ^ (x << 3) ^ g_state;
}}
"""
        return proto, body, Callee(name, lambda a: f"{name}({a[0]}, {a[1]})")

    def _loop(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        c = [r.randrange(2, 61) for _ in range(4)]
        proto = f"int {name}(const int *p, int n, int k)"
        body = f"""{proto}
{{
    int s = k, m = 0;
    for (int i = 0; i < n; i++) {{
        int v = p[i & 63] * {c[0]} + i;
        if (v > s)
            m = v - s;
        s += v ^ (s >> {c[1] % 9 + 1});
        if ((s & {c[2]}) == {c[3] % 7})
            s -= m;
    }}
    return s + m;
}}
"""
        return proto, body, Callee(name, lambda a: f"{name}(g_table, {a[0]} & 31, {a[1]})")

    def _switch(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        cases = []
        for i in range(r.randrange(5, 11)):
            op = r.choice(["a + b", "a - b", "a * b", "a ^ b", "a | (b << 2)",
                           "(a >> 1) + b", "a & ~b", "b - (a << 1)", "a % (b | 1)"])
            cases.append(f"    case {i}: r = {op} + {r.randrange(1, 500)}; break;")
        proto = f"int {name}(int op, int a, int b)"
        body = f"""{proto}
{{
    int r;
    switch (op) {{
{chr(10).join(cases)}
    default: r = a; g_state++; break;
    }}
    return r * 3 + (r >> 4);
}}
"""
        return proto, body, Callee(name, lambda a: f"{name}({a[0]} & 15, {a[1]}, {a[0]})")

    def _calls(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        lines = []
        for i in range(r.randrange(2, 5)):
            callee = r.choice(self.callees[-400:]) if self.callees else None
            args = [f"a + {i}", f"b ^ {r.randrange(100)}"]
            if callee is None:
                lines.append(f"    t += sink(t, {i});")
            else:
                lines.append(f"    t += {callee.call(args)};")
                lines.append(f"    if (t & {1 << r.randrange(8)}) b += t;")
        proto = f"int {name}(int a, int b)"
        body = f"""{proto}
{{
    int t = a;
{chr(10).join(lines)}
    return t;
}}
"""
        return proto, body, Callee(name, lambda a: f"{name}({a[0]}, {a[1]})")

    def _many_args(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        n = r.randrange(5, 9)
        params = ", ".join(f"int p{i}" for i in range(n))
        terms = " + ".join(f"p{i} * {r.randrange(1, 40)}" for i in range(n))
        proto = f"int {name}({params})"
        body = f"""{proto}
{{
    int s = {terms};
    if (s < p{n - 1})
        s = sink(s, p0) + p{n - 2};
    return s ^ p1;
}}
"""

        def call(a: list[str], n: int = n) -> str:
            return f"{name}({', '.join(a[i % 2] + f' + {i}' for i in range(n))})"
        return proto, body, Callee(name, call)

    def _wide(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        proto = f"long long {name}(long long a, int b, long long c)"
        body = f"""{proto}
{{
    long long x = a * {r.randrange(3, 999)}LL + c;
    if (b > {r.randrange(10)})
        x ^= c >> {r.randrange(1, 40)};
    x += (long long)b << {r.randrange(1, 30)};
    return x / (c | 1);
}}
"""
        return proto, body, Callee(
            name, lambda a: f"(int){name}((long long){a[0]}, {a[1]}, {a[0]}LL + 7)")

    def _varargs(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        proto = f"int {name}(int n, ...)"
        body = f"""{proto}
{{
    va_list ap;
    int s = {r.randrange(100)};
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        s = s * {r.randrange(3, 17)} + va_arg(ap, int);
    va_end(ap);
    return s;
}}
"""
        return proto, body, Callee(name, lambda a: f"{name}(3, {a[0]}, {a[1]}, 5)")

    def _big_locals(self, name: str) -> tuple[str, str, Callee]:
        r = self.rng
        size = r.choice([256, 512, 1024, 4100, 6000, 9000])
        proto = f"int {name}(int seed, int n)"
        body = f"""{proto}
{{
    char buf[{size}];
    int s = 0;
    for (int i = 0; i < n && i < {size}; i++)
        buf[i] = (char)(seed + i * {r.randrange(3, 31)});
    s = consume(buf, n < {size} ? n : {size});
    return s + buf[{r.randrange(size)}];
}}
"""
        return proto, body, Callee(name, lambda a: f"{name}({a[0]}, {a[1]} & 255)")

    def _static_pair(self, name: str, index: int) -> tuple[str, str, Callee]:
        # Static helpers share names across files: sympos > 0 for them.
        helper = f"helper_{index % 97}"
        r = self.rng
        proto = f"int {name}(struct node *list, int key)"
        body = f"""static __attribute__((noinline)) int {helper}(struct node *n, int key)
{{
    int depth = 0;
    while (n) {{
        if (n->key == key)
            return n->value + depth;
        n = n->key < key ? n->right : n->left;
        depth++;
    }}
    return -{r.randrange(1, 9)};
}}

{proto}
{{
    int v = {helper}(list, key);
    if (v < 0)
        v = {helper}(list, key + {r.randrange(1, 20)});
    return v;
}}
"""
        return proto, body, Callee(name, lambda a: f"{name}(g_root, {a[0]})")

    SHAPES = ("_leaf", "_loop", "_switch", "_calls", "_calls", "_many_args", "_wide",
              "_varargs", "_big_locals", "_static_pair")

    def generate(self, out: Path) -> list[Path]:
        """Write ``bench.h``, ``f*.c`` and ``main.c`` into *out*; return the C files."""
        per_file = -(-self.functions // self.files)
        bodies: list[list[str]] = [[] for _ in range(self.files)]
        index = 0
        static_names: set[int] = set()
        while index < self.functions:
            f = min(index // per_file, self.files - 1)
            shape = self.rng.choice(self.SHAPES)
            name = f"fn_{index}"
            if shape == "_static_pair":
                # one helper name per file at most once
                key = f * 1000 + index % 97
                if key in static_names:
                    shape = "_leaf"
                else:
                    static_names.add(key)
            if shape == "_static_pair":
                proto, body, callee = self._static_pair(name, index)
                index += 2
            else:
                proto, body, callee = getattr(self, shape)(name)
                index += 1
            self.prototypes.append(proto + ";")
            bodies[f].append(body)
            self.callees.append(callee)
        out.mkdir(parents=True, exist_ok=True)
        header = ["#include <stdarg.h>", "struct node { int key, value; "
                  "struct node *left, *right; };",
                  "extern int g_state; extern int g_table[64]; extern struct node *g_root;",
                  "int sink(int a, int b);", "int consume(const char *p, int n);",
                  *self.prototypes]
        (out / "bench.h").write_text("\n".join(header) + "\n")
        files = []
        for f, chunk in enumerate(bodies):
            path = out / f"f{f:02d}.c"
            path.write_text('#include "bench.h"\n\n' + "\n".join(chunk))
            files.append(path)
        main = out / "main.c"
        main.write_text("""#include "bench.h"
int g_state; int g_table[64]; struct node *g_root;
__attribute__((noinline)) int sink(int a, int b) { g_state += a ^ b; return g_state; }
__attribute__((noinline)) int consume(const char *p, int n)
{
    int s = 0;
    for (int i = 0; i < n; i++)
        s += p[i];
    return s;
}
int main(int argc, char **argv) { (void)argv; return fn_0(argc, 1) & 1; }
""")
        files.append(main)
        return files


def build(functions: int, files: int) -> Path:
    """The benchmark binary, from the cache when the generator is unchanged."""
    key = hashlib.sha256(Path(__file__).read_bytes()
                         + f"{functions}/{files}/{CFLAGS}".encode()).hexdigest()[:16]
    out = ROOT / "build" / "bench" / key
    exe = out / "prog"
    if exe.exists():
        return exe
    tmp = out.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sources = Generator(functions, files).generate(tmp)
    print(f"compiling {len(sources)} files into {out} ...", file=sys.stderr)
    t0 = time.perf_counter()

    def cc(src: Path) -> Path:
        obj = src.with_suffix(".o")
        subprocess.run([CROSS + "gcc", *CFLAGS, "-c", "-o", str(obj), str(src)],
                       check=True)
        return obj

    with ThreadPoolExecutor(max_workers=2) as pool:
        objs = list(pool.map(cc, sources))
    subprocess.run([CROSS + "gcc", *CFLAGS, "-o", str(tmp / "prog"), *map(str, objs)],
                   check=True)
    print(f"built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return exe


# -- the measurement ------------------------------------------------------------

def armlp_command() -> list[str]:
    """The installed console script, next to the running interpreter first."""
    script = Path(sys.executable).parent / "armlp"
    if script.exists():
        return [str(script)]
    found = shutil.which("armlp")
    if found is None:
        sys.exit("armlp console script not found: pip install -e . first")
    return [found]


#: The environment of the timed commands.  Python runs armlp from cached
#: bytecode, as an installed package does (``pip install`` compiles it); a
#: PYTHONDONTWRITEBYTECODE left in the environment would make every run
#: compile armlp's modules from source again.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def time_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, env=ENV)
    return time.perf_counter() - t0


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4),
            "max": round(max(xs), 4)}


def describe(exe: Path, armlp: list[str]) -> dict[str, object]:
    """Function count, average size and text size, from armlp's own report."""
    out = subprocess.run([*armlp, "scan", "--json", str(exe)], capture_output=True,
                         check=True, env=ENV).stdout
    funcs = json.loads(out)["functions"]
    mine = [f for f in funcs if f["name"].startswith(GENERATED_PREFIXES)]
    sys.path.insert(0, str(ROOT / "src"))
    from armlp.elf.image import ElfImage
    text = ElfImage(exe).section(".text")
    return {
        "functions": len(funcs),
        "generated_functions": len(mine),
        "patchable": sum(1 for f in funcs if f["patchable"]),
        "avg_function_instructions": round(sum(f["size"] for f in mine) / 4 / len(mine), 1),
        "avg_function_instructions_all": round(sum(f["size"] for f in funcs) / 4 / len(funcs),
                                               1),
        "text_bytes": text.size if text else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--functions", type=int, default=GENERATE,
                    help="generated functions (default %(default)s)")
    ap.add_argument("--files", type=int, default=20, help="C files (default %(default)s)")
    ap.add_argument("--runs", type=int, default=9, help="timed runs of each (default "
                                                        "%(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not write the results file")
    ap.add_argument("--kernel", nargs="?", const="", metavar="VMLINUX",
                    help="time Debian's vmlinux instead (default: the one ./run.sh setup "
                         "fetched into build/kernel); results in scan_kernel.json, issue 9's "
                         "target 20x")
    args = ap.parse_args()
    if args.kernel is not None:
        return kernel(args)

    exe = build(args.functions, args.files)
    armlp = [*armlp_command(), "scan", "--json", str(exe)]
    objdump = [CROSS + "objdump", "-d", str(exe)]
    info = describe(exe, armlp[:1])

    times = interleaved({"armlp": armlp, "objdump": objdump}, args.runs)
    a, o = stats(times["armlp"]), stats(times["objdump"])
    ratio = pair_ratio(times["objdump"], times["armlp"])
    result = {
        "binary": str(exe.relative_to(ROOT)),
        "cflags": CFLAGS,
        **info,
        "runs": args.runs,
        "armlp_scan_json_s": a,
        "objdump_d_s": o,
        "ratio_objdump_over_armlp": ratio,
        "ratio_of_medians": round(o["median"] / a["median"], 2),
        "targets": {
            "ratio_at_least_10x": ratio >= TARGET_RATIO,
            "under_1s": a["median"] < TARGET_SECONDS,
        },
        "note": "whole processes, stdout to /dev/null, interleaved; armlp from cached bytecode",
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"program: {info['functions']} functions ({info['generated_functions']} generated, "
          f"avg {info['avg_function_instructions']} instructions each; "
          f"{info['avg_function_instructions_all']} over all), "
          f".text {info['text_bytes']} bytes")
    print(f"{'':22} {'min':>8} {'median':>8} {'max':>8}   ({args.runs} interleaved runs)")
    for label, s in (("armlp scan --json", a), ("objdump -d", o)):
        print(f"{label:22} {s['min']:8.3f} {s['median']:8.3f} {s['max']:8.3f}  s")
    print(f"objdump / armlp: {ratio}x (median of the {args.runs} side-by-side pairs; "
          f"ratio of medians {result['ratio_of_medians']}x)  "
          f"[target >= {TARGET_RATIO:g}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}; "
          f"armlp < {TARGET_SECONDS:g} s: "
          f"{'met' if a['median'] < TARGET_SECONDS else 'NOT met'}]")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


def interleaved(cmds: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """The seconds of each command's runs: each once to warm up (page cache,
    .pyc files), then *runs* times each, interleaved (A B A B ...)."""
    for cmd in cmds.values():
        time_once(cmd)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for k, cmd in cmds.items():
            times[k].append(time_once(cmd))
    return times


def pair_ratio(slow: list[float], fast: list[float]) -> float:
    """The median of the ratios of runs made side by side: a machine whose
    speed drifts during the benchmark moves both runs of a pair alike,
    where a ratio of medians takes each median from other moments."""
    return round(statistics.median(s / f for s, f in zip(slow, fast, strict=True)), 2)


def kernel(args: argparse.Namespace) -> int:
    """``armlp scan --json`` of a real kernel image against ``objdump -d``."""
    cache = Path(os.environ.get("ARMLP_KERNEL_CACHE", ROOT / "build" / "kernel"))
    vmlinux = Path(args.kernel) if args.kernel else next(iter(sorted(cache.glob("*/vmlinux"))),
                                                         None)
    if vmlinux is None or not vmlinux.is_file():
        sys.exit(f"no vmlinux in {cache}: run ./run.sh setup, or give --kernel VMLINUX")
    armlp = [*armlp_command(), "scan", "--json", str(vmlinux)]
    doc = json.loads(subprocess.run(armlp, capture_output=True, check=True, env=ENV).stdout)
    times = interleaved({"armlp": armlp, "objdump": [CROSS + "objdump", "-d", str(vmlinux)]},
                        args.runs)
    t = {k: stats(v) for k, v in times.items()}
    ratio = pair_ratio(times["objdump"], times["armlp"])
    result = {
        "vmlinux": str(vmlinux.resolve().relative_to(ROOT)
                       if vmlinux.resolve().is_relative_to(ROOT) else vmlinux),
        "bytes": vmlinux.stat().st_size,
        "functions": len(doc["functions"]),
        "patchable": sum(1 for f in doc["functions"] if f["patchable"]),
        "runs": args.runs,
        "armlp_scan_json_s": t["armlp"],
        "objdump_d_s": t["objdump"],
        "ratio_objdump_over_armlp": ratio,
        "ratio_of_medians": round(t["objdump"]["median"] / t["armlp"]["median"], 2),
        "target_ratio": KERNEL_TARGET_RATIO,
        "note": "whole processes, stdout to /dev/null, interleaved; armlp from cached bytecode",
    }
    print(f"{vmlinux}: {result['functions']} functions, {result['bytes']} bytes")
    for label, st in (("armlp scan --json", t["armlp"]), ("objdump -d", t["objdump"])):
        print(f"{label:22} {st['min']:8.3f} {st['median']:8.3f} {st['max']:8.3f}  s")
    print(f"objdump / armlp: {ratio}x (median of the {args.runs} side-by-side pairs; "
          f"ratio of medians {result['ratio_of_medians']}x)  "
          f"[target >= {KERNEL_TARGET_RATIO:g}x: "
          f"{'met' if ratio >= KERNEL_TARGET_RATIO else 'NOT met'}]")
    if not args.no_write:
        out = RESULTS.with_name("scan_kernel.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
