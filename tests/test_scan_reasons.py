"""Prologues scan refuses, each with the reason code and a message naming
what is wrong — in the object and in the linked program alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from armlp.program_build import build_program
from armlp.toolchain import compile_object
from conftest import CORPUS, scan_json

EXPECTED = {
    "far_site": ("site_too_far", "+0x48"),   # 17 nops + push {lr}
    "odd_insn": ("unknown_instruction", "'mov r4, r0' at +0x0"),
    "no_push": ("no_push_lr", "push {lr}"),
    "unsaved_fp": ("unsaved_register", "fp"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("odd")
    obj = compile_object(CORPUS / "odd_prologues.S", tmp / "odd.o")
    exe = build_program([CORPUS / "odd_prologues.S"], tmp / "odd")
    return {"object": obj, "executable": exe}


@pytest.mark.parametrize("kind", ["object", "executable"])
def test_refusal_reasons(files: dict[str, Path], kind: str) -> None:
    doc = scan_json(files[kind])
    funcs = {f["name"]: f for f in doc["functions"]}
    for name, (code, text) in EXPECTED.items():
        f = funcs[name]
        assert f["patchable"] is False and f["rule"] is None and f["undo"] is None, name
        assert f["reason_code"] == code, (name, f["reason"])
        assert text in f["reason"], (name, f["reason"])
        assert f["mcount_site"] is not None, name
