"""Instructions per call on each ftrace path (issue 3, "Performance").

The same measurement as ``benchmarks/ftrace.py`` (armlp.ftrace.cost), on the
same program, built with and without APCS frames.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from armlp.ftrace.core import FtraceOps
from armlp.ftrace.cost import (
    NOP_TARGET,
    PLAIN_LIMIT,
    SiteCosts,
    check_targets,
    measure_program,
)
from armlp.program_build import build_program
from armlp.runtime.layout import FTRACE_OPS_FL_SAVE_REGS
from armlp.target import Target

PROGRAM = Path(__file__).resolve().parent.parent / "benchmarks/programs/paths.c"
BUILDS = {"apcs": [], "push": ["-mno-apcs-frame"]}
FUNCTIONS = [("leaf", (1,)), ("with_locals", (2,)), ("saves", (1, 2, 3, 4))]


@pytest.fixture(scope="module", params=sorted(BUILDS))
def build(request: pytest.FixtureRequest) -> tuple[str, Path]:
    name: str = request.param
    return name, build_program([PROGRAM], cflags=BUILDS[name])


@pytest.fixture(scope="module")
def costs(build: tuple[str, Path]) -> list[SiteCosts]:
    return measure_program(build[1], FUNCTIONS, "new_leaf")


def test_every_shape_is_measured_under_its_rule(build: tuple[str, Path],
                                                costs: list[SiteCosts]) -> None:
    assert [c.function for c in costs] == [f for f, _ in FUNCTIONS]
    assert {c.rule for c in costs} == {build[0]}


def test_nop_site_costs_exactly_two(costs: list[SiteCosts]) -> None:
    assert all(c.nop == NOP_TARGET == 2 for c in costs), costs


def test_plain_tracer_path_under_40(costs: list[SiteCosts]) -> None:
    assert all(c.nop < c.plain < PLAIN_LIMIT for c in costs), costs
    assert check_targets(costs) == []


def test_regs_and_redirect_paths_are_reported(costs: list[SiteCosts]) -> None:
    for c in costs:
        assert c.regs > c.plain
        assert c.redirect is not None and c.new_function == "new_leaf"
        # The redirect span holds the prologue, push {lr}, bl and the regs trampoline.
        assert c.redirect > c.plain
        assert c.redirect >= c.prologue + 2


def test_figures_are_deterministic(build: tuple[str, Path], costs: list[SiteCosts]) -> None:
    assert measure_program(build[1], FUNCTIONS, "new_leaf") == costs


def test_the_redirect_really_runs_the_new_function(build: tuple[str, Path]) -> None:
    target = Target.emulate(build[1])
    ft = target.ftrace
    rec = ft.find_function("leaf")
    new = ft.scan.find("new_leaf").fn.address
    assert target.machine.call(rec.report.fn.address, (1,)) == 2
    ops = FtraceOps("redirect", target.runtime.symbol("armlp_redirect_func"),
                    flags=FTRACE_OPS_FL_SAVE_REGS, private=new, ips={rec.ip})
    ft.register_ftrace_function(ops)
    assert target.machine.call(rec.report.fn.address, (1,)) == 3
    ft.unregister_ftrace_function(ops)
    assert target.machine.call(rec.report.fn.address, (1,)) == 2


def test_missed_targets_are_reported() -> None:
    slow = SiteCosts("f", "apcs", 0x1000, 0x1010, 3, 3, 40, 66, None, None)
    bad = check_targets([slow])
    assert len(bad) == 2
    assert "NOP'ed site costs 3" in bad[0]
    assert "plain tracer path costs 40" in bad[1]
