"""Enabling and disabling patches (kernel/livepatch/core.c).

Enabling a patch loads its module, runs its callbacks at the kernel's points
and pushes a node on each of its functions' func stacks
(:mod:`armlp.livepatch.patch`: one aligned word write switches a function
over); disabling unlinks the patch's nodes wherever they are in the stacks,
so the function falls back to the next older patch, or to its own code when
the stack empties, and frees the module once nothing can reach it.

Both are transitions (:mod:`armlp.livepatch.transition`): threads switch
one by one, each when none of the functions being switched is on its
stack; :meth:`Livepatch.try_complete` retries, :meth:`Livepatch.force`
switches the rest.  Every check runs before the first write, and a failure
half-way is rolled back to the exact state before.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from pathlib import Path

from armlp.analysis.unwind import CodeMap
from armlp.elf.image import ElfImage
from armlp.errors import ArmlpError, MachineError, PatchError, PatchRefusedError, StubStalledError
from armlp.ftrace.core import FtraceOps
from armlp.ftrace.sitecode import nop_word
from armlp.livepatch import liveness
from armlp.livepatch.codemap import TargetCode
from armlp.livepatch.module import KlpFunc, KlpObject, KlpPatch, read_patch, relocate_patch
from armlp.livepatch.patch import FuncStack, FuncStacks
from armlp.livepatch.state import KlpStates, check_compatible
from armlp.livepatch.transition import Transition
from armlp.loader.relocate import THUMB_BRANCH_TYPES
from armlp.machine.base import CodeWrite, read_word
from armlp.machine.heap import CHUNK
from armlp.runtime.layout import (
    KLP_FUNC_NODE,
    KLP_PATCHED,
    KLP_THREAD,
    KLP_TRANSITION,
    KLP_UNPATCHED,
)
from armlp.target import Target


class Livepatch:
    """The livepatch core of one target."""

    def __init__(self, target: Target, *, fast: bool = True) -> None:
        self.target = target
        self.fast = fast
        self.machine = target.machine
        self.ftrace = target.ftrace
        self.heap = target.heap
        self.funcs = FuncStacks(target, fast=fast)
        self.patches: list[KlpPatch] = []
        self.deferred: list[KlpPatch] = []
        self._next_id = 1
        self.states = KlpStates(self.heap, target.runtime)
        #: The transition in progress (one at a time, as in the kernel).
        self.transition: Transition | None = None
        #: The kernel's livepatch messages, at the kernel's points, in order
        #: (``livepatch: 'NAME': starting patching transition``...): what
        #: the ported selftests compare (tests/test_selftests.py).
        self.log: list[str] = []
        #: When set, returns what the program printed since the last call;
        #: its lines are put in the log where they happened (a callback's).
        self.console: Callable[[], str] | None = None
        self._table = 0
        self._table_cap = 0
        self._code = TargetCode(target)
        self._exports: dict[str, int] | None = None
        #: Set by a caller that frees later on its own (the controller's
        #: release timer): a disabled patch then only joins :attr:`deferred`,
        #: and its free is no part of the transition, as the kernel frees a
        #: patch from a work item after it (klp_free_patch_work_fn).
        self.free_later = False

    def _log(self, msg: str) -> None:
        self.drain_console()
        self.log.append(f"livepatch: {msg}")

    def drain_console(self) -> None:
        if self.console is not None:
            self.log += self.console().splitlines()

    # -- loading and checking ---------------------------------------------------

    def load(self, path: str | Path) -> KlpPatch:
        """Read a patch module and check it against the target (no writes)."""
        patch = self.read(path)
        self.check(patch)
        return patch

    def read(self, path: str | Path) -> KlpPatch:
        """Read, lay out and resolve a patch module: all the checks that do
        not look at the target's memory (a live target keeps running)."""
        return read_patch(path, self.target.image, self.exports, libraries=self.libraries)

    def check(self, patch: KlpPatch) -> None:
        """Everything that can be checked before writing: build-id, each
        function exists, is patchable, and its site is as armlp left it."""
        image = self.target.image
        # A patch is bound (armlp cflags --target) to the program or to one
        # of the libraries it has loaded.
        ids = {image.build_id, *(lib.image.build_id for lib in self.target.loaded)}
        if patch.target_build_id and patch.target_build_id not in ids:
            raise PatchError(f"{patch.path}: built for the program with build-id "
                             f"{patch.target_build_id}, not {image.path} "
                             f"({image.build_id or 'no build-id'}) or a library it has "
                             f"loaded")
        if any(p.name == patch.name for p in self.patches):
            raise PatchError(f"a patch named {patch.name!r} is already enabled")
        try:
            check_compatible(self.patches, patch)
        except PatchError:
            self._log(f"Livepatch patch ({patch.name}) is not compatible with the already "
                      f"installed livepatches.")
            raise
        for o in patch.objects:
            self._check_object(patch, o)

    def _check_object(self, patch: KlpPatch, o: KlpObject) -> None:
        """Each function of *o* exists, is patchable and its site is as armlp
        left it; sets where it is.  An object not loaded is checked when it
        loads (armlp.objects), if the program can load libraries at all."""
        if not o.funcs:
            return
        if o.name not in self.ftrace.objects and self.target.follows_libraries:
            for f in o.funcs:
                f.old_addr = f.site = 0
            return
        try:
            result = self.ftrace.object_scan(o.name)
        except ArmlpError as exc:
            raise PatchError(f"{patch.path}: {exc}") from None
        for f in o.funcs:
            rep = result.find(f.old_name, f.old_sympos or None)
            if not rep.verdict.patchable:
                raise PatchError(f"{patch.path}: {rep.fn.label} is not patchable: "
                                 f"{rep.verdict.reason}")
            rec = self.ftrace.records.get(rep.site or -1)
            if rec is None:
                raise PatchError(f"{patch.path}: {rep.fn.label} has no usable mcount site")
            found = read_word(self.machine, rec.ip)
            if found != rec.word:
                raise PatchError(f"{patch.path}: site of {rep.fn.label} at {rec.ip:#x} holds "
                                 f"{found:#010x}, expected {rec.word:#010x}")
            f.old_addr, f.site = rep.fn.address, rec.ip

    # -- objects that come and go ---------------------------------------------------

    def object_coming(self, name: str) -> list[str]:
        """A library just mapped, none of its code run yet (the kernel's
        klp_module_coming): each enabled patch's functions in it are pushed
        and switched for every thread at once — no thread can be in code
        that has never run.  Returns the patches that changed it."""
        done = []
        for patch in self.patches:
            for o in patch.objects:
                if o.name != name or o.patched:
                    continue
                self._check_object(patch, o)
                undo: list[Callable[[], None]] = []
                try:
                    # Nodes out of transition: the handler never looks at
                    # threads for code no thread has run.
                    self._push(patch, o.funcs, undo, transition=False)
                except BaseException:
                    for action in reversed(undo):
                        action()
                    for f in o.funcs:
                        f.site = 0
                    raise
                self.funcs.settle(self.stacks[f.site] for f in o.funcs)
                o.patched = True
                done.append(patch.name)
        return done

    def object_going(self, name: str) -> list[str]:
        """A library unmapped (the kernel's klp_module_going): its functions
        leave every func stack without a write to its code, which is gone;
        the patches' other objects stay patched.  Returns the patches that
        had changed it."""
        done = []
        sites = {rec.ip for rec in self.ftrace.records.values() if rec.object == name}
        for patch in [*self.patches, *self.deferred]:
            for o in patch.objects:
                if o.name == name and o.patched:
                    o.patched = False
                    done.append(patch.name)
                for f in o.funcs:
                    if f.site in sites:
                        f.site = 0
            patch.nops = [f for f in patch.nops if f.site not in sites]
        for site in sites:
            self.funcs.by_site.pop(site, None)
        t = self.transition
        if t is not None:       # what it still waits for is not in the gone code
            t.funcs = [f for f in t.funcs if f.site]
        self.ftrace.remove_object(name)
        return done

    # -- enable -----------------------------------------------------------------

    def enable(self, patch: KlpPatch) -> None:
        """Load the module and push its functions on their stacks, all or
        nothing, and start the transition to it (tried at once)."""
        if patch.enabled:
            raise PatchError(f"patch {patch.name} is already enabled")
        self._not_busy()
        self.check(patch)
        self._log(f"enabling patch '{patch.name}'")
        undo: list[Callable[[], None]] = []
        try:
            self._enable(patch, undo)
        except BaseException as exc:
            for action in reversed(undo):
                action()
            self._log(f"failed to enable patch '{patch.name}'")
            if isinstance(exc, PatchRefusedError):
                self._log(f"'{patch.name}': canceling patching transition, going to unpatch")
                self._log(f"'{patch.name}': completing unpatching transition")
                self._log(f"'{patch.name}': unpatching complete")
            raise
        patch.enabled = True
        for o in patch.objects:
            o.patched = o.name in self.ftrace.objects
        self.patches.append(patch)
        self._log(f"'{patch.name}': starting patching transition")
        assert self.transition is not None
        self.transition.written()
        self.try_complete()

    def _enable(self, patch: KlpPatch, undo: list[Callable[[], None]]) -> None:
        m = self.machine
        image = self.target.image
        exports = self.exports
        size = patch.size or relocate_patch(patch, image, exports, 0x10000000,
                                            self.libraries).size
        text = image.section(".text")
        mem = m.alloc(size, near=text.addr if text else None)
        undo.append(lambda: m.free(mem, size))
        patch.memory, patch.memory_size = mem, size
        module = relocate_patch(patch, image, exports, mem, self.libraries)
        patch.module = module
        module.write_to(m)
        self._nop_module_sites(patch)
        self.states.alloc(patch)
        undo.append(lambda: self.states.free(patch))
        # Ordering: pre_patch runs in the loaded module before any site changes.
        self._log(f"'{patch.name}': initializing patching transition")
        rc = self._callback(patch, "pre_patch")
        if rc:
            self._log(f"pre-patch callback failed for object '{self._object_name(patch)}'")
            raise PatchRefusedError(f"{patch.name}: pre_patch callback refused the patch "
                                    f"({rc}); nothing changed")
        patch.id = self._next_id
        self._next_id += 1
        # Ordering: every stack in the unpatched state before any node is
        # marked transition (push marks them).
        transition = Transition(self, patch, KLP_PATCHED)
        transition.fill_table(undo)
        patch.nops = self._nops(patch) if patch.replace else []
        transition.funcs = [*patch.placed, *patch.nops]
        self._push(patch, transition.funcs, undo)
        self.transition = transition

        def no_transition() -> None:
            self.transition = None
        undo.append(no_transition)

    def _push(self, patch: KlpPatch, funcs: list[KlpFunc], undo: list[Callable[[], None]],
              *, transition: bool = True) -> None:
        """Push *funcs* on their func stacks (nodes marked *transition*),
        then send their sites to the handler: the new trampolines in one
        batch, every newly patched function in one batch of code writes."""
        new_ops: list[FtraceOps] = []
        tramps: list[CodeWrite] = []
        for f in funcs:
            ops = self.funcs.push(patch.id, f, undo, tramps, transition=transition)
            if ops is not None:
                new_ops.append(ops)
        self.machine.write_code(tramps, unused=True)     # new heap blocks: nothing runs them
        if new_ops:
            self.ftrace.register_ftrace_functions(new_ops)

            def unregister() -> None:
                for ops in new_ops:
                    self.ftrace.unregister_ftrace_function(ops)
            undo.append(unregister)

    def _nops(self, patch: KlpPatch) -> list[KlpFunc]:
        """A nop func for every function an enabled patch changed that the
        replace does not: during the transition a switched thread runs the
        original there, the others what they had (kernel/livepatch/core.c's
        klp_add_nops)."""
        covered = {f.site for f in patch.placed}
        nops: list[KlpFunc] = []
        for old in self.patches:
            for f in old.placed:
                if f.site not in covered:
                    covered.add(f.site)
                    nops.append(KlpFunc(f.old_name, f.old_sympos, 0, "(nop)", f.old_addr,
                                        f.site))
        return nops

    def _discard_nops(self, patch: KlpPatch) -> None:
        """The replace is complete: its nop funcs go, and functions only they
        kept patched go back to the NOP (klp_discard_nops).  Their nodes
        stay allocated: a thread may still be reading one."""
        emptied = [st for f in patch.nops if (st := self.funcs.unlink(f)) is not None]
        self.funcs.drop(emptied)
        patch.nops = []

    def _nop_module_sites(self, patch: KlpPatch) -> None:
        """The replacements' own mcount sites become the NOP (they are not
        ftrace records yet, so nothing would ever enable them)."""
        module = patch.module
        assert module is not None
        call = self.ftrace.mcount_call
        writes = []
        for sec in patch.image.sections:
            if not sec.is_exec:
                continue
            try:
                loaded = module.section(sec.name, str(patch.image.path))
            except ArmlpError:
                continue
            for rel in patch.image.relocations_for(sec):
                if rel.symbol.name == "__gnu_mcount_nc":
                    addr = loaded.address + rel.offset
                    thumb = rel.type in THUMB_BRANCH_TYPES
                    writes.append(CodeWrite(addr, struct.pack("<I", call(addr, thumb=thumb)),
                                            struct.pack("<I", nop_word(thumb))))
        self.machine.write_code(writes, unused=True)      # nothing runs them yet

    # -- disable ------------------------------------------------------------------

    def disable(self, patch: KlpPatch) -> None:
        """Start the transition away from *patch* (tried at once); disabling
        the patch being enabled reverses its transition, as the kernel does."""
        t = self.transition
        if t is not None and t.patch is patch and t.target == KLP_PATCHED:
            self._log(f"'{patch.name}': reversing transition from patching to unpatching")
            t.reverse()
            patch.enabled = False
            self.try_complete()
            return
        if not patch.enabled:
            raise PatchError(f"patch {patch.name} is not enabled")
        self._not_busy()
        self._log(f"'{patch.name}': initializing unpatching transition")
        self._callback(patch, "pre_unpatch")
        self._log(f"'{patch.name}': starting unpatching transition")
        t = Transition(self, patch, KLP_UNPATCHED)
        t.fill_table()
        # Only a function whose top is this patch changes where calls go.
        top = [f for f in patch.placed if self.stacks[f.site].funcs[-1] is f]
        self.funcs.unsettle(self.stacks[f.site] for f in top)
        t.mark(top)
        patch.enabled = False
        self.transition = t
        t.written()
        self.try_complete()

    def try_complete(self) -> bool:
        """One attempt to switch the remaining threads; completes the
        transition when none is left (True, also when none is open)."""
        t = self.transition
        if t is None:
            return True
        try:
            if not t.try_switch():
                return False
        except StubStalledError:
            # A held thread had a lock the stub needed (armlp.machine.gdb's
            # all_stopped let them go): the next attempt checks again.
            return False
        self._complete(t)
        return True

    def force(self) -> Transition:
        """Switch every thread now, checked or not, and complete."""
        t = self.transition
        if t is None:
            raise PatchError("no patch is in transition")
        self._log(f"'{t.patch.name}': forcing remaining threads to the "
                  f"{'patched' if t.target == KLP_PATCHED else 'unpatched'} state")
        t.force()
        self._complete(t)
        return t

    def _complete(self, t: Transition) -> None:
        self.transition = None
        patch = t.patch
        what = "patching" if t.target == KLP_PATCHED else "unpatching"
        self._log(f"'{patch.name}': completing {what} transition")
        self._complete_state(t)
        self._log(f"'{patch.name}': {what} complete")

    def _complete_state(self, t: Transition) -> None:
        patch = t.patch
        if t.target == KLP_PATCHED:
            # Ordering: flags cleared first, then the fast path comes back.
            t.unmark()
            self.funcs.settle(self.stacks[f.site] for f in patch.placed)
            replaced = [p for p in self.patches if p is not patch] if patch.replace else []
            for old in replaced:    # the others go now; their callbacks do not run
                self._unpatch(old)
            if patch.replace:
                self._discard_nops(patch)
            # Ordering: the replaced patches are still listed for post_patch,
            # which may take over their states (klp_get_prev_state).
            self._callback(patch, "post_patch")
            for old in replaced:
                self._forget(old)
        else:
            self._unpatch(patch)
            # Ordering: post_unpatch runs while the module's memory is still
            # there, and the patch still listed.
            self._callback(patch, "post_unpatch")
            self._forget(patch)

    def _not_busy(self) -> None:
        if self.transition is not None:
            p = self.transition.patch
            raise PatchError(f"patch {p.name} is in transition: wait for it to finish, or "
                             f"force it")

    def _unpatch(self, patch: KlpPatch) -> None:
        """Unlink the patch's nodes from every stack (the kernel's
        klp_unpatch_objects)."""
        emptied = [st for f in [*patch.placed, *patch.nops]
                   if (st := self.funcs.unlink(f)) is not None]
        patch.nops = []
        self.funcs.drop(emptied)
        patch.enabled = False
        for o in patch.objects:
            o.patched = False

    def _forget(self, patch: KlpPatch) -> None:
        """Take the unpatched patch off the list; free its memory when no
        thread can be executing or returning into it (else, or when
        :attr:`free_later`, defer)."""
        self.patches.remove(patch)
        self.deferred.append(patch)
        if not self.free_later:
            self.release_deferred()

    @staticmethod
    def _object_name(patch: KlpPatch) -> str:
        return next((o.name for o in patch.objects if o.name), "program")

    def _callback(self, patch: KlpPatch, kind: str) -> int:
        """Run the patch's *kind* callback in the target (signed r0; 0 if none).
        Its argument is a ``struct klp_object`` whose name is NULL: the
        program (the kernel passes vmlinux's so)."""
        addr = patch.callbacks.get(kind)
        if addr is None:
            return 0
        listed = self.patches if patch in self.patches else [*self.patches, patch]
        self.states.enter_callback(listed, patch)
        try:
            rc = self.machine.call(addr, [patch.klp])
        finally:
            self.states.leave_callback()
        return rc - (1 << 32) if rc & 0x80000000 else rc

    def release_deferred(self) -> list[KlpPatch]:
        """Free the memory of disabled patches nothing can reach any more.

        The proof is a copy of every thread's registers and stack and of the
        program's writable memory, taken with all threads stopped (the
        emulator, gdbserver, qemu-user frozen with ptrace): see
        :mod:`armlp.livepatch.liveness`.  A disabled patch is unreachable from
        armlp's own structures, so what nothing refers to now never will
        be, and the frees may follow the thaw.  Where threads cannot all be
        stopped (qemu-user's stub without ptrace) a scan proves nothing, and
        the memory stays until the program ends.
        """
        freed: list[KlpPatch] = []
        if not self.dead_tramps and not self.deferred:
            return freed
        try:
            with self.machine.all_stopped(registers=True) as stopped:
                if not stopped:
                    return freed
                snap = liveness.take(self.machine, own=self.machine.armlp_memory())
        except MachineError:
            return freed        # no proof this time (a stalled stub, no memory map...): later
        # Indirect ways in: a thread inside (or holding) a trampoline, a
        # veneer or a func node may still load a patch's address from it.
        derived: set[int] = set()
        for tramp, size in self.dead_tramps:
            if snap.refers(tramp, tramp + size):
                derived.add(read_word(self.machine, tramp + size - 4))     # its literal
        for (_pool, target), veneer in self.ftrace.veneers.by_target.items():
            if snap.refers(veneer, veneer + 8):
                derived.add(target)
        for patch in self.deferred:
            for f in patch.funcs:
                if f.node and snap.refers(f.node, f.node + KLP_FUNC_NODE.size):
                    derived.add(f.new_func)
        for tramp, size in list(self.dead_tramps):
            if not snap.refers(tramp, tramp + size):
                self.heap.free(tramp)
                self.dead_tramps.remove((tramp, size))
        snap.words |= derived
        for patch in list(self.deferred):
            if snap.refers(patch.memory, patch.memory + patch.memory_size):
                continue
            for f in patch.funcs:
                if f.node:
                    self.heap.free(f.node)
                    f.node = 0
            self.states.free(patch)
            self.machine.free(patch.memory, patch.memory_size)
            patch.memory = patch.memory_size = 0
            self.deferred.remove(patch)
            freed.append(patch)
        return freed

    # -- what transitions use -----------------------------------------------------------

    def transition_table(self, entries: int) -> int:
        """The target's ``struct klp_transition`` with room for *entries*
        rows.  A table outgrown is kept, not freed: a thread may still be
        reading it."""
        if entries > self._table_cap:
            cap = max(64, 2 * entries)
            while cap > 64 and KLP_TRANSITION.size + cap * KLP_THREAD.size > CHUNK:
                cap //= 2
            if cap < entries:
                raise PatchError(f"the program has {entries} writable mappings, more than a "
                                 f"transition table holds ({cap})")
            self._table = self.heap.alloc(KLP_TRANSITION.size + cap * KLP_THREAD.size)
            self._table_cap = cap
        return self._table

    def code_map(self) -> CodeMap:
        """The code a stack walk may meet now (:mod:`armlp.livepatch.codemap`)."""
        return self._code.code_map(p.module for p in [*self.patches, *self.deferred]
                                   if p.module is not None)

    # -- queries --------------------------------------------------------------------

    @property
    def exports(self) -> dict[str, int]:
        """What a patch links against besides the program's symbols: the
        runtime, mcount (a dynamically linked program reaches it through
        its PLT, so its symbol table has no address for it), and the global
        functions and data of the libraries armlp knows, where the program
        does not define the name (the dynamic linker's order)."""
        if self._exports is None:
            own = self.target.image.symbols
            libs: dict[str, int] = {}
            for lib in reversed(self.target.loaded):        # the lowest mapped wins
                with contextlib.suppress(ArmlpError):       # no .dynsym: exports nothing
                    libs.update(lib.image.exported)
            self._exports = {name: value for name, value in libs.items()
                             if not own.named(name)}
        return {**self._exports, "__gnu_mcount_nc": self.ftrace.mcount,
                **self.target.runtime.exports}

    @property
    def libraries(self) -> dict[str, ElfImage]:
        """The loaded libraries by soname, at their load addresses: what a
        patch's ``.klp.sym.<soname>.<name>,<sympos>`` names."""
        return {lib.soname: lib.image for lib in self.target.loaded}

    def forget_exports(self) -> None:
        """The libraries changed: :attr:`exports` is read again when next used."""
        self._exports = None

    @property
    def stacks(self) -> dict[int, FuncStack]:
        """The func stack of every patched function, by site."""
        return self.funcs.by_site

    @property
    def dead_tramps(self) -> list[tuple[int, int]]:
        return self.funcs.dead_tramps

    def find(self, name: str) -> KlpPatch:
        for p in self.patches:
            if p.name == name:
                return p
        raise PatchError(f"no enabled patch named {name!r}")

    def active(self, name: str, sympos: int | None = None) -> int:
        """Where a call of function *name* goes now (its address if unpatched)."""
        rep = self.target.scan.find(name, sympos)
        stack = self.stacks.get(rep.site or -1)
        return stack.funcs[-1].new_func if stack else rep.fn.address
