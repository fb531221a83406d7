"""``armlp kernel``: live patches for a running 32-bit ARM kernel.

``armlp kernel build`` turns a patch's C into a patch module and the core
module it needs (:mod:`armlp.kernel.build`); ``armlp kernel fetch`` fetches
a release's build kit ahead of time (:mod:`armlp.kernel.kit`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = """\
Build PATCH.c as a kernel live patch for Debian's 32-bit ARM kernel REL
(linux-image-REL, armhf, e.g. 6.1.0-50-armmp).

PATCH.c is written like a program's patch: #include <armlp/livepatch.h>,
ARMLP_PATCH("name"), ARMLP_REPLACE(old, new), ARMLP_REPLACE_POS(old, pos,
new) for statics that share a name, ARMLP_SYMBOL(name, pos) for kernel
symbols that are static or not exported; the kernel's headers are usable
(<linux/seq_file.h> ...).  No module_init: armlp writes the module around it.

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
    b.add_argument("source", metavar="PATCH.c", help="the patch")
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
    f.set_defaults(func=run_fetch)


def run_build(args: argparse.Namespace) -> int:
    from armlp.kernel.build import build
    from armlp.kernel.kit import kit

    patch = build(Path(args.source), kit(args.release), Path(args.out), name=args.name)
    if args.json:
        print(json.dumps(patch.to_json(), indent=1))
        return 0
    print(f"{patch.name}: {len(patch.funcs)} function(s) for {patch.release}")
    for f in patch.funcs:
        print(f"  {f.old_name} -> {f.new_name}: rule {f.rule}, site +{f.site - f.fn.address:#x}")
    print(f"wrote {', '.join(str(m) for m in patch.modules)} and {Path(args.out) / 'load-order'}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from armlp.kernel.kit import guest_files, kit

    k = kit(args.release)
    if args.guest:
        guest_files(k)
    print(f"{k.release}: {k.root}")
    return 0
