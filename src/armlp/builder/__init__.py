"""``armlp build``: live patches from source diffs (kpatch-build for ARM
programs), with a proof that the tree rebuilds the running binary."""
