"""``armlp verify VMLINUX``: the redirect armlp_klp makes, proven on Debian's
kernel image by running its own prologues and ftrace_regs_caller."""

from __future__ import annotations

import json

import pytest

from armlp.analysis.scan import scan
from armlp.elf.image import ElfImage
from armlp.kernel import verify as kverify
from armlp.kernel.verify import KernelProver
from armlp.livepatch.trampoline import undo_words
from conftest import armlp
from kernel_helpers import release_kit

pytestmark = pytest.mark.slow


def test_verify_cli_proves_the_kernel_path() -> None:
    r = armlp("verify", release_kit().vmlinux, "--function", "cmdline_proc_show", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["paths"] == ["kernel"]
    [f] = doc["functions"]
    kernel = f["paths"]["kernel"]
    assert kernel["verified"] is True
    # prologue (2) + site + ftrace_regs_caller's save and restore + handler
    # + trampoline: a few dozen instructions, counted
    assert 15 < kernel["instructions"] < 60


def test_a_sample_of_the_image_verifies() -> None:
    image = ElfImage(release_kit().vmlinux)
    result = scan(image)
    patchable = [r for r in result.functions if r.verdict.patchable]
    assert len(patchable) > 30_000
    sample = patchable[::150]
    proofs = KernelProver(image, seed=1).prove(sample, trials=2)
    failed = [(p.name, p.paths["kernel"].mismatch) for p in proofs if not p.verified]
    assert failed == []
    assert len(proofs) == len(sample)


def test_a_wrong_trampoline_fails_the_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof can fail: a trampoline that assumes the mcount push is still
    on the stack (the user-space fast path's) leaves sp 4 bytes off."""
    monkeypatch.setattr(kverify, "undo_words", lambda undo, bias: undo_words(undo, 4))
    image = ElfImage(release_kit().vmlinux)
    report = scan(image).find("cmdline_proc_show")
    [proof] = KernelProver(image).prove([report], trials=1)
    result = proof.paths["kernel"]
    assert not result.verified
    assert result.mismatch is not None and "sp=" in result.mismatch


def test_verify_refuses_user_paths_for_a_kernel() -> None:
    r = armlp("verify", release_kit().vmlinux, "--function", "cmdline_proc_show",
              "--paths", "fast")
    assert r.code == 2 and "a kernel image has one path, kernel" in r.err
