"""`bench snf` smoke test: the step-time table, the exponent fit and the NLL comparison are well formed."""
import math

import torch

from latticeflow.bench.snf import exponents, format_snf_table, heldout_nll, step_times


def test_snf_bench_small_grid():
    rows = step_times(sizes=(4, 8), batch=8, repeats=1, dtype=torch.float64)
    assert [(r["layer"], r["D"]) for r in rows] == [("dense", 16), ("dense", 64), ("conv", 16), ("conv", 64)]
    assert all(r["snf_s"] > 0 and r["exact_s"] > 0 and math.isclose(r["ratio"], r["snf_s"] / r["exact_s"]) for r in rows)
    fits = exponents(rows, d_min=16)
    assert set(fits) == {"dense", "conv"} and all(math.isfinite(v) for f in fits.values() for v in f.values())
    nll = heldout_nll(steps=5, layers=("dense",))
    assert math.isfinite(nll[0]["self_normalized_nll"]) and math.isfinite(nll[0]["exact_nll"])
    table = format_snf_table({"step_times": rows, "dtype": "float64", "threads": 1, "exponents": fits, "nll": nll})
    assert "snf/exact" in table and "held-out NLL" in table


def test_exponent_fit_recovers_a_power_law():
    rows = [{"layer": "dense", "D": d, "snf_s": 1e-9 * d ** 2, "exact_s": 1e-12 * d ** 3} for d in (1024, 2304, 4096)]
    fit = exponents(rows)["dense"]
    assert math.isclose(fit["snf"], 2.0) and math.isclose(fit["exact"], 3.0)
    assert math.isclose(fit["snf_top"], 2.0) and math.isclose(fit["exact_top"], 3.0)
