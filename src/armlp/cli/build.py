"""``armlp build``: a live patch from a source diff."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from armlp.errors import BuildError

if TYPE_CHECKING:
    from armlp.builder.core import BuildReport

HELP = """\
Turn a source diff into a live patch, as kpatch-build does for the kernel,
and prove first that the source tree is the one the program came from.

armlp copies DIR, runs CMD there (a shell command that builds the program
and compiles C through $CC: make, a script ...) with $CC pointing at armlp's
compiler wrapper, which records every compilation with the program's own
flags plus -ffunction-sections -g (neither changes the code).  It then
checks that every function of the rebuilt original equals the program's
bytes (relocated words aside) and refuses, naming the first functions that
differ, if not.  It applies DIFF (patch -p1, else -p0), runs CMD again and
compares the two builds function by function:

  changed        its code or what it refers to differs (also when a function
                 inlined into it changed, or a constant it uses)
  new            only the patched build has it: it travels with the patch
  line numbers   differs only by __LINE__ values the diff moved: left out

Changed functions replace the program's (statics by file and sympos, GCC's
.part/.isra/.constprop clones by their names, .cold parts with their
function); everything else they use is the program's own.  A change to the
size or initial value of existing writable data is refused (use a shadow
variable); changed read-only data travels with the functions that use it.
The patch is bound to the program's build-id and loads with 'armlp patch'.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("build", help="build a live patch from a source diff",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("diff", metavar="DIFF", help="unified diff of the fix (diff -u, git diff)")
    p.add_argument("--source", metavar="DIR", required=True,
                   help="the program's source tree, as it was built (not modified)")
    p.add_argument("--program", metavar="BINARY", required=True,
                   help="the running program's executable (with its symbols)")
    p.add_argument("--build", metavar="CMD", required=True,
                   help="shell command run in the tree's copy that builds the program "
                        "with $CC, e.g. 'make'")
    p.add_argument("-o", "--output", metavar="PATCH.o",
                   help="the patch to write (default: NAME.o)")
    p.add_argument("--name", help="the patch's name (default: from DIFF's file name)")
    p.add_argument("--cc", metavar="COMPILER",
                   help="the real compiler (default: the cross gcc of the program's ABI)")
    p.add_argument("--workdir", metavar="DIR",
                   help="build there and keep it (default: a temporary directory, removed)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)


def _compiler(program: Path) -> str:
    """The Debian cross gcc matching *program*'s float ABI."""
    import shutil

    from armlp.elf.image import ElfImage
    from armlp.toolchain import tool
    hard = bool(ElfImage(program).flags & 0x400)           # EF_ARM_ABI_FLOAT_HARD
    if not hard:
        return tool("gcc")
    found = shutil.which("arm-linux-gnueabihf-gcc")
    if found is None:
        raise BuildError("arm-linux-gnueabihf-gcc not found (the program is hard-float): "
                         "install gcc-arm-linux-gnueabihf or give --cc")
    return found


def run(args: argparse.Namespace) -> int:
    from armlp.builder.core import build_patch, default_name
    from armlp.cli.main import printable
    from armlp.inputs import check_input
    from armlp.livepatch.module import NAME_RE

    if args.name is not None and not NAME_RE.fullmatch(args.name):
        raise BuildError(f"--name {printable(args.name)[:80]!r}: 1-64 letters, digits, '-', "
                         f"'_' or '.'")
    program = check_input(args.program, "program")
    name = args.name or default_name(Path(args.diff))
    output = Path(args.output or f"{name}.o")
    report = build_patch(Path(args.diff), Path(args.source), program, args.build, output,
                         name=name, cc=args.cc or _compiler(program),
                         workdir=Path(args.workdir) if args.workdir else None)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(f"wrote {report.patch} (patch {report.name!r} for {report.program})")
    print_report(report)
    return 0


def print_report(report: BuildReport) -> None:
    """What a diff build proved, included and left out, and its times."""
    files = f"{report.objects} file" + ("s" if report.objects != 1 else "")
    print(f"base: {report.proven} functions in {files} rebuilt byte for byte")
    for inc in report.included:
        what = "function" if inc.kind == "func" else "data"
        repl = "" if inc.replaces is None else \
            f"  replaces {inc.replaces[0]}" + (f",{inc.replaces[1]}" if inc.replaces[1] else "")
        print(f"  {what} {inc.file}:{inc.name}: {inc.reason}{repl}")
    if report.not_in_program:
        print(f"left out (not in the program: an overridden weak definition, or dropped "
              f"by the linker): {', '.join(report.not_in_program)}")
    if report.line_only:
        print(f"left out (only line numbers moved): {', '.join(report.line_only)}")
    t = report.timings
    print(f"time: builds {t.get('build_original', 0):.1f} s + {t.get('build_patched', 0):.1f} s, "
          f"comparison {t.get('compare', 0):.2f} s, patch {t.get('emit', 0):.2f} s")
