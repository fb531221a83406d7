"""Site records, ops registration and the call-modify mechanism.

Mirrors kernel/trace/ftrace.c in spirit: ``ftrace_init`` turns every site
into the NOP, ``register_ftrace_function`` adds a user with a filter, and
``ftrace_modify_call`` moves a site between the NOP, ``ftrace_caller`` and
``ftrace_regs_caller`` — always comparing the old word before writing the
new one (never write blind) and flushing after.

Order of writes, so a thread running at any instant sees a consistent site:
records (data) are written before a site starts calling a trampoline and
cleared only after it stopped.
"""

from __future__ import annotations

import fnmatch
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from armlp.analysis.mcount import mcount_addresses
from armlp.analysis.scan import FunctionReport, ScanResult
from armlp.errors import ArmlpError, CodeModificationError
from armlp.ftrace.sitecode import nop_word, site_branch, site_in_range
from armlp.ftrace.veneers import VeneerPool
from armlp.machine.base import CodeWrite, Machine, read_word, write_word
from armlp.machine.heap import TargetHeap
from armlp.objects import PROGRAM
from armlp.runtime.layout import (
    FTRACE_OPS_FL_SAVE_REGS,
    OPS,
    RULES,
    SITE,
    SITE_FL_THUMB,
    SITE_MAX_OPS,
    SITE_NOPS_OFFSET,
    SITE_OPS_OFFSET,
    SITE_TABLE,
    build_site_table,
)
from armlp.runtime.module import Runtime


class FtraceError(ArmlpError):
    """An ftrace operation cannot be done as asked."""


@dataclass(eq=False)
class FtraceOps:
    """One ftrace user: a callback in the target and the sites it wants.

    ``func`` is called through ``ftrace_caller`` with the plain save area;
    ``regs_func`` (default: ``func``) is called where the site goes through
    ``ftrace_regs_caller`` with a struct pt_regs.  ``FTRACE_OPS_FL_SAVE_REGS``
    users always get the regs trampoline (they may move pc).

    The fast path (the kernel's ftrace direct calls, one step further): while
    an ops with ``direct`` is a site's only user, the site holds ``b direct``
    — a per-function trampoline entered with lr and the frame as the
    prologue left them — and, with ``direct_entry``, the function's first
    instruction becomes ``b direct_entry`` so new calls never run the old
    prologue at all.  As soon as another user joins, the site goes back to
    the generic trampolines and the entry instruction to its original word.
    """

    name: str
    func: int
    flags: int = 0
    private: int = 0
    regs_func: int | None = None
    filters: list[str] = field(default_factory=list)
    ips: set[int] | None = None
    address: int = 0
    regs_address: int = 0
    direct: int | None = None
    direct_entry: int | None = None

    @property
    def save_regs(self) -> bool:
        return bool(self.flags & FTRACE_OPS_FL_SAVE_REGS)

    def wants(self, rec: DynFtrace) -> bool:
        if self.ips is not None:
            return rec.ip in self.ips
        if not self.filters:
            return True
        return any(_match(p, rec.report) for p in self.filters)


def _match(pattern: str, report: FunctionReport) -> bool:
    name, _, pos = pattern.partition(",")
    if pos and (not pos.isdigit() or int(pos) != report.fn.sympos):
        return False
    return fnmatch.fnmatchcase(report.fn.name, name)


