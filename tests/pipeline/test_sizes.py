"""``train.sizes`` / ``latticeflow train --sizes``: a training schedule over lattice sizes, every second counted."""
from __future__ import annotations

import json

import pytest
import torch

from latticeflow.config import ConfigError, config_from_dict
from latticeflow.io import load_checkpoint
from latticeflow.pipeline import train
from latticeflow.pipeline.sizes import size_stages, stage_seconds


def _data(tmp_path, **train) -> dict:
    return {"name": "sizes", "seed": 3, "dtype": "float64",
            "action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.3, "lam": 0.5},
            "flow": {"family": "spline", "n_layers": 2, "hidden": [4]},
            "train": {"steps": 100000, "seconds": 3.0, "batch_size": 8, "log_every": 5, "checkpoint_every": 10,
                      **train},
            "output": {"dir": str(tmp_path / "out")}}


def test_stages_share_the_budget_and_chain_their_weights(tmp_path):
    cfg = config_from_dict(_data(tmp_path, sizes=[2, 4, 8]))
    assert stage_seconds(cfg) == [0.375, 0.375]  # a quarter of 3 s, shared equally
    stages = size_stages(cfg)
    assert [L for L, _ in stages] == [2, 4]
    assert [list(s.action.shape) for _, s in stages] == [[2, 2], [4, 4]]
    assert stages[0][1].train.init is None and stages[1][1].train.init == str(tmp_path / "out" / "sizes" / "L2")
    assert all(s.action.couplings == cfg.action.couplings and s.flow == cfg.flow for _, s in stages)
    cfg = config_from_dict(_data(tmp_path, sizes=[4, 8], size_seconds=[1.0]))
    assert stage_seconds(cfg) == [1.0]
    # every earlier stage keeps the last stage's batch size unless size_batch_sizes says otherwise
    assert [s.train.batch_size for _, s in size_stages(cfg)] == [8]
    cfg = config_from_dict(_data(tmp_path, sizes=[2, 4, 8], size_batch_sizes=[32, 16]))
    assert [s.train.batch_size for _, s in size_stages(cfg)] == [32, 16] and cfg.train.batch_size == 8
    assert all(s.train.size_batch_sizes is None and s.train.sizes is None for _, s in size_stages(cfg))


def test_schedule_trains_every_size_counts_every_second_and_resumes(tmp_path):
    cfg = config_from_dict(_data(tmp_path, sizes=[4, 8], size_seconds=[1.0], size_batch_sizes=[16]))
    torch.set_num_threads(1)
    summary = train(cfg, "x", progress=False)
    out = tmp_path / "out"
    stage, final = summary["sizes"]
    assert (stage["L"], final["L"]) == (4, 8) and stage["steps"] > 0 and final["steps"] > 0
    assert (stage["batch_size"], final["batch_size"]) == (16, 8)
    # every second counted: the schedule spends train.seconds in all (each stage may overrun by its last step)
    assert summary["wall_time_total"] == pytest.approx(stage["wall_time"] + final["wall_time"])
    assert 3.0 <= summary["wall_time_total"] <= 3.0 + 2 * max(stage["seconds_per_step"], final["seconds_per_step"]) + 0.5
    assert 1.0 <= stage["wall_time"] < 3.0
    # the last stage started from the first one's weights, on the config's own lattice
    assert summary["init_from"] == str(out / "sizes" / "L4" / "checkpoints" / "latest.pt")
    small = load_checkpoint(out / "sizes" / "L4" / "checkpoints" / "latest.pt")
    big = load_checkpoint(out / "checkpoints" / "latest.pt")
    assert small["init_from"] is None and big["init_from"] == summary["init_from"]
    conv = [k for k, v in small["flow"].items() if k.endswith("weight") and v.dim() >= 3]
    assert conv and all(small["flow"][k].shape == big["flow"][k].shape for k in conv)
    assert json.loads((out / "train_summary.json").read_text())["sizes"][0]["L"] == 4
    # a rerun finds every budget spent: no new steps anywhere
    again = train(cfg, "x", progress=False)
    assert [s["steps"] for s in again["sizes"]] == [stage["steps"], final["steps"]]
    assert again["resumed_from"] == final["steps"]


@pytest.mark.parametrize("train_keys, message", [
    ({"sizes": [8, 4]}, "increasing"),
    ({"sizes": [4, 16]}, "must end with the config's lattice extent"),
    ({"sizes": [4, 8], "seconds": None}, "needs train.seconds"),
    ({"sizes": [4, 8], "size_seconds": [1.0, 1.0]}, "1 positive number"),
    ({"sizes": [4, 8], "size_seconds": [5.0]}, "leave nothing"),
    ({"size_seconds": [1.0]}, "needs train.sizes"),
    ({"sizes": [4, 8], "size_batch_sizes": [16, 16]}, "1 integer"),
    ({"sizes": [4, 8], "size_batch_sizes": [0]}, "1 integer"),
    ({"sizes": [4, 8], "size_batch_sizes": [2.5]}, r"size_batch_sizes.*\[2\.5\]"),
    ({"size_batch_sizes": [16]}, "needs train.sizes"),
])
def test_bad_schedules_are_refused_in_one_line(tmp_path, train_keys, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(_data(tmp_path, **train_keys))
    assert "\n" not in str(err.value)
