"""A diverging training ends in one line (issue 24, "Moderate": ``train.lr`` too large with ``grad_clip: null``
gave a 22-line traceback, exit 1, and ``n_skipped=9`` recorded against "10 in a row").

Now: `TrainingDiverged` (a ``ValueError``) → ``latticeflow: error: training diverged: …`` naming train.lr and
train.grad_clip, exit 2; metrics.csv records the failing step with the same count as the message; no
checkpoint is written inside the run of non-finite steps (the one on disk is the last good one)."""
from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from actions import Phi4
from latticeflow.cli import main
from latticeflow.io import load_checkpoint
from latticeflow.training import Trainer, TrainingDiverged

TINY = """name: tiny
seed: 1
dtype: float32
action: {{theory: phi4, shape: [4, 4], kappa: 0.3, lam: 0.5}}
flow: {{family: realnvp, n_layers: 2, hidden: [4]}}
train: {{steps: 100, batch_size: 16, log_every: 5, checkpoint_every: 1}}
output: {{dir: {out}}}
"""


def test_lr_too_large_without_grad_clip_ends_in_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(out=out))
    status = main(["train", str(cfg), "--no-progress", "--set", "train.lr=1", "--set", "train.grad_clip=null"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    msg = err[0]
    assert msg.startswith("latticeflow: error: training diverged: 10 non-finite losses or gradients in a row")
    assert "train.lr = 1" in msg and "train.grad_clip = null" in msg
    first, last, total = map(int, re.search(r"steps (\d+)-(\d+), .*; (\d+) skipped in all", msg).groups())
    assert last - first + 1 == 10
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert int(rows[-1]["step"]) == last and int(rows[-1]["n_skipped"]) == total  # the message's counts
    state = load_checkpoint(out / "checkpoints" / "latest.pt")
    assert state["step"] == first - 1 and state["n_skipped"] == total - 10  # the last good step, kept
    assert all(torch.isfinite(v).all() for v in state["flow"].values() if torch.is_tensor(v))
    assert not (out / "train_summary.json").exists()


def test_training_diverged_is_a_value_error_with_the_failing_steps_metrics():
    class NaNAction:
        """φ⁴ whose action is NaN: every step is non-finite."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def action(self, x):
            return self.inner.action(x) * math.nan

    from latticeflow.flows import build_flow

    inner = Phi4((4, 4), kappa=0.3, lam=0.022)
    trainer = Trainer(build_flow({"family": "realnvp", "n_layers": 2, "hidden": [4]}, inner), NaNAction(inner),
                      batch_size=8, max_bad_steps=3, grad_clip=None)
    with pytest.raises(ValueError, match=r"3 non-finite .* \(steps 1-3, .*3 skipped in all\).*train\.grad_clip = null"):
        trainer.train(10, log_every=2, progress=False)
    assert trainer.step_count == 3 and trainer.n_skipped == 3
    with pytest.raises(TrainingDiverged) as info:  # the run of non-finite steps goes on: one more step ends it
        trainer.train(10, log_every=2, progress=False)
    assert info.value.metrics["skipped"] == 1.0 and math.isnan(info.value.metrics["loss"])
    assert trainer.step_count == 4 and trainer.n_skipped == 4