@dataclass(eq=False)
class DynFtrace:
    """One mcount site (the kernel's ``struct dyn_ftrace``)."""

    ip: int
    report: FunctionReport
    record: int = 0            # address of struct armlp_site in the target
    word: int = 0              # what the site holds now
    users: list[FtraceOps] = field(default_factory=list)
    #: Which user each of the target's ``ops``/``regs_ops`` slots holds.
    slots: list[FtraceOps | None] = field(default_factory=lambda: [None] * SITE_MAX_OPS)
    entry_orig: int = 0        # the function's first word as built
    entry_word: int = 0        # what the first word holds now
    #: The object the site is in (armlp.objects.PROGRAM or a library's soname).
    object: str = PROGRAM
    #: Where the site calls mcount as built (its object's own PLT entry,
    #: bit 0 set for Thumb): the word it holds before ftrace_init.
    mcount: int = 0

    @property
    def thumb(self) -> bool:
        """The site is Thumb code (T32 words, halfword aligned)."""
        return self.report.fn.mode == "thumb"

    @property
    def tracks_entry(self) -> bool:
        """Whether the function's first word is armlp's to change: an ARM
        function's; a Thumb function's entry shares its first halfwords with
        the ``push {lr}`` and the site, so it is never rewritten."""
        return not self.thumb

    @property
    def direct_ops(self) -> FtraceOps | None:
        """The sole user, when it asks for the fast path."""
        if len(self.users) == 1 and self.users[0].direct is not None:
            return self.users[0]
        return None

    @property
    def name(self) -> str:
        return self.report.fn.label


