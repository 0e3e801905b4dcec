"""Training for a budget and transfer (issue 11): ``train.seconds`` beside ``train.steps``, the cosine
schedule with linear warm-up (values, exact resume, annealing by wall time), and ``train.init``: a flow
trained on an 8×8 lattice starts a 16×16 run closer to the target than a fresh one."""
from __future__ import annotations

import csv
import json
import time

import pytest
import torch

from actions import Phi4, U1Gauge
from latticeflow.config import ConfigError, config_from_dict
from latticeflow.flows import Flow, GlobalScaling, StandardNormal, build_flow
from latticeflow.gradients import reverse_kl
from latticeflow.io import load_checkpoint, save_checkpoint
from latticeflow.pipeline.train import init_flow_from, train
from latticeflow.training import CosineSchedule, Trainer, cosine_lr, transfer_state

F64 = torch.float64
SMALL_FLOW = {"family": "z2nice", "conditioner": "cnn", "n_layers": 2, "hidden": [4]}
CNN_FLOW = {"family": "realnvp", "conditioner": "cnn", "n_layers": 4, "hidden": [8, 8]}


class _Stop(Exception):
    pass


def small_trainer(seed: int = 4, **kwargs) -> Trainer:
    action = Phi4((4, 4), kappa=0.3, lam=0.022)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = build_flow(SMALL_FLOW, action).double()
    return Trainer(flow, action, **{"batch_size": 16, "lr": 3e-3, "seed": 11, **kwargs})


def params(flow) -> list[torch.Tensor]:
    return [p.detach().clone() for p in flow.parameters()]


# -- the cosine schedule ------------------------------------------------------------------------------------
def test_cosine_lr_warms_up_linearly_then_decays_to_lr_min():
    """η(p): η p/w below w, then η_min + ½(η − η_min)(1 + cos π(p − w)/(1 − w)); exact at the knots."""
    lr, lr_min, w = 1e-2, 1e-4, 0.2
    assert cosine_lr(0.0, lr, lr_min, w) == 0.0
    assert cosine_lr(0.1, lr, lr_min, w) == pytest.approx(0.5 * lr, rel=1e-12)
    assert cosine_lr(w, lr, lr_min, w) == pytest.approx(lr, rel=1e-12)
    assert cosine_lr(0.6, lr, lr_min, w) == pytest.approx(0.5 * (lr + lr_min), rel=1e-12)  # half way down
    assert cosine_lr(1.0, lr, lr_min, w) == pytest.approx(lr_min, rel=1e-12)
    assert cosine_lr(2.0, lr, lr_min, w) == pytest.approx(lr_min, rel=1e-12)  # clipped beyond the end
    assert cosine_lr(0.0, lr) == lr  # no warm-up: starts at η


def test_trainer_follows_the_cosine_schedule_step_by_step():
    """40 steps, warm-up 8: the update of step k has η((k + 1)/40): η/8 first, η at update 8, η_min last."""
    n, warmup, lr, lr_min = 40, 8, 3e-3, 3e-5
    trainer = small_trainer(scheduler="cosine", warmup_steps=warmup, lr=lr, lr_min=lr_min)
    rows = trainer.train(n, log_every=1, progress=False)
    lrs = [r["lr"] for r in rows]
    expected = [cosine_lr((k + 1) / n, lr, lr_min, warmup / n) for k in range(n)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(lr / warmup) and lrs[warmup - 1] == pytest.approx(lr)
    assert lrs[-1] == pytest.approx(lr_min)
    assert all(a < b for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))
    assert all(a > b for a, b in zip(lrs[warmup - 1:-1], lrs[warmup:]))


