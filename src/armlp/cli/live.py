"""``armlp patch``, ``unpatch`` and ``status``: clients of a running
target's controller (started by ``armlp run`` or ``armlp attach``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

PATCH_HELP = """\
Apply PATCH.o (built with the flags of 'armlp cflags') to a running target.
Every check (build-id, symbols, relocations, each function patchable, each
site as armlp left it) runs before the target is touched; a refusal leaves
its memory unchanged.  With one target running, --target may be omitted.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("patch", help="apply a live patch to a running target",
                       description=PATCH_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("patch", metavar="PATCH.o")
    p.add_argument("--target", metavar="ID", help="target id or pid (see 'armlp status')")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=patch)
    u = sub.add_parser("unpatch", help="disable a live patch of a running target",
                       description="Disable the enabled patch NAME; its functions fall back "
                                   "to the next older patch or to their own code.")
    u.add_argument("name", metavar="NAME")
    u.add_argument("--target", metavar="ID")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=unpatch)
    s = sub.add_parser("status", help="patches and sites of running targets",
                       description="What the kernel's /sys/kernel/livepatch shows, for "
                                   "each running target: patches with enabled and "
                                   "transition, objects with patched, functions with "
                                   "sympos, and the mcount sites in use.")
    s.add_argument("--target", metavar="ID")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=status)


def _print(args: argparse.Namespace, result: object, text: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(text)


def patch(args: argparse.Namespace) -> int:
    from armlp.control.paths import find_target
    from armlp.control.protocol import request
    from armlp.inputs import check_input

    path = os.path.abspath(check_input(args.patch, "patch module"))
    info = find_target(args.target)
    res = request(info.socket, {"op": "patch", "path": path})
    replaced = res.get("replaced") or []
    _print(args, res, f"{info.id}: patch {res['name']} enabled "
                      f"({', '.join(res['functions'])})"
                      + (f", replacing {', '.join(replaced)}" if replaced else ""))
    return 0


def unpatch(args: argparse.Namespace) -> int:
    from armlp.control.paths import find_target
    from armlp.control.protocol import request

    info = find_target(args.target)
    res = request(info.socket, {"op": "unpatch", "name": args.name})
    note = "" if res["memory_freed"] else " (its memory is kept until provably unused)"
    _print(args, res, f"{info.id}: patch {args.name} disabled{note}")
    return 0


def status(args: argparse.Namespace) -> int:
    from armlp.control.paths import find_target, list_targets
    from armlp.control.protocol import request

    infos = [find_target(args.target)] if args.target else list_targets()
    results = [request(i.socket, {"op": "status"}) for i in infos]
    if args.json:
        sys.stdout.write(json.dumps({"targets": results}) + "\n")
        return 0
    if not results:
        print("no running targets")
    for st in results:
        t = st["target"]
        stop = "all threads" if st.get("all_stop") else "one thread (no ptrace: frees kept)"
        print(f"{t['id']}: {t['program']} (pid {t['pid']}); writes stop {stop}")
        for p in st["patches"]:
            print(f"  {p['name']}: enabled={int(p['enabled'])} transition="
                  f"{int(p['transition'])}")
            for o in p["objects"]:
                print(f"    {o['name']}: patched={int(o['patched'])}")
                for f in o["functions"]:
                    mark = "" if f["active"] else "  (shadowed by a newer patch)"
                    print(f"      {f['name']},{f['sympos']} -> {f['new']}{mark}")
        if not st["patches"]:
            print("  no patches")
        if st.get("deferred_frees"):
            print(f"  kept until no thread can be in them: {', '.join(st['deferred_frees'])}")
        sites = st["sites"]
        print(f"  sites: {len(sites['in_use'])} of {sites['total']} in use")
        for s in sites["in_use"]:
            print(f"    {s['function']}: {s['site_word']}, entry {s['entry_word']} "
                  f"({', '.join(s['users'])})")
    return 0