class Ftrace:
    """ftrace on one target: the records of every site and their users."""

    def __init__(self, machine: Machine, scan: ScanResult, runtime: Runtime | None = None,
                 heap: TargetHeap | None = None,
                 libraries: Mapping[str, ScanResult] | None = None) -> None:
        self.machine = machine
        self.scan = scan
        #: Every object's scan: the program's, and each shared library's by
        #: soname (the kernel's klp_objects: vmlinux and the modules).
        self.objects: dict[str, ScanResult] = {PROGRAM: scan, **(libraries or {})}
        self._runtime = runtime
        self.records: dict[int, DynFtrace] = {}
        self.ops: list[FtraceOps] = []
        self.veneers = VeneerPool(machine)
        #: The target's small-structure heap (ops, records); the target's,
        #: shared with livepatch, made here only when ftrace is used alone.
        self.heap = heap or TargetHeap(machine, near=self._text_address(),
                                       quarantine=machine.quarantine_heap)
        self._active: dict[int, DynFtrace] = {}          # sites with users
        self._sites_of: dict[int, list[DynFtrace]] = {}  # id(ops) -> its sites
        self.mcount = self._mcount_address(scan)
        for name, result in self.objects.items():
            self._add_records(name, result)
        self._initialised = False
        self._table = 0             # the published struct armlp_site_table

    def _add_records(self, name: str, result: ScanResult) -> list[DynFtrace]:
        """Records for the sites of object *name*, ARM and Thumb (none for a
        library not built with -pg)."""
        found = {self.mcount} if name == PROGRAM else mcount_addresses(result.image)
        if len(found) != 1:
            return []
        mcount = min(found)
        # By site: aliases share one (the last symbol names it).
        recs = {rep.site: DynFtrace(rep.site, rep, object=name, mcount=mcount)
                for rep in result.functions if rep.site is not None}
        self.records.update(recs)
        return list(recs.values())

    def _text_address(self) -> int | None:
        text = self.scan.image.section(".text")
        return text.addr if text is not None else None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise FtraceError("the runtime is not loaded")
        return self._runtime

    @runtime.setter
    def runtime(self, value: Runtime) -> None:
        self._runtime = value

    @staticmethod
    def _mcount_address(scan: ScanResult) -> int:
        """``__gnu_mcount_nc``'s address in the program, with bit 0 set when
        it is Thumb code (armhf's libc): ARM sites then call it with ``blx``."""
        found = mcount_addresses(scan.image)
        if len(found) != 1:
            raise FtraceError(f"{scan.image.path}: no __gnu_mcount_nc: not built with -pg "
                              f"(rebuild it with -pg, and -marm -mapcs-frame for ARM code "
                              f"or -mthumb -funwind-tables for Thumb-2)")
        return found.pop()

    def mcount_call(self, ip: int, mcount: int | None = None, thumb: bool = False) -> int:
        """The word a site at *ip* (ARM, or Thumb with *thumb*) holds as
        built: ``bl`` or ``blx`` *mcount* (default: the program's)."""
        return site_branch("bl", ip, self.mcount if mcount is None else mcount, thumb)

    # -- init ---------------------------------------------------------------

    def ftrace_init(self) -> None:
        """Write every record and the lookup table, then turn every site into
        the NOP (all or nothing: a site not holding ``bl __gnu_mcount_nc``
        stops the whole init before any code write)."""
        if self._initialised:
            return
        self.check_unmodified()
        self._init_sites(list(self.records.values()))
        self._initialised = True

    def _init_sites(self, recs: list[DynFtrace]) -> None:
        """Write *recs* (new records, their sites as built), publish a table
        that has them, then turn their sites into the NOP."""
        base = self.machine.alloc(max(SITE.size * len(recs), 4))
        blob = bytearray()
        for i, rec in enumerate(recs):
            rec.record = base + i * SITE.size
            blob += self._pack_record(rec)
        self.machine.write(base, bytes(blob))
        self._publish_table()
        writes = []
        for rec in recs:
            rec.entry_orig = rec.entry_word = read_word(self.machine, rec.report.fn.address)
        for rec in recs:
            old, nop = self.mcount_call(rec.ip, rec.mcount, rec.thumb), nop_word(rec.thumb)
            writes.append(CodeWrite(rec.ip, struct.pack("<I", old), struct.pack("<I", nop)))
            rec.word = nop
        self.machine.write_code(writes)

    def _publish_table(self) -> None:
        """A new lookup table of every record, published with one word
        (``armlp_sites``) written while every thread is stopped; the old
        one stays allocated (a thread may be reading it)."""
        bits, slots = build_site_table({r.ip: r.record for r in self.records.values()})
        table = self.machine.alloc(SITE_TABLE.size + 4 * len(slots))
        self.machine.write(table, SITE_TABLE.pack(bits, table + SITE_TABLE.size)
                           + struct.pack(f"<{len(slots)}I", *slots))
        where = self.runtime.symbol("armlp_sites")
        self.machine.write_code([CodeWrite(where, struct.pack("<I", self._table),
                                           struct.pack("<I", table))])
        self._table = table

    # -- objects ------------------------------------------------------------

    def add_object(self, name: str, result: ScanResult) -> list[DynFtrace]:
        """A library just mapped (none of its code has run): its records,
        checked, written and published, and its sites turned into the NOP,
        as ftrace_module_init does for a coming module."""
        if name in self.objects:
            raise FtraceError(f"object {name!r} is already known")
        self.objects[name] = result
        recs = self._add_records(name, result)
        try:
            self.check_unmodified(recs)
            if recs and self._initialised:
                self._init_sites(recs)
        except BaseException:
            self._forget(name)
            raise
        return recs

    def remove_object(self, name: str) -> None:
        """A library gone (unmapped): its records and their users are
        forgotten without a write to its code, as ftrace_release_mod does."""
        if name == PROGRAM or name not in self.objects:
            return
        gone = self._forget(name)
        for ops in list(self.ops):
            sites = self._sites_of.get(id(ops), [])
            if sites and all(rec in gone for rec in sites):
                self.ops.remove(ops)
                del self._sites_of[id(ops)]
            elif sites:
                self._sites_of[id(ops)] = [r for r in sites if r not in gone]
        if self._initialised:
            self._publish_table()

    def _forget(self, name: str) -> list[DynFtrace]:
        del self.objects[name]
        gone = [rec for rec in self.records.values() if rec.object == name]
        for rec in gone:
            del self.records[rec.ip]
            self._active.pop(rec.ip, None)
        return gone

    def check_unmodified(self, recs: Iterable[DynFtrace] | None = None) -> None:
        """Every site (of *recs*, default all) must still hold ``bl
        __gnu_mcount_nc``: anything else means another tool (or a previous
        armlp) owns the program's code."""
        for rec in self.records.values() if recs is None else recs:
            found = read_word(self.machine, rec.ip)
            if found != self.mcount_call(rec.ip, rec.mcount, rec.thumb):
                raise CodeModificationError(
                    f"site of {rec.name} at {rec.ip:#x} holds {found:#010x}, not "
                    f"'bl __gnu_mcount_nc': the code is not as built, refusing to touch it")

    def _pack_record(self, rec: DynFtrace) -> bytes:
        v = rec.report.verdict
        undo = v.undo
        fp_slot = -1
        if undo is not None and v.rule == "push":
            fp = 7 if rec.thumb else 11
            fp_slot = next((off for reg, off in undo.loads if reg == fp), -1)
        rule = RULES[v.rule] if v.patchable else 0
        flags = SITE_FL_THUMB if rec.thumb else 0
        return SITE.pack(rec.ip, rec.report.fn.address, rule, 0, flags,
                         undo.frame_size if undo else 0, fp_slot, *([0] * 2 * SITE_MAX_OPS))

    # -- ops ----------------------------------------------------------------

    def register_ftrace_function(self, ops: FtraceOps) -> list[DynFtrace]:
        """Add a user; returns the sites it got.  Refuses a filter that
        matches nothing and a site that would have too many users."""
        return self.register_ftrace_functions([ops])[0]

    def register_ftrace_functions(self, opss: list[FtraceOps]) -> list[list[DynFtrace]]:
        """Add several users with one batch of code writes, all or nothing."""
        self.ftrace_init()
        plan: list[tuple[FtraceOps, list[DynFtrace]]] = []
        for ops in opss:
            if ops in self.ops or any(ops is o for o, _ in plan):
                raise FtraceError(f"ops {ops.name} is already registered")
            if ops.ips is not None:
                sites = [self.records[ip] for ip in sorted(ops.ips) if ip in self.records]
            else:
                sites = [r for r in self.records.values() if ops.wants(r)]
            if not sites:
                what = ", ".join(ops.filters) if ops.filters else "its sites"
                raise FtraceError(f"ops {ops.name}: no mcount site matches {what}")
            full = [r.name for r in sites if len(r.users) >= SITE_MAX_OPS]
            if full:
                raise FtraceError(f"ops {ops.name}: site of {full[0]} already has "
                                  f"{SITE_MAX_OPS} users")
            plan.append((ops, sites))
        touched: dict[int, DynFtrace] = {}
        for ops, sites in plan:
            self._alloc_ops(ops)
            self.ops.append(ops)
            self._sites_of[id(ops)] = sites
            for r in sites:
                r.users.append(ops)
                touched[r.ip] = r
                self._active[r.ip] = r
        try:
            self._update(touched.values())
        except ArmlpError:
            for ops, sites in plan:
                for r in sites:
                    r.users.remove(ops)
                    if not r.users:
                        self._active.pop(r.ip, None)
                self.ops.remove(ops)
                del self._sites_of[id(ops)]
            # The code writes did not happen (compare-and-swap): only the
            # records' users and the list function need their old values.
            for r in touched.values():
                self._write_record_users(r)
            self._update_trace_function()
            for ops, _ in plan:
                self._free_ops(ops)
            raise
        return [sites for _, sites in plan]

    def unregister_ftrace_function(self, ops: FtraceOps) -> None:
        self.unregister_ftrace_functions([ops])

    def unregister_ftrace_functions(self, opss: list[FtraceOps], *,
                                    stale_ok: bool = False) -> None:
        """Remove several users with one batch of code writes (*stale_ok*:
        see Machine.write_code)."""
        for ops in opss:
            if ops not in self.ops:
                raise FtraceError(f"ops {ops.name} is not registered")
        touched: dict[int, DynFtrace] = {}
        for ops in opss:
            for r in self._sites_of.pop(id(ops)):
                r.users.remove(ops)
                if not r.users:
                    self._active.pop(r.ip, None)
                touched[r.ip] = r
            self.ops.remove(ops)
        self._update(touched.values(), stale_ok=stale_ok)
        for ops in opss:
            self._free_ops(ops)

    def _alloc_ops(self, ops: FtraceOps) -> None:
        addr = self.heap.alloc(2 * OPS.size)
        ops.address, ops.regs_address = addr, addr + OPS.size
        regs_func = ops.regs_func if ops.regs_func is not None else ops.func
        self.machine.write(addr, OPS.pack(ops.func, ops.flags, ops.private)
                           + OPS.pack(regs_func, ops.flags, ops.private))

    def _free_ops(self, ops: FtraceOps) -> None:
        if ops.address:
            self.heap.free(ops.address)
            ops.address = ops.regs_address = 0

    # -- call modification ----------------------------------------------------

    def wanted_word(self, rec: DynFtrace) -> int:
        """What the site should hold for its current users."""
        if not rec.users:
            return nop_word(rec.thumb)
        direct = rec.direct_ops
        if direct is not None and direct.direct is not None:
            return self._branch_word(rec.ip, direct.direct, rec.thumb)
        target = self.runtime.symbol(
            "ftrace_regs_caller" if any(u.save_regs for u in rec.users) else "ftrace_caller")
        return self._call_word(rec.ip, target, rec.thumb)

    def wanted_entry(self, rec: DynFtrace) -> int:
        """What the function's first word should hold."""
        direct = rec.direct_ops
        if direct is not None and direct.direct_entry is not None and rec.tracks_entry:
            return self._branch_word(rec.report.fn.address, direct.direct_entry, False)
        return rec.entry_orig

    def _branch_word(self, at: int, target: int, thumb: bool) -> int:
        """``b target``: a fast path's trampoline is in the site's own
        instruction set (a branch does not change it)."""
        if bool(target & 1) != thumb:
            raise FtraceError(f"a branch at {at:#x} cannot reach {target:#x}: "
                              f"{'Thumb' if thumb else 'ARM'} code branching to the other set")
        if not site_in_range(at, target, thumb):
            if thumb:
                raise FtraceError(f"{target:#x} is out of a Thumb branch's range of {at:#x}")
            target = self.veneers.get(at, target)
        return site_branch("b", at, target, thumb)

    def set_directs(self, changes: Sequence[tuple[FtraceOps, int | None, int | None]], *,
                    stale_ok: bool = False) -> None:
        """Move registered ops' fast paths (``(ops, direct, direct_entry)``:
        e.g. a func stack's top changed) with one code update (one stop of
        the program, as the kernel's ftrace_modify_all_code); *stale_ok*:
        see Machine.write_code."""
        if not changes:
            return
        for ops, direct, direct_entry in changes:
            ops.direct, ops.direct_entry = direct, direct_entry
        moved = {id(ops) for ops, _, _ in changes}
        self._update([r for r in self.records.values()
                      if any(id(u) in moved for u in r.users)], stale_ok=stale_ok)

    def _call_word(self, ip: int, target: int, thumb: bool) -> int:
        """``bl`` (``blx`` from Thumb) to an ARM trampoline, through a veneer
        out of range."""
        if not site_in_range(ip, target, thumb):
            target = self.veneers.get(ip, target, thumb)
        return site_branch("bl", ip, target, thumb)

    def _update(self, recs: Iterable[DynFtrace], *, stale_ok: bool = False) -> None:
        """Bring *recs* to the state their users want.

        The records' user lists are written before any site starts calling a
        trampoline (both flavours, so either trampoline finds valid users at
        any instant), the plain path's function next, the code words last.
        """
        recs = list(recs)
        # Only the program's text stays mapped for sure: a library's pages
        # may be gone (dlclose) before a postponed drop would reach them.
        stale_ok = stale_ok and all(r.object == PROGRAM for r in recs)
        self._check_words(recs)
        writes: list[CodeWrite] = []
        wanted: list[tuple[DynFtrace, int]] = []
        entries: list[tuple[DynFtrace, int]] = []
        for rec in recs:
            self._write_record_users(rec)
            want = self.wanted_word(rec)
            wanted.append((rec, want))
            if want != rec.word:
                writes.append(CodeWrite(rec.ip, struct.pack("<I", rec.word),
                                        struct.pack("<I", want)))
            entry = self.wanted_entry(rec)
            entries.append((rec, entry))
            if entry != rec.entry_word and rec.tracks_entry:
                writes.append(CodeWrite(rec.report.fn.address, struct.pack("<I", rec.entry_word),
                                        struct.pack("<I", entry)))
        self._update_trace_function()
        self.machine.write_code(writes, stale_ok=stale_ok)
        for rec, want in wanted:
            rec.word = want
        for rec, entry in entries:
            rec.entry_word = entry

    def _check_words(self, recs: list[DynFtrace]) -> None:
        """Refuse before any write if a site no longer holds what we wrote."""
        for rec in recs:
            checks = [(rec.ip, rec.word, "site")]
            if rec.tracks_entry:
                checks.append((rec.report.fn.address, rec.entry_word, "entry"))
            for addr, want, what in checks:
                found = read_word(self.machine, addr)
                if found != want:
                    raise CodeModificationError(
                        f"{what} of {rec.name} at {addr:#x} holds {found:#010x}, expected "
                        f"{want:#010x}: changed under armlp, not touching it")

    def _write_record_users(self, rec: DynFtrace) -> None:
        """Publish the site's users to threads that read them while this runs.

        A user keeps its slot for as long as it is registered, so a reader
        sees each slot hold the old user, the new one or NULL (which the
        runtime skips), never a neighbour shifted into it.  Ordering: new
        slots are filled before ``nops`` grows; ``nops`` shrinks before the
        slots of users that went are cleared.  Each word is written on its
        own (aligned, one store for a running reader)."""
        gone = [i for i, u in enumerate(rec.slots) if u is not None and u not in rec.users]
        slots = [None if i in gone else u for i, u in enumerate(rec.slots)]
        for u in rec.users:
            if u not in slots:
                free = slots.index(None)
                slots[free] = u
                self._write_slot(rec, free, u.address, u.regs_address)
        nops = max((i + 1 for i, u in enumerate(slots) if u is not None), default=0)
        self.machine.write(rec.record + SITE_NOPS_OFFSET, bytes([nops]))
        for i in gone:
            if slots[i] is None:
                self._write_slot(rec, i, 0, 0)
        rec.slots = slots

    def _write_slot(self, rec: DynFtrace, i: int, plain: int, regs: int) -> None:
        base = rec.record + SITE_OPS_OFFSET
        write_word(self.machine, base + 4 * i, plain)
        write_word(self.machine, base + 4 * (SITE_MAX_OPS + i), regs)

    def _update_trace_function(self) -> None:
        """The kernel's ftrace_trace_function: one plain user everywhere is
        called directly; otherwise the list function looks the site up."""
        plain_users = {id(u): u for r in self._active.values()
                       if not any(x.save_regs for x in r.users) for u in r.users}
        rt = self.runtime
        if len(plain_users) == 1:
            only = next(iter(plain_users.values()))
            func, op = only.func, only.address
        elif plain_users:
            func, op = rt.symbol("armlp_ftrace_list_func"), 0
        else:
            func, op = rt.symbol("armlp_ftrace_stub"), 0
        write_word(self.machine, rt.symbol("armlp_ftrace_op"), op)
        write_word(self.machine, rt.symbol("armlp_ftrace_function"), func)

    # -- queries --------------------------------------------------------------

    @property
    def active_records(self) -> list[DynFtrace]:
        """Sites that have users now (ftrace's enabled_functions)."""
        return list(self._active.values())

    def site_word(self, ip: int) -> int:
        return read_word(self.machine, ip)

    def check_sites(self) -> None:
        """Verify every site holds what the records say (raise otherwise)."""
        self._check_words(list(self.records.values()))

    def find_function(self, name: str, sympos: int | None = None,
                      obj: str = PROGRAM) -> DynFtrace:
        rep = self.object_scan(obj).find(name, sympos)
        if rep.site is None or rep.site not in self.records:
            raise FtraceError(f"{rep.fn.label} has no mcount site armlp can use")
        return self.records[rep.site]

    def object_scan(self, name: str) -> ScanResult:
        """The scan of object *name* (PROGRAM or a library's soname)."""
        result = self.objects.get(name)
        if result is None:
            libs = sorted(n for n in self.objects if n != PROGRAM)
            raise FtraceError(f"object {name!r} is not loaded in the program (shared "
                              f"libraries: {', '.join(libs) or 'none'})")
        return result
