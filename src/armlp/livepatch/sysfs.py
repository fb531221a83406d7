"""The kernel's /sys/kernel/livepatch view of a target, as data.

``/sys/kernel/livepatch/<patch>/{enabled,transition}``,
``<patch>/<object>/patched`` and ``<patch>/<object>/<function,sympos>/``
become one JSON object; ``sites`` adds what ftrace shows in
``enabled_functions``: every site in use, its users and what it holds.
"""

from __future__ import annotations

from armlp.arm.a32 import decode_branch
from armlp.arm.t32 import decode_t32_branch
from armlp.ftrace.sitecode import nop_word
from armlp.livepatch.core import Livepatch


def _describe_word(word: int, at: int, names: dict[int, str], thumb: bool = False) -> str:
    """A site's or entry's word as ``nop`` or ``kind name`` (*names* by
    address, bit 0 clear)."""
    if word == nop_word(thumb):
        return "nop"
    br = decode_t32_branch(word, at) if thumb else decode_branch(word, at)
    if br is None:
        return f"{word:#010x}"
    target = br.target & ~1
    return f"{br.kind} {names.get(target, hex(target))}"


def livepatch_status(lp: Livepatch) -> dict[str, object]:
    """Patches (enabled ones, oldest first) and the sites in use."""
    ft = lp.ftrace
    names: dict[int, str] = {}
    try:
        for sym in ft.runtime.module.symbols:
            names[sym.address] = sym.name
    except Exception:  # runtime not loaded: names stay hex
        pass
    for stack in lp.stacks.values():
        if stack.tramp:
            names[stack.tramp] = f"klp_tramp[{stack.name}]"
    patches = []
    t = lp.transition
    for p in lp.patches:
        for f in p.funcs:
            names[f.new_func & ~1] = f.new_name
        patches.append({
            "name": p.name,
            "enabled": p.enabled,
            "transition": t is not None and t.patch is p,
            "file": str(p.path),
            "objects": [{
                "name": o.name,
                "patched": o.patched,
                "functions": [{"name": f.old_name, "sympos": f.old_sympos,
                               "old_address": f.old_addr, "new": f.new_name,
                               "new_address": f.new_func,
                               "active": f.site in lp.stacks
                               and lp.stacks[f.site].funcs[-1] is f}
                              for f in o.funcs],
            } for o in p.objects],
        })
    sites = []
    for rec in ft.active_records:
        sites.append({
            "function": rec.name,
            "site": rec.ip,
            "users": [u.name for u in rec.users],
            "site_word": _describe_word(rec.word, rec.ip, names, rec.thumb),
            "entry_word": (_describe_word(rec.entry_word, rec.report.fn.address, names)
                           if rec.entry_word != rec.entry_orig else "original"),
        })
    return {
        "patches": patches,
        "transition": None if t is None else {"patch": t.patch.name, **t.describe()},
        "deferred_frees": [p.name for p in lp.deferred],
        "sites": {"total": len(ft.records), "in_use": sites},
    }