def test_cosine_resume_is_exact(tmp_path):
    """30 steps uninterrupted vs. stopped at step 13 (checkpoint of step 10) and resumed by a new Trainer:
    bitwise equal parameters, generator state and learning rate, at every logged step and at the end."""
    n, kw = 30, {"scheduler": "cosine", "warmup_steps": 5, "lr_min": 1e-5}
    ref = small_trainer(**kw)
    ref_rows = ref.train(n, log_every=5, checkpoint_path=tmp_path / "ref.pt", checkpoint_every=10, progress=False)

    def stop(row):
        if row["step"] == 13:
            raise _Stop

    with pytest.raises(_Stop):
        small_trainer(**kw).train(n, log_every=1, checkpoint_path=tmp_path / "run.pt", checkpoint_every=10,
                                  progress=False, callback=stop)
    state = load_checkpoint(tmp_path / "run.pt")
    assert state["step"] == 10 and state["scheduler"]["name"] == "cosine"
    resumed = small_trainer(**kw)
    resumed.load_state_dict(state)
    rows = resumed.train(n, log_every=5, progress=False)
    assert [r["step"] for r in rows] == [15, 20, 25, 30]
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows[2:]]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows[2:]]
    assert all(torch.equal(a, b) for a, b in zip(params(resumed.flow), params(ref.flow)))
    assert torch.equal(resumed.generator.get_state(), ref.generator.get_state())
    assert resumed.optimizer.param_groups[0]["lr"] == ref.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_cosine_without_a_length_and_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="train.scheduler must be null, 'plateau' or 'cosine', got 'foo'"):
        small_trainer(scheduler="foo")
    with pytest.raises(ValueError, match=r"train.lr_min must be in \[0, train.lr = 0.003\], got 0.1"):
        small_trainer(scheduler="cosine", lr_min=0.1)
    trainer = small_trainer(scheduler="cosine", warmup_steps=10)
    with pytest.raises(ValueError, match="needs its length"):
        trainer.step()
    with pytest.raises(ValueError, match=r"train.warmup_steps must be < train.steps \(10\), got 10"):
        trainer.train(10, progress=False)
    with pytest.raises(ValueError, match="train.seconds must be > 0, got 0"):
        trainer.train(100, seconds=0, progress=False)


# -- the wall-time budget ----------------------------------------------------------------------------------
def test_seconds_budget_stops_training_and_writes_the_last_row_and_checkpoint(tmp_path):
    """seconds = 1 with steps = 10⁶: training ends after about a second; the last metrics row, the
    checkpoint and the trainer agree on the step; a resumed trainer finds the budget spent and stops."""
    ckpt, metrics = tmp_path / "latest.pt", tmp_path / "metrics.csv"
    trainer = small_trainer()
    t0 = time.perf_counter()
    rows = trainer.train(10**6, seconds=1.0, log_every=1000, metrics_path=metrics, checkpoint_path=ckpt,
                         checkpoint_every=1000, progress=False)
    assert time.perf_counter() - t0 < 5.0
    assert 0 < trainer.step_count < 10**6 and trainer.wall_time >= 1.0
    state = load_checkpoint(ckpt)
    assert state["step"] == rows[-1]["step"] == trainer.step_count
    assert state["wall_time"] >= 1.0 and rows[-1]["wall_time"] >= 1.0
    with open(metrics, newline="") as fh:
        assert int(list(csv.DictReader(fh))[-1]["step"]) == trainer.step_count
    again = small_trainer()
    again.load_state_dict(state)
    assert again.train(10**6, seconds=1.0, checkpoint_path=ckpt, progress=False) == []
    assert again.step_count == trainer.step_count == load_checkpoint(ckpt)["step"]


def test_steps_bind_before_seconds():
    trainer = small_trainer()
    rows = trainer.train(12, seconds=3600.0, log_every=5, progress=False)
    assert [r["step"] for r in rows] == [5, 10, 12] and trainer.step_count == 12


