"""Held-out validation for forward-KL training: NLL and forward ESS in the metrics, early stopping on the
validation NLL (best.pt, `Trainer.restore_best`), resume keeping the best state and the history, and the
config errors of train.validation / train.early_stopping."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from actions import ProductMixture
from latticeflow.config import ConfigError, config_from_dict
from latticeflow.flows import build_flow
from latticeflow.io import load_checkpoint
from latticeflow.training import Trainer, held_out_metrics

F64 = torch.float64
GMM_FLOW = {"family": "realnvp", "conditioner": "fc", "n_layers": 4, "hidden": [32, 32]}


def _gmm_setup(n_train=64, seed=0):
    """A 4D product mixture, a tiny training set (so ML overfits quickly) and a large validation set."""
    target = ProductMixture(dim=4, mu=1.0, sigma=0.5)
    torch.manual_seed(seed)
    flow = build_flow(GMM_FLOW, target).to(F64)
    g = torch.Generator().manual_seed(100 + seed)
    return target, flow, target.sample(n_train, generator=g), target.sample(2000, generator=g)


def test_validation_metrics_are_logged_and_exact():
    target, flow, data, val = _gmm_setup()
    trainer = Trainer(flow, target, objective="forward_kl", estimator="standard", batch_size=32, lr=3e-3,
                      data=data, validation=val, seed=1)
    rows = trainer.train(30, log_every=10, progress=False)
    assert [r["step"] for r in rows] == [10, 20, 30]
    for r in rows:
        assert math.isfinite(r["val_nll"]) and 0 < r["val_forward_ess"] <= 1
    with torch.no_grad():
        log_q = flow.log_prob(val)
    assert rows[-1]["val_nll"] == pytest.approx(float(-log_q.mean()), rel=1e-12)
    ref = held_out_metrics(flow, target, val, batch=512)  # chunking does not change the value
    assert ref["val_nll"] == pytest.approx(rows[-1]["val_nll"], rel=1e-12)
    assert ref["val_forward_ess"] == pytest.approx(rows[-1]["val_forward_ess"], rel=1e-10)


def test_early_stopping_keeps_the_best_flow(tmp_path):
    """64 training samples, lr 1e-2: ML overfits (validation NLL turns up while the training loss falls);
    patience 3 stops the run; best.pt and `restore_best` hold the flow of the lowest validation NLL."""
    target, flow, data, val = _gmm_setup()
    trainer = Trainer(flow, target, objective="forward_kl", estimator="standard", batch_size=64, lr=1e-2,
                      data=data, validation=val, seed=2, early_stopping=True, patience=3)
    ckpt = tmp_path / "latest.pt"
    rows = trainer.train(3000, log_every=20, progress=False, checkpoint_path=ckpt, checkpoint_every=1000)
    nll = [r["val_nll"] for r in rows]
    best_step = trainer.best["step"]
    assert trainer.stopped_early and trainer.step_count < 3000
    assert best_step == rows[nll.index(min(nll))]["step"] and trainer.best["val_nll"] == min(nll)
    assert rows[-1]["step"] == best_step + 3 * 20 and nll[-1] > min(nll)  # patience 3 validations
    assert load_checkpoint(ckpt)["step"] == trainer.step_count  # the stop step is checkpointed
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == best_step
    assert trainer.restore_best() == best_step
    assert held_out_metrics(flow, target, val)["val_nll"] == pytest.approx(min(nll), rel=1e-12)
    # a stopped run does not train on
    assert trainer.train(3000, log_every=20, progress=False) == []


def test_resume_keeps_best_and_history(tmp_path):
    target, _, data, val = _gmm_setup()

    def new_trainer():
        torch.manual_seed(0)
        flow = build_flow(GMM_FLOW, target).to(F64)
        return Trainer(flow, target, objective="forward_kl", estimator="standard", batch_size=64, lr=1e-2,
                       data=data, validation=val, seed=2, early_stopping=True)

    ref = new_trainer()
    ref.train(120, log_every=20, progress=False)
    first = new_trainer()
    first.train(60, log_every=20, progress=False, checkpoint_path=tmp_path / "latest.pt", checkpoint_every=20)
    resumed = new_trainer()
    resumed.load_state_dict(load_checkpoint(tmp_path / "latest.pt"))
    assert resumed.best["step"] == first.best["step"] and resumed.best["val_nll"] == first.best["val_nll"]
    resumed.train(120, log_every=20, progress=False)
    assert resumed.best["step"] == ref.best["step"]
    assert resumed.best["val_nll"] == pytest.approx(ref.best["val_nll"], rel=1e-12)


def test_validation_and_early_stopping_need_samples():
    target, flow, data, val = _gmm_setup()
    with pytest.raises(ValueError, match="early_stopping"):
        Trainer(flow, target, objective="forward_kl", data=data, early_stopping=True)
    with pytest.raises(ValueError, match="patience"):
        Trainer(flow, target, objective="forward_kl", data=data, validation=val, patience=0)


BASE = {"action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.3, "lam": 0.022}}


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.2])
def test_validation_fraction_outside_unit_interval_is_one_line(value):
    with pytest.raises(ConfigError, match=rf"train.validation must be a fraction in \(0, 1\).*got {value}") as err:
        config_from_dict({**BASE, "train": {"objective": "forward_kl", "data": "x.h5", "estimator": "standard",
                                            "validation": value}})
    assert "\n" not in str(err.value)


def test_config_errors_of_early_stopping():
    fwd = {"objective": "forward_kl", "data": "x.h5", "estimator": "standard"}
    with pytest.raises(ConfigError, match="train.early_stopping needs train.validation"):
        config_from_dict({**BASE, "train": {**fwd, "early_stopping": True}})
    with pytest.raises(ConfigError, match="train.validation needs target samples"):
        config_from_dict({**BASE, "train": {"validation": 0.2}})
    with pytest.raises(ConfigError, match="train.patience"):
        config_from_dict({**BASE, "train": {**fwd, "validation": 0.2, "early_stopping": True, "patience": 0}})
    with pytest.raises(ConfigError, match="train.validate_every must be a multiple of train.log_every"):
        config_from_dict({**BASE, "train": {**fwd, "validation": 0.2, "validate_every": 25, "log_every": 10}})
    cfg = config_from_dict({**BASE, "train": {**fwd, "validation": "other.h5"}})
    assert cfg.train.validation == "other.h5"


RUN_CONFIG = """\
name: validation-test
seed: 3
dtype: float64
action: {{theory: phi4, shape: [4, 4], kappa: 0.25, lam: 0.5}}
flow: {{family: realnvp, n_layers: 2, hidden: [8]}}
train: {{objective: forward_kl, estimator: standard, data: reference, validation: 0.25, early_stopping: true,
        steps: {steps}, batch_size: 32, lr: 0.01, log_every: 10, checkpoint_every: 20}}
