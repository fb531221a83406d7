"""Where controllers put their sockets: a private directory per user.

The directory is created 0700 and each socket 0600, so only the user who
started a target can patch it.  Nothing listens on TCP.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from armlp.errors import ArmlpError


class ControlError(ArmlpError):
    """A controller cannot be found or reached, or refused a request."""


def runtime_dir() -> Path:
    """The per-user directory of controller sockets (created 0700)."""
    base = os.environ.get("ARMLP_RUNTIME_DIR")
    if base:
        path = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "armlp"
    else:
        path = Path("/tmp") / f"armlp-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise ControlError(f"{path}: not a private directory of this user (mode "
                           f"{stat.S_IMODE(st.st_mode):o}); refusing to use it")
    return path


@dataclass(frozen=True)
class TargetInfo:
    """What a controller publishes about its target."""

    id: str
    program: str
    pid: int
    controller_pid: int
    socket: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "program": self.program, "pid": self.pid,
                "controller_pid": self.controller_pid, "socket": self.socket}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_targets() -> list[TargetInfo]:
    """Targets whose controller is still alive (stale entries are removed)."""
    out = []
    for info_file in sorted(runtime_dir().glob("*/info.json")):
        try:
            data = json.loads(info_file.read_text())
            info = TargetInfo(str(data["id"]), str(data["program"]), int(data["pid"]),
                              int(data["controller_pid"]), str(data["socket"]))
        except (OSError, ValueError, KeyError):
            continue
        if _alive(info.controller_pid) and Path(info.socket).exists():
            out.append(info)
    return out


def find_target(target_id: str | None) -> TargetInfo:
    """The target named *target_id*, or the only one running."""
    targets = list_targets()
    if target_id is not None:
        for t in targets:
            if t.id == target_id or str(t.pid) == target_id:
                return t
        raise ControlError(f"no running target {target_id!r} (see 'armlp status')")
    if not targets:
        raise ControlError("no running target: start one with 'armlp run PROGRAM'")
    if len(targets) > 1:
        ids = ", ".join(t.id for t in targets)
        raise ControlError(f"{len(targets)} targets are running ({ids}): choose one with "
                           f"--target ID")
    return targets[0]
