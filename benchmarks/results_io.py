"""What the benchmark scripts share: min/median/max and writing results."""

from __future__ import annotations

import json
import statistics
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
