"""Prologues scan refuses, each with the reason code and a message naming
what is wrong — in the object and in the linked program alike."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from armlp.analysis.mcount import SiteFinder
from armlp.elf.image import ElfImage
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


@pytest.mark.parametrize("kind", ["object", "executable"])
def test_a_function_of_size_0_does_not_take_the_next_functions_site(
        files: dict[str, Path], kind: str) -> None:
    """An assembly label typed as a function without a size (a vmlinux has
    a few: ``__error_p``, a ``b .`` loop): the site 16 bytes after it is the
    next function's, so the label has none and the next one is patchable."""
    funcs = {f["name"]: f for f in scan_json(files[kind])["functions"]}
    label, after = funcs["spin_label"], funcs["after_label"]
    assert label["size"] == 0
    assert (label["mcount_site"], label["reason_code"]) == (None, "no_mcount_site")
    assert after["site_offset"] == 8 and after["patchable"] and after["rule"] == "push"
    # one function alone (as armlp kernel build analyses it): the same bound
    image = ElfImage(files[kind])
    (label_fn,) = [f for f in image.symbols.functions() if f.name == "spin_label"]
    assert SiteFinder(image).find(label_fn) is None


def test_thumb2_prologues_are_read_with_the_push_rule_and_patchable(tmp_path: Path) -> None:
    """Debian armhf's Thumb-2 code: push.w (stmdb), sub sp, vpush and none
    at all are read with ARM's rule vocabulary: patchable by rule push,
    with the frame each prologue builds."""
    obj = tmp_path / "thumb2.o"
    subprocess.run(["arm-linux-gnueabihf-gcc", "-mthumb", "-pg", "-O2", "-c",
                    str(CORPUS / "thumb2.c"), "-o", str(obj)], check=True)
    funcs = {f["name"]: f for f in scan_json(obj)["functions"]}
    seen = {name: (f["mode"], f["patchable"], f["rule"], f["reason"])
            for name, f in funcs.items()}
    assert seen == dict.fromkeys(("frame_and_locals", "bare_leaf", "keeps_d8"),
                                 ("thumb", True, "push", None))
    # push.w {r4-r8, lr} + sub sp, #0x20; nothing; push {r3, lr} + vpush {d8}
    frames = {name: f["undo"]["frame_size"] for name, f in funcs.items()}
    assert frames == {"frame_and_locals": 56, "bare_leaf": 0, "keeps_d8": 16}
    assert all(f["undo"]["restore"] == [] for f in funcs.values())    # r7 saved, not set
