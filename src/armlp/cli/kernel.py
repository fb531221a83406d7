"""``armlp kernel``: live patches for a running 32-bit ARM kernel.

``armlp kernel build`` turns a patch's C (:mod:`armlp.kernel.build`) or a
source diff (:mod:`armlp.kernel.diff`) into a patch module and the core
module it needs; ``armlp kernel fetch`` fetches a release's build kit (and
source) ahead of time (:mod:`armlp.kernel.kit`, :mod:`armlp.kernel.source`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from armlp.kernel.build import KernelPatch

HELP = """\
Build PATCH.c, or the source diff DIFF (--diff), as a kernel live patch for
Debian's 32-bit ARM kernel REL (linux-image-REL, armhf, e.g. 6.1.0-50-armmp).

PATCH.c is written like a program's patch: #include <armlp/livepatch.h>,
ARMLP_PATCH("name"), ARMLP_REPLACE(old, new), ARMLP_REPLACE_POS(old, pos,
new) for statics that share a name, ARMLP_SYMBOL(name, pos) for kernel
symbols that are static or not exported; the kernel's headers are usable
(<linux/seq_file.h> ...).  No module_init: armlp writes the module around it.

With --diff DIFF (a unified diff of C files of the kernel's tree, -p1 or
-p0), armlp does what kpatch-build does: it compiles the files the diff
changes with Kbuild from REL's own source (linux-source-6.1, fetched once),
proves that they give REL's vmlinux byte for byte (other source, flags or
compiler are refused, naming the functions that differ), applies the diff,
compiles again, and compares function by function: the patch carries the
changed functions (and the ones a changed function was inlined into), new
functions and data, and the kernel's table entries of that code (exception
fixups, BUG sites, static keys, mcount sites, unwind tables); it reaches
vmlinux's other symbols by address.  The report says what was included and
why.  Refused with the reason: a change to existing data, a header, a file
vmlinux is not built from (a module's), a function that is not patchable.

Each replaced function is found in REL's vmlinux and scanned with armlp's
own analysis; one that is not patchable (no mcount site, a prologue that
cannot be undone, init code, an ambiguous name) is refused with the reason
before any module is built.  The patch module embeds, per function, the
address, size and crc32 of the code the build saw (the core refuses to load
it on another kernel, with one dmesg line) and the trampoline that undoes
the function's prologue.

Written to DIR: <name>.ko, armlp_klp.ko (the core module it needs) and
load-order (the .ko names in insmod order).  On the device:

  for m in $(cat load-order); do insmod $m; done     # armlp_klp once per boot
  cat /sys/kernel/livepatch/<name>/transition        # 0: every task switched
  echo 0 > /sys/kernel/livepatch/<name>/enabled      # disable; then rmmod <name>

What the build needs for REL (its headers, the host's linux-kbuild of the
same version, its vmlinux from linux-image-REL-dbg) is fetched once into
$ARMLP_KERNEL_CACHE (default ~/.cache/armlp/kernel); the cross compiler is
gcc-arm-linux-gnueabihf.  REL defaults to $ARMLP_KERNEL_RELEASE, else the
newest release in the cache, else Debian's current armmp kernel.
"""


def register(sub: Any) -> None:
    k = sub.add_parser("kernel", help="build live patches for a 32-bit ARM kernel",
                       description=__doc__)
    ksub = k.add_subparsers(dest="kernel_command", metavar="COMMAND")
    ksub.required = True
    b = ksub.add_parser("build", help="build a patch module from a patch's C",
                        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("source", metavar="PATCH.c", nargs="?", help="the patch")
    b.add_argument("--diff", metavar="DIFF", help="build the patch from this source diff "
                                                  "instead (see above)")
    b.add_argument("--out", required=True, metavar="DIR", help="where the modules go")
    b.add_argument("--release", metavar="REL", help="the kernel release (see above)")
    b.add_argument("--name", help="the patch's name (default: ARMLP_PATCH, else the file's)")
    b.add_argument("--json", action="store_true", help="print what was built as JSON")
    b.set_defaults(func=run_build)
    f = ksub.add_parser("fetch", help="fetch a release's build kit into the cache",
                        description="Fetch what `armlp kernel build` needs for REL (headers, "
                                    "host kbuild, vmlinux with symbols) into the cache.")
    f.add_argument("release", nargs="?", metavar="REL", help="the kernel release")
    f.add_argument("--guest", action="store_true",
                   help="also its vmlinuz and a busybox, to boot a test guest")
    f.add_argument("--source", action="store_true",
                   help="also its source tree, for armlp kernel build --diff (1.5 GB)")
    f.set_defaults(func=run_fetch)


def run_build(args: argparse.Namespace) -> int:
    from armlp.kernel.build import KernelBuildError, build
    from armlp.kernel.kit import kit

    if (args.source is None) == (args.diff is None):
        raise KernelBuildError("give PATCH.c or --diff DIFF (one of them)")
    if args.diff is not None:
        return _run_diff(args)
    patch = build(Path(args.source), kit(args.release), Path(args.out), name=args.name)
    if args.json:
        print(json.dumps(patch.to_json(), indent=1))
        return 0
    _print_patch(patch, Path(args.out))
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    from armlp.cli.build import print_report
    from armlp.kernel.diff import build_diff
    from armlp.kernel.kit import kit

    patch, report = build_diff(Path(args.diff), kit(args.release), Path(args.out),
                               name=args.name)
    if args.json:
        doc = patch.to_json()
        doc["build"] = report.to_json()
        print(json.dumps(doc, indent=1))
        return 0
    _print_patch(patch, Path(args.out))
    print_report(report)
    return 0


def _print_patch(patch: KernelPatch, out: Path) -> None:
    print(f"{patch.name}: {len(patch.funcs)} function(s) for {patch.release}")
    for f in patch.funcs:
        print(f"  {f.old_name} -> {f.new_name}: rule {f.rule}, site +{f.site - f.fn.address:#x}")
    print(f"wrote {', '.join(str(m) for m in patch.modules)} and {out / 'load-order'}")


def run_fetch(args: argparse.Namespace) -> int:
    from armlp.kernel.kit import guest_files, kit

    k = kit(args.release)
    if args.guest:
        guest_files(k)
    if args.source:
        from armlp.kernel.source import source_tree
        source_tree(k)
    print(f"{k.release}: {k.root}")
    return 0