sampler: {{name: flow, n_samples: 256, reference_hmc: 400, n_chains: 4, n_thermalize: 50}}
output: {{dir: {out}}}
"""


def test_run_pipeline_with_validation_and_resume(tmp_path):
    """`latticeflow run` with a held-out quarter of its HMC reference: metrics.csv carries the validation
    columns, best.pt is written, and a longer rerun resumes, keeping the earlier validation rows."""
    from latticeflow.cli import main

    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(RUN_CONFIG.format(steps=40, out=out))
    assert main(["run", str(cfg)]) in (0, None)
    with open(out / "metrics.csv", newline="") as fh:
        first = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in first] == [10, 20, 30, 40]
    assert all(math.isfinite(float(r["val_nll"])) for r in first)
    assert (out / "checkpoints" / "best.pt").is_file()
    cfg.write_text(RUN_CONFIG.format(steps=60, out=out))
    assert main(["run", str(cfg)]) in (0, None)
    with open(out / "metrics.csv", newline="") as fh:
        second = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in second] == [10, 20, 30, 40, 50, 60]
    assert [r["val_nll"] for r in second[:4]] == [r["val_nll"] for r in first]
    state = load_checkpoint(out / "checkpoints" / "latest.pt")
    assert state["best"]["step"] in (10, 20, 30, 40, 50, 60) and state["step"] == 60
