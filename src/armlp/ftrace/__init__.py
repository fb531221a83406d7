"""ftrace for ARM user space: site records, ops, code modification.

The control-plane half of the kernel's ftrace: every mcount site starts as
the NOP, users (:class:`FtraceOps`) register with filters, and each site
calls the trampoline its users need, written compare-and-swap.
"""

from armlp.ftrace.core import DynFtrace, Ftrace, FtraceOps

__all__ = ["DynFtrace", "Ftrace", "FtraceOps"]
