"""`bench neumc`: one line without NeuMC installed; the table of a result; the acceptance of a known sequence."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from latticeflow.bench import neumc


def test_without_neumc_the_bench_stops_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "neumc", None)  # import neumc raises ImportError
    with pytest.raises(ValueError, match="needs the NeuMC package importable"):
        neumc._import_neumc()


def test_independence_metropolis_acceptance_of_equal_weights_is_one_and_table_lists_every_flow():
    assert neumc._acceptance(np.zeros(100)) == 1.0
    assert neumc._acceptance(np.array([0.0, -50.0, -50.0])) == 0.0
    run = {"estimator": "x", "parameters": 10, "batch_size": 64, "steps": 5, "reverse_ess": 0.5, "acceptance": 0.6,
           "log_w_var": 1.0}
    result = {"point": {**neumc.POINT, "shape": [8, 8]}, "seconds": 600, "threads": 2, "eval_samples": 4096,
              "runs": [{"seed": 0, "latticeflow": run, "neumc_b1024": run}]}
    text = neumc.format_neumc_table(result)
    assert "latticeflow" in text and "neumc_b1024" in text and "beta = 1.0, kappa = 0.276" in text
