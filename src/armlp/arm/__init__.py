"""Encode and decode the ARM and Thumb instructions armlp reads and writes.

Every encoder states its range and raises :class:`armlp.errors.EncodingError`
outside it: nothing is silently truncated, wrapped or zeroed.
"""

from armlp.arm.a32 import (
    AL,
    MCOUNT_NOP_ADD_SP,
    MCOUNT_NOP_POP_LR,
    MCOUNT_NOPS,
    MOV_IP_SP,
    PUSH_LR,
    REG_NAMES,
    Branch,
    decode_branch,
    reg_list,
    reg_name,
)

__all__ = [
    "AL",
    "MCOUNT_NOPS",
    "MCOUNT_NOP_ADD_SP",
    "MCOUNT_NOP_POP_LR",
    "MOV_IP_SP",
    "PUSH_LR",
    "REG_NAMES",
    "Branch",
    "decode_branch",
    "reg_list",
    "reg_name",
]
