"""What the benchmark scripts share: min/median/max, writing results, and
waiting for the controller of an ``armlp run`` they started."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def stats(values: list[float], digits: int = 3) -> dict[str, float]:
    """min / median / max of *values*, rounded."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def write_results(name: str, result: dict[str, object]) -> Path:
    """benchmarks/results/NAME.json; prints where it went."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")
    return out


def controller_socket(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The control socket of the only target (ARMLP_RUNTIME_DIR set by the
    caller) once *proc*'s controller serves it."""
    from armlp.control.paths import find_target
    from armlp.errors import ArmlpError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return find_target(None).socket
        except ArmlpError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.02)


def wait_transition(socket: str, name: str, deadline: float) -> bool:
    """Wait until patch *name* is not in transition (True) or *deadline*
    (``time.monotonic()``) passes (False): the controller answers when the
    transition ends (what ``armlp patch --wait`` does)."""
    from armlp.control.protocol import request

    left = max(0.0, deadline - time.monotonic())
    res = request(socket, {"op": "wait", "name": name, "timeout": left}, timeout=left + 30)
    return not res["transition"]