def test_cosine_anneals_by_wall_time_when_seconds_bind():
    """With steps = 10⁶ the step fraction stays ≈ 0: the learning rate follows t/seconds and ends near lr_min
    (the last update sees t of the step before, so η_last ≤ 0.1 η as long as a step takes < 0.1 s)."""
    lr = 3e-3
    trainer = small_trainer(scheduler="cosine", lr=lr)
    rows = trainer.train(10**6, seconds=0.6, log_every=5, progress=False)
    lrs = [r["lr"] for r in rows]
    assert trainer.step_count < 10**6
    assert lrs[-1] < 0.1 * lr < 0.9 * lr < lrs[0]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert isinstance(trainer.scheduler, CosineSchedule) and trainer.scheduler.seconds == 0.6


# -- transfer between lattices -----------------------------------------------------------------------------
def test_flow_trained_at_8x8_starts_at_16x16_with_a_lower_kl_than_a_fresh_one(tmp_path):
    """φ⁴ (κ = 0.25, λ = 0.5), a translation-equivariant realnvp CNN flow: 80 reverse-KL steps at 8×8, saved
    by the trainer, loaded into a 16×16 flow by ``train.init`` (the run directory). On 512 samples the
    16×16 KL per site (up to log Z / V) of the transferred flow is well below that of a fresh flow
    (≈ −0.76 vs ≈ +0.07), and close to the 8×8 flow's own."""
    small, big = Phi4((8, 8), kappa=0.25, lam=0.5), Phi4((16, 16), kappa=0.25, lam=0.5)
    torch.manual_seed(0)
    flow = build_flow(CNN_FLOW, small)
    trainer = Trainer(flow, small, batch_size=32, lr=1e-2, seed=1)
    (tmp_path / "checkpoints").mkdir()
    trainer.train(80, log_every=20, checkpoint_path=tmp_path / "checkpoints" / "latest.pt", progress=False)

    def kl_per_site(f, action):
        z = f.base.sample((512,), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            return float(reverse_kl(f, action, z, "standard")) / action.volume

    torch.manual_seed(5)
    fresh = build_flow(CNN_FLOW, big)
    torch.manual_seed(5)
    moved = build_flow(CNN_FLOW, big)
    path, adapted = init_flow_from(moved, str(tmp_path), big)
    assert path == str(tmp_path / "checkpoints" / "latest.pt")
    assert adapted and all(k.endswith(("mask", "idx_a", "idx_b")) for k in adapted)
    assert torch.equal(moved.layers[0].mask, fresh.layers[0].mask)  # the 16×16 checkerboard kept
    kl_fresh, kl_moved, kl_small = kl_per_site(fresh, big), kl_per_site(moved, big), kl_per_site(flow, small)
    assert kl_moved < kl_fresh - 0.4, (kl_moved, kl_fresh)
    assert abs(kl_moved - kl_small) < 0.1, (kl_moved, kl_small)


def test_per_site_log_scale_becomes_its_mean_and_scalars_carry_over():
    """GlobalScaling: a per-site a_x on 4×4 becomes ā on every site of 8×8; a scalar a is copied."""
    def scaling_flow(shape, per_site):
        return Flow(StandardNormal(shape), [GlobalScaling(shape, per_site=per_site)]).double()

    old = scaling_flow((4, 4), True)
    with torch.no_grad():
        old.layers[0].log_scale.copy_(torch.arange(16, dtype=F64).view(4, 4) / 10)
    new = scaling_flow((8, 8), True)
    assert transfer_state(new, old.state_dict()) == ["layers.0.log_scale"]
    assert torch.allclose(new.layers[0].log_scale, torch.full((8, 8), 0.75, dtype=F64))
    old, new = scaling_flow((4, 4), False), scaling_flow((8, 8), False)
    with torch.no_grad():
        old.layers[0].log_scale.fill_(0.3)
    assert transfer_state(new, old.state_dict()) == []
    assert new.layers[0].log_scale.item() == pytest.approx(0.3)


def test_fourier_log_scales_keep_the_new_actions_initialisation():
    """FourierScaling a(p) (momentum space, initialised from the action): a 4×4 flow transferred to 8×8 keeps
    the 8×8 flow's own a(p); the coupling weights are copied."""
    config = {"family": "z2nice", "n_layers": 2, "hidden": [4], "fourier": True}
    torch.manual_seed(1)
    old = build_flow(config, Phi4((4, 4), kappa=0.2, lam=0.1))
    new = build_flow(config, Phi4((8, 8), kappa=0.2, lam=0.1))
    raw = new.layers[0].raw.detach().clone()
    adapted = transfer_state(new, old.state_dict(), lattice=(8, 8))
    assert "layers.0.raw" in adapted and torch.equal(new.layers[0].raw, raw)
    key = "layers.1.net.net.net.0.weight"
    assert key not in adapted and torch.equal(new.state_dict()[key], old.state_dict()[key])


def test_fourier_learned_correction_carries_over_interpolated_in_momentum():
    """With ``source_init`` (the flow freshly built on the source lattice) the learned part of a(p) carries over:
    a constant shift exactly, a smooth correction interpolated with the old grid points kept exactly (L → 2L)."""
    from latticeflow.pipeline.train import _source_init
    from latticeflow.transfer import resample_momentum

    config = {"family": "spline", "n_layers": 2, "hidden": [4], "vacua": False}
    small, large = Phi4((4, 4), kappa=0.3, lam=0.5), Phi4((8, 8), kappa=0.3, lam=0.5)
    old = build_flow(config, small)
    init_old = {k: v.clone() for k, v in old.state_dict().items()}
    p = 2 * torch.pi * torch.arange(4, dtype=torch.float64) / 4
    correction = 0.3 + 0.1 * torch.cos(p)[:, None] * torch.cos(p)[None, :]
    with torch.no_grad():
        old.layers[0].raw += correction.to(old.layers[0].raw.dtype)
    new = build_flow(config, large)
    own = new.layers[0].raw.detach().clone()
    transfer_state(new, old.state_dict(), lattice=(8, 8), source_init=init_old)
    learned = new.layers[0].raw.detach().double() - own.double()
    assert torch.allclose(learned[::2, ::2], correction, atol=1e-6)  # the old momenta keep their correction
    assert torch.allclose(learned, resample_momentum(correction, (8, 8)), atol=1e-6)
    assert learned[1, 0] == pytest.approx(0.3 + 0.1 * 0.5 * (1 + 0), abs=1e-6)  # halfway between p0 = 0 and π/2
    # the pipeline builds source_init from what a checkpoint says about its lattice, couplings and flow
    state = {"config": "action: {theory: phi4, shape: [4, 4], kappa: 0.3, lam: 0.5}\n", "config_flow": config}
    fresh = _source_init(state, large)
    assert torch.equal(fresh["layers.0.raw"], init_old["layers.0.raw"])
    assert _source_init({"config": "", "config_flow": config}, large) is None  # unknown source: a(p) starts afresh


@pytest.mark.parametrize("other,message", [
    ({**SMALL_FLOW, "hidden": [8]},
     "another architecture (first differing key 'layers.0.net.net.net.0.weight': shape [4, 1, 3, 3] vs [8, 1, 3, 3])"),
    ({**SMALL_FLOW, "n_layers": 4}, "another architecture (first differing key 'layers.2.mask': not in the checkpoint)"),
    ({**SMALL_FLOW, "scaling": False}, "another architecture (first differing key 'layers.2.log_scale': not in this flow)"),
])
def test_init_from_another_architecture_names_the_first_differing_key(tmp_path, other, message):
    action = Phi4((4, 4), kappa=0.2, lam=0.0)
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"flow": build_flow(SMALL_FLOW, action).state_dict(), "theory": "phi4"})
    with pytest.raises(ConfigError) as err:
        init_flow_from(build_flow(other, Phi4((8, 8), kappa=0.2, lam=0.0)), str(path), action)
    assert str(err.value) == f"train.init {path}: {message}"


