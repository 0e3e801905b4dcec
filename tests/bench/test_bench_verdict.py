"""`bench verdict --quick`: the calibration grid's JSON structure (3 undertrained runs, strict JSON)."""
import json

import pytest

from latticeflow.bench.verdict import GRID, format_verdict_bench, run_verdict_bench


def test_the_calibration_grid_has_at_least_24_runs_over_both_theories_and_all_step_counts():
    assert len(GRID) >= 24
    assert {p["action"]["theory"] for p in GRID} == {"phi4", "u1"}
    assert {p["steps"] for p in GRID} == {0, 50, 100, 300}
    assert {p["action"].get("beta") for p in GRID if p["action"]["theory"] == "u1"} == {1.0, 2.0, 3.0, 4.0}


@pytest.mark.slow
def test_quick_verdict_bench_structure():
    out = run_verdict_bench(quick=True)
    json.dumps(out, allow_nan=False)
    assert len(out["runs"]) == 3 and out["well_trained"] == []
    for r in out["runs"]:
        assert isinstance(r["verdict"]["reliable"], bool) and isinstance(r["verdict"]["reasons"], list)
        assert r["miss"] == (r["off"] and r["verdict"]["reliable"])
        assert r["verdict"]["reliable"] or r["verdict"]["reasons"]
    s = out["summary"]
    assert s["n_runs"] == 3 and s["silent_misses"] == sum(r["miss"] for r in out["runs"])
    assert "silent misses" in format_verdict_bench(out)
