"""pyerrors json.gz export: structure per the documented format and a lossless round trip."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from latticeflow.analysis import dump_pyerrors_json, gamma_method, load_pyerrors_json


def test_pyerrors_json_structure_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    reps = [rng.normal(size=50), rng.normal(size=30)]
    cfgs = [np.arange(0, 100, 2), np.arange(5, 35)]
    observables = {"phi2": reps, "zero": [r * 0 for r in reps]}
    path = dump_pyerrors_json(tmp_path / "obs.json.gz", observables, ensemble="phi4_L8",
                              description={"L": 8}, config_numbers=cfgs)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    assert {"program", "version", "who", "date", "host", "description", "obsdata"} <= set(doc)
    entry = doc["obsdata"][0]
    assert (entry["type"], entry["layout"], entry["tag"]) == ("Obs", "1", ["phi2"])
    mean = np.concatenate(reps).mean()
    assert entry["value"] == [pytest.approx(mean, rel=1e-15)]
    (ens,) = entry["data"]
    assert ens["id"] == "phi4_L8"
    assert [r["name"] for r in ens["replica"]] == ["phi4_L8|r01", "phi4_L8|r02"]
    first = ens["replica"][0]["deltas"]
    assert first[1][0] == 2 and isinstance(first[1][0], int)
    assert first[1][1] == pytest.approx(reps[0][1] - mean)  # value + delta = primary data

    back = load_pyerrors_json(path)
    assert list(back) == ["phi2", "zero"]
    for got, want in zip(back["phi2"], reps):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    assert gamma_method(back["phi2"]).error == pytest.approx(gamma_method(reps).error, rel=1e-12)


def test_pyerrors_export_rejects_bad_names_and_configs(tmp_path):
    with pytest.raises(ValueError, match="'\\|'"):
        dump_pyerrors_json(tmp_path / "x.json.gz", {"a": np.ones(3)}, ensemble="bad|name")
    with pytest.raises(ValueError, match="strictly increasing"):
        dump_pyerrors_json(tmp_path / "x.json.gz", {"a": np.ones(3)}, ensemble="e",
                           config_numbers=[np.array([1, 1, 2])])
