"""The benchmarks' fair HMC protocol (`tune_trajectory`, `tuned_run`): the trajectory length ε·n_leapfrog is
set to the requested one from the step size tuned at the target acceptance, and a timed run keeps that
acceptance and measures after every sweep."""
import torch

from actions import Phi4
from latticeflow.samplers.hmc import HMC, tune_trajectory, tuned_run

F64 = torch.float64
FREE = Phi4((8, 8), kappa=0.2, lam=0.0)  # a Gaussian target: the acceptance barely depends on n_leapfrog


def _hmc(seed: int = 0) -> tuple[HMC, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hmc = HMC(FREE, n_leapfrog=10, step_size=0.1, target_acceptance=0.8, generator=gen)
    return hmc, torch.randn(16, *FREE.shape, dtype=F64, generator=gen)


def test_tune_trajectory_sets_the_trajectory_length_from_the_tuned_step_size():
    twin, x0 = _hmc()
    twin.thermalize(x0, 100)  # the same chains and random numbers up to the first tuning: the same step size
    hmc, x = _hmc()
    x = tune_trajectory(hmc, x, 100, trajectory_length=2.0)
    assert hmc.n_leapfrog == max(1, round(2.0 / twin.step_size))  # exact: the rule, with the first tuned step size
    # the re-tuned step size at the new length moves the product by less than 25 % (a Gaussian target)
    assert abs(hmc.n_leapfrog * hmc.step_size - 2.0) < 0.25 * 2.0, (hmc.n_leapfrog, hmc.step_size)
    assert x.shape == x0.shape and torch.isfinite(x).all()


def test_tuned_run_keeps_the_target_acceptance_and_measures_every_sweep():
    hmc, x = _hmc(1)
    run = tuned_run(hmc, x, n_thermalize=100, seconds=0.0, min_sweeps=50, measure=lambda x: x.mean().item())
    assert set(run) == {"measurements", "acceptance", "thermalize_seconds", "wall_seconds", "cpu_seconds"}
    assert len(run["measurements"]) == len(run["acceptance"]) == 50  # seconds=0: exactly min_sweeps sweeps
    # 50 sweeps × 16 chains: the binomial error of the mean acceptance is ≈ 0.015; 0.1 is > 5σ
    assert abs(sum(run["acceptance"]) / 50 - 0.8) < 0.1
    assert run["thermalize_seconds"] > 0 and run["wall_seconds"] > 0 and run["cpu_seconds"] >= 0
