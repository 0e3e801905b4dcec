"""Every JSON file the package writes parses with a strict parser (NaN and ±inf written as null):
``run`` (summary.json, train_summary.json), ``analyze --json``, ``train``; each bench's ``--quick`` is
checked in tests/bench."""
import json
import math

import pytest

from latticeflow.cli import main
from latticeflow.io import dumps_json, write_json


def _refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")


def loads_strict(text: str):
    return json.loads(text, parse_constant=_refuse)


def test_strict_writer_turns_non_finite_into_null(tmp_path):
    import numpy as np

    obj = {"nan": float("nan"), "inf": math.inf, "np": np.float32("nan"), "arr": np.array([1.0, np.inf]), "t": (1, 2)}
    assert loads_strict(dumps_json(obj)) == {"nan": None, "inf": None, "np": None, "arr": [1.0, None], "t": [1, 2]}
    path = write_json(tmp_path / "x.json", obj)
    assert loads_strict(path.read_text())["arr"] == [1.0, None]
    assert not list(tmp_path.glob(".x.json.tmp*"))  # atomic: no temporary file left


@pytest.mark.slow
def test_run_train_and_analyze_write_strict_json(tmp_path, capsys):
    """A flow run with an HMC reference (NaN-prone fields: step size and ⟨e^{−ΔH}⟩ of NMCMC) and analyze --json."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: j\nseed: 1\naction: {{theory: u1, shape: [4, 4], beta: 1.0}}\nflow: {{family: u1, n_layers: 4}}\n"
                   f"train: {{steps: 6, batch_size: 16, log_every: 2, checkpoint_every: 3}}\n"
                   f"sampler: {{name: nmcmc, n_samples: 256, n_chains: 4, batch_size: 128, reference_hmc: 256}}\n"
                   f"output: {{dir: {tmp_path / 'out'}}}\n")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    files = sorted((tmp_path / "out").rglob("*.json"))
    assert {f.name for f in files} >= {"summary.json", "train_summary.json"}
    for f in files:
        loads_strict(f.read_text())
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "out" / "ensemble.h5"), "--json"]) == 0
    doc = loads_strict(capsys.readouterr().out)
    assert doc["theory"] == "u1" and "<cos P>" in doc["observables"]
