"""The one exception hierarchy of armlp.

Every error a user can cause derives from :class:`ArmlpError`; the CLI turns
it into a single line and exit code 2.  Messages name the object involved
(file, section, relocation index, symbol) so the user can act on them.
"""

from __future__ import annotations


class ArmlpError(Exception):
    """Base of every error armlp reports to its user."""


class UsageError(ArmlpError):
    """The command line asks for something that cannot be (beyond what
    argparse checks)."""


class ElfError(ArmlpError):
    """A file is not an ELF armlp can read (format, class, machine, truncation)."""


class EncodingError(ArmlpError):
    """An instruction operand is outside the range its encoding can express."""


class AnalysisError(ArmlpError):
    """A function cannot be analysed as asked (unknown name, ambiguous sympos)."""


class SymbolError(ArmlpError):
    """A symbol is missing or ambiguous."""


class LoaderError(ArmlpError):
    """A relocatable object cannot be laid out, resolved or relocated."""


class MachineError(ArmlpError):
    """The target machine refused an operation or failed while running."""


class CodeModificationError(MachineError):
    """A code word was not the expected one: refuse to write over it."""


class StubLostError(MachineError):
    """The connection to the GDB stub ended (the process behind it is gone,
    or was never there)."""


class StubStalledError(MachineError):
    """The GDB stub did not answer while armlp held the other threads
    stopped; they were let go and the stub's late reply consumed."""


class PatchError(ArmlpError):
    """A live patch cannot be enabled or disabled as asked."""


class PatchRefusedError(PatchError):
    """The patch's pre_patch callback refused it: after the transition was
    initialized, so the kernel logs its cancellation."""


class BuildError(ArmlpError):
    """``armlp build`` cannot make a live patch from this diff, tree and program."""
