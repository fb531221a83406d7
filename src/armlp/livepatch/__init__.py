"""The livepatch core: patch modules, func stacks, enable and disable.

Split as the kernel's kernel/livepatch/: ``module`` reads a patch module
(klp_patch / klp_object / klp_func), ``patch`` keeps each patched function's
func stack and klp_ops, ``core`` enables and disables patches on a target
(with their callbacks), ``liveness`` proves when a disabled patch's memory
may go, ``sysfs`` is the status view, ``trampoline`` the fast path's code.
"""

from armlp.livepatch.core import Livepatch
from armlp.livepatch.module import KlpFunc, KlpObject, KlpPatch, read_patch

__all__ = ["KlpFunc", "KlpObject", "KlpPatch", "Livepatch", "read_patch"]
