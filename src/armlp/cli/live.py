"""``armlp patch``, ``unpatch`` and ``status``: clients of a running
target's controller (started by ``armlp run`` or ``armlp attach``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from armlp.cli.args import OptionalSeconds, positional

PATCH_HELP = """\
Apply PATCH.o (built with the flags of 'armlp cflags') to a running target.
Every check (build-id, symbols, relocations, each function patchable, each
site as armlp left it) runs before the target is touched; a refusal leaves
its memory unchanged.  With one target running, --target may be omitted.

The patch takes effect thread by thread (the kernel's consistency model): a
thread switches to the new functions once none of the patched functions is
on its stack, so no thread ever mixes old and new ones.  The command returns
once the transition has started and says whether it finished; --wait waits
for the end (at most SECONDS, default 60), and 'armlp status' names the
threads still holding it and where.  'armlp force NAME' switches them
anyway, as the kernel's force does (consistency is then not guaranteed).
"""
WAIT_HELP = ("wait until every thread has switched, at most SECONDS (default 60); exit 1 "
             "if the transition is still open then")


def register(sub: Any) -> None:
    p = sub.add_parser("patch", help="apply a live patch to a running target",
                       description=PATCH_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("patch", metavar="PATCH.o", nargs="?")
    _options(p, wait=True)
    p.set_defaults(func=patch)
    u = sub.add_parser("unpatch", help="disable a live patch of a running target",
                       description="Disable the enabled patch NAME; its functions fall back "
                                   "to the next older patch or to their own code, thread by "
                                   "thread as for 'patch'.  Unpatching a patch still in "
                                   "its transition reverses it.")
    u.add_argument("name", metavar="NAME", nargs="?")
    _options(u, wait=True)
    u.set_defaults(func=unpatch)
    f = sub.add_parser("force", help="finish a patch's transition without checking stacks",
                       description="Switch every thread still blocking the transition of "
                                   "patch NAME, unchecked (the kernel's "
                                   "/sys/kernel/livepatch/NAME/force).  Use it for a thread "
                                   "that never leaves a patched function; the threads "
                                   "switched this way may mix old and new functions.")
    f.add_argument("name", metavar="NAME")
    _options(f, wait=False)
    f.set_defaults(func=force)
    s = sub.add_parser("status", help="patches and sites of running targets",
                       description="What the kernel's /sys/kernel/livepatch shows, for "
                                   "each running target: patches with enabled and "
                                   "transition, objects with patched, functions with "
                                   "sympos, and the mcount sites in use.")
    s.add_argument("--target", metavar="ID")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=status)


def _options(p: Any, *, wait: bool) -> None:
    """The options every client command of a running target shares."""
    p.add_argument("--target", metavar="ID", help="target id or pid (see 'armlp status')")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    if wait:
        p.add_argument("--wait", nargs="?", const=60.0, action=OptionalSeconds,
                       metavar="SECONDS", help=WAIT_HELP)


def _print(args: argparse.Namespace, result: object, text: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(text)


def _transition_text(res: dict[str, Any]) -> str:
    if not res.get("transition"):
        return ""
    blocked = res.get("blocked") or []
    who = "; ".join(f"thread {b['thread']} {b['reason']}" for b in blocked[:3])
    return "; transition in progress" + (f" ({who})" if who else "")


def _wait(info: Any, name: str, res: dict[str, Any], seconds: float | None) -> int:
    """Wait until the transition of *name* is over (0), or *seconds* pass
    (1): the controller answers when it ends."""
    from armlp.control.protocol import request

    if seconds is None or not res.get("transition"):
        return 0
    done = request(info.socket, {"op": "wait", "name": name, "timeout": seconds},
                   timeout=seconds + 30)
    res["transition"] = done["transition"]
    if done["transition"]:
        res["blocked"] = done["blocked"]
        return 1
    res.pop("blocked", None)
    return 0


def patch(args: argparse.Namespace) -> int:
    from armlp.control.paths import find_target
    from armlp.control.protocol import request
    from armlp.inputs import check_input

    path = os.path.abspath(check_input(positional(args, "patch", "PATCH.o"), "patch module"))
    info = find_target(args.target)
    res = request(info.socket, {"op": "patch", "path": path})
    rc = _wait(info, res["name"], res, args.wait)
    replaced = res.get("replaced") or []
    _print(args, res, f"{info.id}: patch {res['name']} enabled "
                      f"({', '.join(res['functions'])})"
                      + (f", replacing {', '.join(replaced)}" if replaced else "")
                      + _transition_text(res))
    return rc


def unpatch(args: argparse.Namespace) -> int:
    from armlp.control.paths import find_target
    from armlp.control.protocol import request

    name = positional(args, "name", "NAME")
    info = find_target(args.target)
    res = request(info.socket, {"op": "unpatch", "name": name})
    rc = _wait(info, name, res, args.wait)
    note = "" if res["memory_freed"] else " (its memory is freed once no thread can be in it)"
    _print(args, res, f"{info.id}: patch {name} disabled{note}" + _transition_text(res))
    return rc


def force(args: argparse.Namespace) -> int:
    from armlp.control.paths import find_target
    from armlp.control.protocol import request

    info = find_target(args.target)
    res = request(info.socket, {"op": "force", "name": args.name})
    print(f"armlp: warning: patch {args.name}: {len(res['forced'])} blocked thread(s) switched "
          f"unchecked; consistency is not guaranteed for them", file=sys.stderr)
    _print(args, res, f"{info.id}: patch {args.name}: transition finished (forced)")
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
            tr = st.get("transition")
            if p["transition"] and tr:
                print(f"    to {tr['target']} for {tr['seconds']:.1f} s, "
                      f"{tr['stacks_pending']} stack(s) pending")
                for b in tr["blocked"]:
                    print(f"    thread {b['thread']}: {b['reason']}")
            for o in p["objects"]:
                loaded = o["patched"] or p["transition"]
                print(f"    {o['name']}: patched={int(o['patched'])}"
                      f"{'' if loaded else '  (not loaded: patched when it loads)'}")
                for f in o["functions"]:
                    mark = "" if f["active"] or not loaded else "  (shadowed by a newer patch)"
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
