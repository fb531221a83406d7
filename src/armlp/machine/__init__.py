"""Targets behind one protocol: the Unicorn emulator and GDB remote stubs."""

from armlp.machine.base import CodeWrite, Machine, Regs, read_word, write_word

__all__ = ["CodeWrite", "Machine", "Regs", "read_word", "write_word"]
