"""Where controllers put their sockets: a private directory per user.

The directory is created 0700 and each socket 0600, so only the user who
started a target can patch it.  Nothing listens on TCP.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from armlp.errors import ArmlpError


class ControlError(ArmlpError):
    """A controller cannot be found or reached, or refused a request."""


def _private(path: Path) -> str | None:
    """None when *path* is (now) a directory of this user that only this
    user can enter; else why it is not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        return f"cannot create it: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.getuid():
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = f"uid {st.st_uid}"
        return f"owned by {owner}, not by this user"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):o} lets other users in"
    return None


def runtime_dir() -> Path:
    """The per-user directory of controller sockets (created 0700).

    ``$ARMLP_RUNTIME_DIR`` when set (refused if not private), else the first
    private one of ``$XDG_RUNTIME_DIR/armlp``, ``/tmp/armlp-UID`` and
    ``~/.cache/armlp/run``: a ``/tmp/armlp-UID`` another user created first
    is skipped (every armlp of this user skips it the same way)."""
    base = os.environ.get("ARMLP_RUNTIME_DIR")
    if base:
        why = _private(Path(base))
        if why is not None:
            raise ControlError(f"{base} (ARMLP_RUNTIME_DIR) is not a private directory of this "
                               f"user: {why}; refusing to use it")
        return Path(base)
    candidates = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "armlp")
    candidates += [Path("/tmp") / f"armlp-{os.getuid()}",
                   Path.home() / ".cache" / "armlp" / "run"]
    reasons = []
    for path in candidates:
        why = _private(path)
        if why is None:
            return path
        reasons.append(f"{path}: {why}")
    raise ControlError("no private directory for control sockets (" + "; ".join(reasons)
                       + "): set ARMLP_RUNTIME_DIR")


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


def _reachable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def list_targets() -> list[TargetInfo]:
    """Targets whose controller answers.  Entries left by a controller that
    is gone (its process ended, or its pid now belongs to another process
    that does not serve the socket) are removed."""
    out = []
    for info_file in sorted(runtime_dir().glob("*/info.json")):
        try:
            data = json.loads(info_file.read_text())
            info = TargetInfo(str(data["id"]), str(data["program"]), int(data["pid"]),
                              int(data["controller_pid"]), str(data["socket"]))
        except (OSError, ValueError, KeyError, TypeError):
            info = None
        if info is not None and _alive(info.controller_pid) and _reachable(info.socket):
            out.append(info)
        elif info is None or not _alive(info.controller_pid):
            with contextlib.suppress(OSError):
                shutil.rmtree(info_file.parent)
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