def test_init_from_a_missing_checkpoint(tmp_path):
    flow = build_flow(SMALL_FLOW, Phi4((4, 4), kappa=0.2, lam=0.0))
    action = Phi4((4, 4), kappa=0.2, lam=0.0)
    with pytest.raises(ConfigError, match="^train.init: checkpoint not found: '.*nowhere.pt'$"):
        init_flow_from(flow, str(tmp_path / "nowhere.pt"), action)
    with pytest.raises(ConfigError, match=r"^train.init: checkpoint not found: '.*checkpoints/latest.pt'$"):
        init_flow_from(flow, str(tmp_path), action)  # a run directory without a checkpoint


def _config(out, shape, **train):
    return config_from_dict({"name": "t", "seed": 2, "action": {"theory": "phi4", "shape": shape, "kappa": 0.2, "lam": 0.1},
                             "flow": SMALL_FLOW, "train": {"batch_size": 8, "log_every": 5, "checkpoint_every": 10, **train},
                             "output": {"dir": str(out)}})


def test_latticeflow_train_with_init_and_seconds(tmp_path):
    """`train` at 4×4, then an 8×8 run with ``train.init`` = the first run's directory: the weights carry
    over, the summary records ``init_from``; its rerun with more steps resumes (the resume takes
    precedence, ``init_from`` stays recorded). A ``train.seconds`` budget ends a run early."""
    first = train(_config(tmp_path / "a", [4, 4], steps=20), progress=False)
    assert first["init_from"] is None and first["stopped_by"] == "steps"
    source = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["flow"]
    second = train(_config(tmp_path / "b", [8, 8], steps=10, init=str(tmp_path / "a")), progress=False)
    ckpt = str(tmp_path / "a" / "checkpoints" / "latest.pt")
    assert second["init_from"] == ckpt and second["steps"] == 10
    assert json.loads((tmp_path / "b" / "train_summary.json").read_text())["init_from"] == ckpt
    again = train(_config(tmp_path / "b", [8, 8], steps=20, init=str(tmp_path / "a")), progress=False)
    assert again["resumed_from"] == 10 and again["init_from"] == ckpt
    assert not torch.equal(load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["flow"]["layers.0.net.net.net.0.weight"],
                           source["layers.0.net.net.net.0.weight"])  # trained on, not re-initialised
    budget = train(_config(tmp_path / "c", [4, 4], steps=10**6, seconds=0.5, scheduler="cosine"), progress=False)
    assert budget["stopped_by"] == "seconds" and 0 < budget["steps"] < 10**6 and budget["wall_time"] >= 0.5
    assert budget["final"]["step"] == budget["steps"] == load_checkpoint(tmp_path / "c" / "checkpoints" / "latest.pt")["step"]


