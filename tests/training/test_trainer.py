"""`latticeflow.training.Trainer` and `latticeflow train`: learning, exact resume (in process and after
SIGKILL of the CLI), the non-finite guard, forward-KL / mixed training on target samples, config checks."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from actions import Phi4
from actions.exact import free_field_log_z
from latticeflow.config import ConfigError, config_from_dict
from latticeflow.flows import build_flow
from latticeflow.gradients import forward_kl, reverse_kl
from latticeflow.io import load_checkpoint
from latticeflow.training import Trainer, TrainingError

F64 = torch.float64
SHAPE = (4, 4)
SMALL_FLOW = {"family": "z2nice", "conditioner": "cnn", "n_layers": 2, "hidden": [4]}


# -- helpers ------------------------------------------------------------------------------------------------
def randomise(flow, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype))
    return flow


def make_flow(action, config=SMALL_FLOW, seed=0, scale=0.3):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = build_flow(config, action).double()
    return randomise(flow, scale, seed) if scale else flow


def free_field_samples(action: Phi4, n: int, seed: int) -> torch.Tensor:
    """Exact samples of the free field (λ = 0): S = ½ φᵀHφ, φ = L⁻ᵀε with H = LLᵀ."""
    assert action.lam == 0
    v = action.volume
    h = torch.autograd.functional.hessian(lambda f: action.action(f.view(1, *action.shape))[0],
                                          torch.zeros(v, dtype=F64))
    chol = torch.linalg.cholesky(h)
    eps = torch.randn(v, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return torch.linalg.solve_triangular(chol.T, eps, upper=True).T.reshape(n, *action.shape)


def params(flow) -> list[torch.Tensor]:
    return [p.detach().clone() for p in flow.parameters()]


def all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


class Flaky:
    """Wraps an action; ``action()`` or ``force()`` returns NaN on every ``every``-th call (always if 1)."""

    def __init__(self, action, where: str, every: int) -> None:
        self.inner, self.where, self.every, self.calls = action, where, every, 0
        self.theory, self.shape, self.field_shape = action.theory, action.shape, action.field_shape

    def _maybe_nan(self, out):
        self.calls += 1
        return out * float("nan") if self.calls % self.every == 0 else out

    def action(self, x):
        out = self.inner.action(x)
        return self._maybe_nan(out) if self.where == "action" else out

    def force(self, x):
        out = self.inner.force(x)
        return self._maybe_nan(out) if self.where == "force" else out


# -- learning -----------------------------------------------------------------------------------------------
def test_reverse_kl_training_reduces_kl_on_free_field():
    """φ⁴ 4×4 free field (κ = 0.2, λ = 0, log Z exact): 200 steps, lr 1e-2, batch 64 of the fast path bring
    KL(q‖p), estimated on 4000 fixed samples, from ≈3.3 (identity flow) to below a quarter of it."""
    action = Phi4(SHAPE, kappa=0.2, lam=0.0)
    log_z = free_field_log_z(SHAPE, 0.2)
    flow = make_flow(action, {"family": "z2nice", "conditioner": "cnn", "n_layers": 2, "hidden": [8]}, scale=0)
    z = flow.base.sample((4000,), generator=torch.Generator().manual_seed(9))

    def kl():
        with torch.no_grad():
            return float(reverse_kl(flow, action, z, "standard")) + log_z

    kl0 = kl()
    trainer = Trainer(flow, action, batch_size=64, lr=1e-2, seed=1)
    rows = trainer.train(200, log_every=20, progress=False)
    kl1 = kl()
    assert kl0 > 2.0
    assert -0.05 < kl1 < 0.25 * kl0, f"KL {kl0:.3f} -> {kl1:.3f}"
    assert [r["step"] for r in rows] == list(range(20, 201, 20))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert 0 < rows[0]["reverse_ess"] < rows[-1]["reverse_ess"] <= 1
    assert trainer.step_count == 200 and trainer.n_skipped == 0


@pytest.mark.parametrize("estimator", ["standard", "gdreg", "fast_path"])
def test_forward_kl_training_on_exact_samples(estimator):
    """Maximum likelihood on exact free-field samples: the held-out forward KL drops, forward ESS in (0, 1]."""
    action = Phi4(SHAPE, kappa=0.2, lam=0.0)
    log_z = free_field_log_z(SHAPE, 0.2)
    data, held_out = free_field_samples(action, 2000, seed=1), free_field_samples(action, 2000, seed=2)
    flow = make_flow(action, scale=0)

    def fkl():
        with torch.no_grad():
            return float(forward_kl(flow, action, held_out, "standard")) - log_z

    f0 = fkl()
    trainer = Trainer(flow, action, objective="forward_kl", estimator=estimator, batch_size=32, lr=1e-2, data=data, seed=2)
    rows = trainer.train(100, log_every=25, progress=False)
    f1 = fkl()
    assert f1 < 0.5 * f0, f"forward KL {f0:.3f} -> {f1:.3f}"
    assert f1 > -0.05  # KL ≥ 0 up to the estimate's error
    for r in rows:
        assert 0 < r["forward_ess"] <= 1 and math.isfinite(r["forward_kl"])
        assert math.isnan(r["reverse_ess"]) and math.isnan(r["reverse_kl"])
    assert rows[-1]["forward_ess"] > rows[0]["forward_ess"]


def test_target_samples_are_cast_to_the_flow_dtype():
    """float64 HMC samples train a float32 flow (the README's workflow) instead of failing in a matmul."""
    action = Phi4(SHAPE, kappa=0.2, lam=0.0)
    flow = build_flow(SMALL_FLOW, action)  # float32
    data = free_field_samples(action, 256, seed=1).to(F64)
    trainer = Trainer(flow, action, objective="forward_kl", estimator="standard", batch_size=32, data=data)
    assert trainer.data.dtype == torch.float32
    assert math.isfinite(trainer.step()["forward_kl"])


def test_mixed_training_reports_both_ess():
    action = Phi4(SHAPE, kappa=0.2, lam=0.0)
    data = free_field_samples(action, 1000, seed=3)
    flow = make_flow(action, scale=0)
    trainer = Trainer(flow, action, objective="mixed", forward_weight=0.3, batch_size=32, lr=1e-2, data=data, seed=3)
    assert trainer.forward_estimator == "fast_path"
    rows = trainer.train(60, log_every=20, progress=False)
    for r in rows:
        assert 0 < r["forward_ess"] <= 1 and 0 < r["reverse_ess"] <= 1
        # loss = 0.7 reverse + 0.3 forward, averaged over the same steps
        assert r["loss"] == pytest.approx(0.7 * r["reverse_kl"] + 0.3 * r["forward_kl"], rel=1e-12, abs=1e-12)
    assert rows[-1]["reverse_kl"] < rows[0]["reverse_kl"]


# -- exact resume -------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _resume_setup(objective):
    action = Phi4(SHAPE, kappa=0.3, lam=0.022)
    data = None
    if objective != "reverse_kl":
        with torch.no_grad():
            data = make_flow(action, seed=77).sample(500, generator=torch.Generator().manual_seed(5))[0]

    def new_trainer():
        flow = make_flow(action, seed=4)
        return Trainer(flow, action, objective=objective, batch_size=16, lr=3e-3, scheduler="plateau",
                       plateau_patience=2, plateau_factor=0.7, data=data, seed=11)
    return new_trainer


@pytest.mark.parametrize("objective", ["reverse_kl", "mixed"])
def test_resume_is_exact(tmp_path, objective):
    """40 steps uninterrupted vs. stopped at step 23 (last checkpoint: step 20), a new Trainer with the same
    seeds loading that checkpoint and training to 40: bitwise equal parameters, optimiser and RNG state.
    The plateau scheduler (patience 2 on a noisy loss) changes lr, so its state matters too."""
    from latticeflow.io import save_checkpoint

    new_trainer = _resume_setup(objective)
    n, every = 40, 10
    ref = new_trainer()
    ref.train(n, log_every=5, checkpoint_path=tmp_path / "ref.pt", checkpoint_every=every, progress=False)
    assert ref.optimizer.param_groups[0]["lr"] < 3e-3, "the scheduler should have acted (test setup)"

    # (a) interrupted mid-run: the last checkpoint written by train() is the one of step 20
    first = new_trainer()

    def stop(row):
        if row["step"] == 23:
            raise _Stop

    with pytest.raises(_Stop):
        first.train(n, log_every=1, checkpoint_path=tmp_path / "run.pt", checkpoint_every=every, progress=False,
                    callback=stop)
    state = load_checkpoint(tmp_path / "run.pt")
    assert state["step"] == 20
    resumed = new_trainer()
    assert not all_equal(params(resumed.flow), params(ref.flow))
    resumed.load_state_dict(state)
    assert resumed.step_count == 20
    resumed.train(n, log_every=5, checkpoint_path=tmp_path / "run.pt", checkpoint_every=every, progress=False)

    # (b) k steps, save by hand, a new trainer loads and finishes
    k = 17
    part = new_trainer()
    part.train(k, progress=False)
    save_checkpoint(tmp_path / "k.pt", part.state_dict())
    finished = new_trainer()
    finished.load_state_dict(load_checkpoint(tmp_path / "k.pt"))
    finished.train(n, progress=False)

    for other in (resumed, finished):
        assert other.step_count == n
        assert all_equal(params(other.flow), params(ref.flow))
        assert torch.equal(other.generator.get_state(), ref.generator.get_state())
        assert other.optimizer.param_groups[0]["lr"] == ref.optimizer.param_groups[0]["lr"]
        assert other.scheduler.state_dict() == ref.scheduler.state_dict()
    final_ref, final_run = load_checkpoint(tmp_path / "ref.pt"), load_checkpoint(tmp_path / "run.pt")
    assert final_ref["step"] == final_run["step"] == n
    assert final_ref["flow"].keys() == final_run["flow"].keys()
    assert all(torch.equal(final_ref["flow"][key], final_run["flow"][key]) for key in final_ref["flow"])


CLI_CONFIG = """\
name: resume-test
seed: 5
action: {{theory: phi4, shape: [4, 4], kappa: 0.3, lam: 0.022}}
flow: {{family: z2nice, n_layers: 2, conditioner: cnn, hidden: [4]}}
train: {{steps: {steps}, batch_size: 8, lr: 0.003, checkpoint_every: 10, log_every: 5, scheduler: plateau,
        plateau_patience: 20}}
output: {{dir: {out}}}
"""
TIMING_COLUMNS = {"steps_per_s", "wall_time"}


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_cli_train_resumes_exactly_after_sigkill(tmp_path, capsys):
    """`python -m latticeflow train` killed with SIGKILL after its first checkpoint, rerun with the same command:
    the final flow equals (torch.equal, every tensor) that of an uninterrupted run in another output dir, and
    metrics.csv lists each logged step exactly once, with the same values as the uninterrupted run's.

    The uninterrupted reference runs in this process through `latticeflow.cli.main` (one thread, as the
    subprocesses with OMP_NUM_THREADS=1), overlapping the rerun, to keep the test's wall time down."""
    from latticeflow.cli import main

    steps = 150
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "latticeflow", "train"]
    for name in ("killed", "ref"):
        (tmp_path / f"{name}.yaml").write_text(CLI_CONFIG.format(steps=steps, out=tmp_path / name))
    victim = subprocess.Popen([*cmd, "killed.yaml", "--no-progress"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists() and victim.poll() is None:
        time.sleep(0.002)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(ckpt)["step"]
    assert 10 <= killed_at < steps and killed_at % 10 == 0
    rerun = subprocess.Popen([*cmd, "killed.yaml", "--no-progress"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert main(["train", str(tmp_path / "ref.yaml"), "--no-progress"]) == 0
    finally:
        out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"resumed from {killed_at}" in out
    assert "resumed from 0" in capsys.readouterr().out

    a, b = load_checkpoint(ckpt), load_checkpoint(tmp_path / "ref" / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == steps
    assert a["flow"].keys() == b["flow"].keys()
    for key in a["flow"]:
        assert torch.equal(a["flow"][key], b["flow"][key]), key
    assert torch.equal(a["generator"], b["generator"])

    rows, ref_rows = _read_metrics(tmp_path / "killed" / "metrics.csv"), _read_metrics(tmp_path / "ref" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(5, steps + 1, 5))
    assert [int(r["step"]) for r in ref_rows] == list(range(5, steps + 1, 5))
    for r, q in zip(rows, ref_rows):
        assert {k: v for k, v in r.items() if k not in TIMING_COLUMNS} == \
               {k: v for k, v in q.items() if k not in TIMING_COLUMNS}, f"step {r['step']}"


# -- the non-finite guard -----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["action", "force"])
def test_non_finite_losses_are_skipped(where):
    """NaN on every 3rd call of action() (or force()): those steps are skipped and counted, parameters do not
    move on a skipped step, stay finite, and training goes on."""
    action = Phi4(SHAPE, kappa=0.3, lam=0.022)
    flaky = Flaky(action, where, every=3)
    flow = make_flow(action, seed=1)
    trainer = Trainer(flow, flaky, batch_size=8, lr=1e-2, seed=1, max_bad_steps=2)
    for i in range(1, 13):
        before = params(flow)
        m = trainer.step()
        after = params(flow)
        if i % 3 == 0:
            assert m["skipped"] == 1.0 and math.isnan(m["loss"])
            assert all_equal(before, after)
        else:
            assert m["skipped"] == 0.0 and math.isfinite(m["loss"])
            assert not all_equal(before, after)
    assert trainer.n_skipped == 4 and trainer.step_count == 12
    rows = trainer.train(30, log_every=9, progress=False)
    assert trainer.n_skipped == 10 and rows[-1]["n_skipped"] == 10
    assert all(torch.isfinite(p).all() for p in flow.parameters())


@pytest.mark.parametrize("where", ["action", "force"])
def test_always_non_finite_raises_training_error(where):
    action = Phi4(SHAPE, kappa=0.3, lam=0.022)
    flow = make_flow(action, seed=1)
    start = params(flow)
    trainer = Trainer(flow, Flaky(action, where, every=1), batch_size=8, seed=1, max_bad_steps=4)
    with pytest.raises(TrainingError, match=r"4 non-finite losses or gradients in a row"):
        trainer.train(100, progress=False)
    assert trainer.n_skipped == 4
    assert all_equal(params(flow), start)


def test_logged_loss_averages_non_skipped_steps():
    action = Phi4(SHAPE, kappa=0.3, lam=0.022)
    trainer = Trainer(make_flow(action, seed=1), Flaky(action, "force", every=3), batch_size=8, seed=1)
    steps = []
    step = trainer.step

    def recording_step():
        m = step()
        steps.append(m)
        return m

    trainer.step = recording_step
    rows = trainer.train(12, log_every=6, progress=False)
    for k, row in enumerate(rows):
        good = [m for m in steps[6 * k : 6 * k + 6] if not m["skipped"]]
        assert len(good) == 4
        assert row["loss"] == pytest.approx(sum(m["loss"] for m in good) / 4, rel=1e-12)
        assert row["grad_norm"] == pytest.approx(sum(m["grad_norm"] for m in good) / 4, rel=1e-12)


# -- configuration --------------------------------------------------------------------------------------------
BASE = {"action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.3, "lam": 0.022}}


@pytest.mark.parametrize("objective", ["forward_kl", "mixed"])
def test_forward_objectives_need_train_data(objective, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"train\.data"):
        config_from_dict({**BASE, "train": {"objective": objective}})
    if objective == "forward_kl":
        # the forward estimators are the ones allowed for forward_kl
        cfg = config_from_dict({**BASE, "train": {"objective": objective, "data": "x.h5", "estimator": "gdreg"}})
        assert cfg.train.data == "x.h5"
    action = Phi4(SHAPE, kappa=0.3, lam=0.022)
    with pytest.raises(ValueError, match=r"train\.data"):
        Trainer(make_flow(action), action, objective=objective)
    # through the command line: a one-line error naming the key, exit status 2
    from latticeflow.cli import main

    (tmp_path / "c.yaml").write_text(f"action: {{theory: phi4, shape: [4, 4], kappa: 0.3, lam: 0.022}}\n"
                                     f"train: {{objective: {objective}}}\noutput: {{dir: {tmp_path / 'out'}}}\n")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latticeflow: error: train.data") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
