"""The livepatch core: patch modules, func stacks, enable and disable.

Split as the kernel's kernel/livepatch/: ``patch`` reads a patch module
(klp_patch / klp_object / klp_func), ``core`` enables and disables patches on
a target and keeps each patched function's func stack.
"""

from armlp.livepatch.core import Livepatch
from armlp.livepatch.patch import KlpFunc, KlpObject, KlpPatch, read_patch

__all__ = ["KlpFunc", "KlpObject", "KlpPatch", "Livepatch", "read_patch"]