def test_init_from_another_beta_keeps_the_plaquette_marginal_of_the_new_beta(tmp_path):
    """U(1) transfer in β: the couplings carry over, the plaquette-marginal layer keeps the exact
    single-plaquette marginal of the new β (its own initialisation), not the old β's."""
    from latticeflow.flows.u1_plaquette import PlaquetteMarginal

    torch.manual_seed(0)
    old_action, new_action = U1Gauge((4, 4), beta=3.0), U1Gauge((4, 4), beta=5.0)
    old = build_flow({"family": "u1", "n_layers": 8}, old_action)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.01)
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"flow": old.state_dict(), "theory": "u1",
                           "config": "action: {theory: u1, shape: [4, 4], beta: 3.0}\n"})
    new = build_flow({"family": "u1", "n_layers": 8}, new_action)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    _, adapted = init_flow_from(new, str(path), new_action)
    marginal = [n for n, m in new.named_modules() if isinstance(m, PlaquetteMarginal)]
    state = new.state_dict()
    assert marginal and all(any(k.startswith(m + ".") for m in marginal) for k in adapted)
    for k in state:
        same_as = fresh if any(k.startswith(m + ".") for m in marginal) else old.state_dict()
        assert torch.equal(state[k], same_as[k]), k
    same_beta = build_flow({"family": "u1", "n_layers": 8}, old_action)  # same β: everything carries over
    init_flow_from(same_beta, str(path), old_action)
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in same_beta.state_dict().items())
