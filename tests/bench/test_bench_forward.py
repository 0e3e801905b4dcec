"""`bench forward --quick`: the JSON structure of the forward-KL estimator comparison (GMM d = 6 product
mixture and φ⁴ from HMC configurations), the overfitting rule, the table and the plot."""
import json
import math

import pytest
import torch

from latticeflow.bench.forward import ESTIMATORS, QUICK, _overfit, format_forward_table, run_forward_bench
from latticeflow.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    torch.set_num_threads(1)
    plot = tmp_path_factory.mktemp("fwd") / "fwd.png"
    return run_forward_bench(quick=True, plot=str(plot)), plot


def test_quick_forward_json_structure(quick):
    result, plot = quick
    json.dumps(result, allow_nan=False)
    assert result["benchmark"] == "forward" and result["seeds"] == [0]
    assert list(result["cases"]) == list(QUICK["cases"])
    for case, entry in result["cases"].items():
        assert entry["n_train"] == QUICK["n_train"] and entry["n_test"] == QUICK["n_test"]
        assert set(entry["estimators"]) == set(ESTIMATORS)
        for est, e in entry["estimators"].items():
            (run,) = e["runs"]
            assert run["steps"] > 0 and run["steps_per_s"] > 0
            curve = run["curve"]
            assert curve[0]["step"] == 0 and curve[-1]["step"] == run["steps"]
            assert all(b["seconds"] > a["seconds"] for a, b in zip(curve, curve[1:]))
            for point in curve:
                assert math.isfinite(point["train_nll"]) and math.isfinite(point["test_nll"])
                assert 0 <= point["test_forward_ess"] <= 1 and 0 <= point["reverse_ess"] <= 1
            assert run["best_test_nll"] <= run["final"]["test_nll"]
            assert set(run["last_fifth"]) == {"train_nll", "test_nll", "test_forward_ess", "reverse_ess"}
            assert set(e["median"]) >= {"train_nll", "test_nll", "test_forward_ess", "reverse_ess"}
        c = entry["fast_path_vs_standard"]
        assert c["n_seeds"] == 1 and c["lower_test_nll"] in (0, 1) and c["lower_test_nll_last_fifth"] in (0, 1)
    # the GMM NLL is exact (ln Z = 0): the test NLL is a cross-entropy, at least the target's entropy 8.151
    # nats up to the noise of 512 test samples (std of log q ≈ 1.6, so 4σ ≈ 0.3)
    assert abs(result["cases"]["gmm"]["entropy"] - 8.151069) < 1e-5
    assert result["cases"]["gmm"]["flow"]["family"] == "spline"
    for est in ESTIMATORS:
        gmm = result["cases"]["gmm"]["estimators"][est]["runs"][0]["final"]
        assert gmm["test_nll"] > result["cases"]["gmm"]["entropy"] - 0.3
    assert plot.is_file() and plot.stat().st_size > 1000
    table = format_forward_table(result)
    assert "fast_path vs ML" in table and "gmm" in table


def test_overfit_rule():
    rising = [{"train_nll": 5 - 0.1 * i, "test_nll": 5 - 0.1 * i if i < 5 else 4.5 + 0.05 * (i - 5)} for i in range(10)]
    assert _overfit(rising, 0.02)
    falling = [{"train_nll": 5 - 0.1 * i, "test_nll": 5 - 0.1 * i} for i in range(10)]
    assert not _overfit(falling, 0.02)


def test_unknown_case_is_one_line():
    with pytest.raises(ValueError, match="unknown case 'nope'"):
        run_forward_bench(cases=["nope"], plot=None)


@pytest.mark.parametrize("lr", ["0.0", "-1e-3", "2.0"])
def test_bad_learning_rate_is_one_line(capsys, lr):
    """The CLI validates --lr once, before any work."""
    assert main(["bench", "forward", "--targets", "gmm", f"--lr={lr}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latticeflow: error: bench forward: lr must be a number in (0, 1), got ")
