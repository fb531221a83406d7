"""The runtime is built once per content and rebuilt when a source changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from armlp.runtime import build


def test_runtime_rebuilt_when_a_source_changes(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    shutil.copytree(build.SOURCE_DIR, src, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setenv("ARMLP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    first = build.runtime_objects()
    assert all(o.exists() for o in first)
    stamp = first[0].stat().st_mtime_ns
    assert build.runtime_objects() == first                  # cached: same files
    assert first[0].stat().st_mtime_ns == stamp
    (src / "ftrace.c").write_text((src / "ftrace.c").read_text() + "\nint armlp_extra;\n")
    second = build.runtime_objects()
    assert second[0].parent != first[0].parent               # a new build
    assert all(o.exists() for o in second)


def test_layout_drift_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """One source of truth per layout: a Python mirror that no longer matches
    armlp_rt.h (or <armlp/livepatch.h>) stops the runtime's build, naming it."""
    import struct

    from armlp.runtime import build, layout
    from armlp.toolchain import ToolchainError

    monkeypatch.setattr(layout, "KLP_FUNC_NODE", struct.Struct("<IIIII"))
    with pytest.raises(ToolchainError, match=r"sizeof\(struct klp_func_node\) is not 0x14 as "
                                             r"armlp/runtime/layout.py says"):
        build.runtime_objects()
