"""``armlp scan``: which functions of an ARM ELF can be live patched, and why not."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Iterable
from typing import Any

from armlp.analysis.scan import FunctionReport, ScanResult, scan
from armlp.analysis.split import SPLIT_FROM, write_scan_json
from armlp.cli.main import keep_until_exit
from armlp.elf.image import ElfImage
from armlp.elf.symbols import FunctionSymbol
from armlp.errors import ArmlpError

HELP = """\
Read an ARM ELF (executable, PIE, shared library, .o or vmlinux), find each
function's mcount site and classify its prologue:

  patchable, rule apcs   the seed's APCS frame; undone through fp
  patchable, rule push   other prologues whose exact inverse is derived,
                         ARM and Thumb (push, push.w, sub sp, vpush, r7)
  not patchable          with the reason (no mcount site; an instruction
                         the analysis does not understand, named; ...)

Prints a summary and the unpatchable functions (all with --all); --function
shows one function's prologue disassembled with its undo recipe.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("scan", help="which functions can be live patched, and why not",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("elf", metavar="ELF", help="ARM ELF file: executable, object or vmlinux")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--function", metavar="NAME[,SYMPOS]",
                   help="show one function: prologue disassembly and undo recipe")
    p.add_argument("--all", action="store_true", help="list every function, not only the "
                                                      "unpatchable ones")
    p.add_argument("-j", "--jobs", type=int, choices=(1, 2), metavar="N",
                   help="processes for --json: 1 or 2 (default: 2 for an image of "
                        f"{SPLIT_FROM:,} symbols or more on two processors or more, else 1)")
    p.set_defaults(func=run)


def parse_function_spec(spec: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME,SYMPOS`` as the kernel writes them."""
    name, _, pos = spec.partition(",")
    if not name:
        raise ArmlpError(f"bad function {spec!r}: expected NAME or NAME,SYMPOS")
    if not pos:
        return name, None
    if not pos.isdigit():
        raise ArmlpError(f"bad function {spec!r}: SYMPOS must be a number")
    return name, int(pos)


def run(args: argparse.Namespace) -> int:
    # A scan allocates a few objects per function and no cycles: the cyclic
    # collector would only walk them again and again (a tenth of the run).
    gc.disable()
    image = ElfImage(args.elf)
    want = parse_function_spec(args.function) if args.function else None
    if args.json and want is None:
        keep_until_exit(write_scan_json(image, sys.stdout, jobs=args.jobs))
        sys.stdout.write("\n")
        return 0
    result = scan(image, progress=None if args.json or want else _progress)
    keep_until_exit(result)
    if want is not None:
        report = result.find(*want)
        if args.json:
            _dump(_function_json(result, report))
        else:
            _print_function(result, report)
        return 0
    _print_result(result, show_all=args.all)
    return 0


def _dump(obj: object) -> None:
    json.dump(obj, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


def _progress(funcs: list[FunctionSymbol]) -> Iterable[FunctionSymbol]:
    if len(funcs) < 5000 or not sys.stderr.isatty():
        return funcs
    from rich.progress import track
    return track(funcs, description="scanning", transient=True)


def escape(text: str) -> str:
    """*text* with rich markup escaped: ``[fp, #-4]`` is an operand, not a style."""
    from rich.markup import escape as rich_escape
    return rich_escape(text)


def _hex(v: int | None) -> str:
    return "-" if v is None else f"{v:#x}"


def _print_result(result: ScanResult, *, show_all: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    img = result.image
    s = result.summary()
    con.print(f"[bold]{escape(str(img.path))}[/]: {img.kind}, build-id {img.build_id or 'none'}")
    con.print(f"{s['functions']} functions, {s['with_mcount_site']} with an mcount site, "
              f"{s['patchable']} patchable ({s['coverage_percent']}% of the sites)")
    counts = Table(title="verdicts", show_header=True)
    counts.add_column("verdict")
    counts.add_column("count", justify="right")
    for k, n in result.counts().items():
        counts.add_row(k, str(n))
    con.print(counts)
    for note in result.notes:
        con.print(f"note: {note}")
    loc = result.mcount_loc
    if loc is not None:
        if loc.agrees:
            con.print(f"__mcount_loc: {loc.entries} entries, all agree with the decoded sites")
        else:
            con.print(f"[red]__mcount_loc disagrees[/]: {len(loc.only_in_table)} only in the "
                      f"table ({', '.join(map(_hex, loc.only_in_table[:8]))}), "
                      f"{len(loc.only_decoded)} only decoded "
                      f"({', '.join(map(_hex, loc.only_decoded[:8]))})")
    rows = [r for r in result.functions if show_all or not r.verdict.patchable]
    if not rows:
        return
    t = Table(title="functions" if show_all else "not patchable")
    for col in ("function", "address", "site", "mode", "verdict"):
        t.add_column(col)
    for r in rows:
        v = r.verdict
        t.add_row(escape(r.fn.label), _hex(r.fn.address), _hex(r.site), r.fn.mode,
                  f"patchable ({v.rule})" if v.patchable else escape(str(v.reason)))
    con.print(t)


def _function_json(result: ScanResult, report: FunctionReport) -> dict[str, object]:
    out = report.to_json()
    out["prologue"] = [{"address": report.fn.address + 4 * i, "word": w, "text": t}
                       for i, (w, t) in enumerate(_disassemble(result, report))]
    return out


def _disassemble(result: ScanResult, report: FunctionReport) -> list[tuple[int, str]]:
    import capstone

    fn = report.fn
    end = (report.site + 4) if report.site is not None else fn.address + min(fn.size or 32, 32)
    sec = result.image.sections[fn.section]
    data = result.image.section_data(sec)[fn.address - sec.addr:end - sec.addr]
    mode = capstone.CS_MODE_THUMB if fn.mode == "thumb" else capstone.CS_MODE_ARM
    md = capstone.Cs(capstone.CS_ARCH_ARM, mode)
    out = []
    for insn in md.disasm(data, fn.address):
        word = int.from_bytes(insn.bytes, "little")
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        if insn.address == report.site:
            text += "    <- mcount site"
        out.append((word, text))
    return out


def _print_function(result: ScanResult, report: FunctionReport) -> None:
    from rich.console import Console

    con = Console()
    fn, v = report.fn, report.verdict
    con.print(f"[bold]{escape(fn.label)}[/] at {fn.address:#x} ({fn.section_name}), "
              f"size {fn.size}, {fn.mode}, {fn.binding}")
    con.print(f"mcount site: {_hex(report.site)}")
    addr = fn.address
    for word, text in _disassemble(result, report):
        size = 4 if fn.mode == "arm" or word > 0xFFFF else 2
        con.print(f"  {addr:08x}:  {word:0{2 * size}x}  {text}", highlight=False, markup=False)
        addr += size
    if v.patchable and v.undo:
        con.print(f"[green]patchable[/], rule {v.rule}, frame size {v.undo.frame_size} bytes")
        con.print("undo at the site:")
        for step in v.undo.steps():
            con.print(f"  {step}", highlight=False, markup=False)
    else:
        con.print(f"[red]not patchable[/]: {escape(str(v.reason))}")
