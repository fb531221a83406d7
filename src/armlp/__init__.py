"""armlp: live patching for 32-bit ARM code.

Functions built with ``-marm -pg -mapcs-frame`` call ``__gnu_mcount_nc`` right
after their prologue.  armlp rewrites that one call site to reach a trampoline
which undoes the prologue and enters a replacement function, following the
"[PATCH 0/7] arm: Add livepatch support" proposal.
"""

__version__ = "0.1.0"
