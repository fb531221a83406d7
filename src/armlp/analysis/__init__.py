"""Which functions can be live patched: mcount sites, prologues, undo recipes."""
