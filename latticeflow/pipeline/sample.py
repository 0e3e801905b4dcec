"""`latticeflow sample`: run a sampler from a config and stream its ensemble to HDF5.

HMC: many chains as one batch; after thermalisation (step size tuned, then frozen) every
``save_every``-th trajectory of every chain is a row of ``<output.dir>/ensemble.h5``, written in
batches of about ``sampler.batch_size`` rows and flushed after each. Rerunning the same command on a
killed or shorter run resumes from the last complete batch: the chains restart from their last stored
configurations with the stored step size and random-number state.

Under ``mpiexec -n N`` every rank samples its own replica (``n_samples`` and ``n_chains`` per rank, its
own seed) into a shard file, and rank 0 writes the master file; see :mod:`latticeflow.pipeline.shards`.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config, ConfigError, build_action
from ..io import EnsembleWriter, open_ensemble
from ..samplers import HMC

__all__ = ["SampleSummary", "sample", "resolve_device"]


@dataclass
class SampleSummary:
    """What a sampling run did (printed by the CLI, written to ``summary.json``)."""

    path: str
    n_rows: int
    n_new: int
    acceptance: float
    exp_minus_delta_h: float
    step_size: float
    seconds: float
    resumed: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_device(name: str) -> torch.device:
    """``torch.device`` for a config's ``device``; a clear error if CUDA is asked for but absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device is {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def _initial_fields(action, n: int, generator: torch.Generator, dtype, device) -> torch.Tensor:
    """Hot start: N(0, 1) per site for φ⁴, uniform angles in (−π, π] for U(1)."""
    shape = (n, *action.field_shape)
    if action.theory == "u1":
        x = (torch.rand(shape, generator=generator, dtype=dtype, device=device) * 2 - 1) * math.pi
        return action.project(x)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _measure(action, x: torch.Tensor) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in action.observables(x).items()}


def sample(cfg: Config, config_text: str = "", *, command: str | None = None,
           progress: bool = True, checkpoint: str | None = None, path: Path | None = None,
           replica: int | None = None, world=None) -> SampleSummary:
    """Generate (or resume) the ensemble of ``cfg`` into ``<output.dir>/ensemble.h5``.

    ``world`` defaults to the MPI world of the process: with several ranks this writes one shard per
    rank and the master file (:func:`latticeflow.pipeline.shards.sample_sharded`). ``replica`` marks a
    call that writes one shard: its chains are numbered from ``replica * n_chains`` (unique across
    the shards) and ``config.yaml`` is left to the caller.
    """
    if replica is None:
        from .shards import check_not_master, sample_sharded

        from ..distributed import get_world

        world = world or get_world()
        if world.distributed:
            return sample_sharded(cfg, config_text, command=command, progress=progress, checkpoint=checkpoint,
                                  path=path, world=world)
        check_not_master(Path(path) if path is not None else cfg.output_dir / "ensemble.h5")
    if cfg.sampler.name != "hmc":
        from .sample_flow import sample_with_flow

        return sample_with_flow(cfg, config_text, checkpoint=checkpoint, command=command, progress=progress, path=path,
                                replica=replica)
    s = cfg.sampler
    action = build_action(cfg.action)
    device, dtype = resolve_device(cfg.device), cfg.torch_dtype
    out_dir = cfg.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(path) if path is not None else out_dir / "ensemble.h5"
    n_chains = s.n_chains
    n_sweeps = math.ceil(s.n_samples / n_chains)
    n_target = n_sweeps * n_chains
    sweeps_per_batch = max(1, s.batch_size // n_chains)

    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    hmc = HMC(action, n_leapfrog=s.n_leapfrog, step_size=s.step_size, integrator=s.integrator,
              target_acceptance=s.target_acceptance, step_size_jitter=s.step_size_jitter, generator=generator)
    writer = EnsembleWriter(path, theory=action.theory, couplings=action.couplings, shape=tuple(action.shape),
                            field_shape=tuple(action.field_shape), sampler="hmc", seed=cfg.seed,
                            replica=replica or 0, config_text=config_text, dtype=cfg.dtype, command=command)
    t0 = time.perf_counter()
    if replica is None:
        (out_dir / "config.yaml").write_text(config_text)  # only once the ensemble file accepted this config
    first_chain = (replica or 0) * n_chains
    try:
        n_rows = writer.n_rows
        resumed = n_rows > 0
        if resumed:
            x, sweep = _resume_state(path, writer, n_chains, hmc, generator, dtype, device, first_chain)
        else:
            x = _initial_fields(action, n_chains, generator, dtype, device)
            bar = tqdm(total=s.n_thermalize, desc="thermalise", disable=not progress, unit="traj", file=sys.stderr,
                       mininterval=0.5)
            x = hmc.thermalize(x, s.n_thermalize, callback=lambda t, a, e: (
                bar.set_postfix(acc=f"{a:.2f}", eps=f"{e:.3g}", refresh=False), bar.update(1)))
            bar.close()
            sweep = 0
            writer.set_attrs(step_size=hmc.step_size, n_chains=n_chains, n_thermalize=s.n_thermalize,
                             n_leapfrog=s.n_leapfrog, integrator=s.integrator, save_every=s.save_every)
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # Σ accepted, Σ e^{−ΔH}: no sync per trajectory
        acc_sum = edh_sum = 0.0
        n_traj = 0
        bar = tqdm(total=n_target, initial=min(n_rows, n_target), desc="sample", unit="cfg",
                   disable=not progress, file=sys.stderr, mininterval=0.5)
        action_x = None
        chain_ids = np.arange(first_chain, first_chain + n_chains, dtype=np.int64)
        while writer.n_rows < n_target:
            rows: dict[str, list] = {"samples": [], "action": [], "accepted": [], "chain": [], "mc_index": [], "obs": []}
            for _ in range(min(sweeps_per_batch, (n_target - writer.n_rows) // n_chains)):
                accepted_any = torch.zeros(n_chains, dtype=torch.bool, device=device)
                for _ in range(s.save_every):
                    step = hmc.step(x, action_x)
                    x, action_x = step.x, step.action
                    accepted_any |= step.accepted
                    sums[0] += step.accepted.to(torch.float64).sum()
                    sums[1] += torch.exp(-step.delta_h.to(torch.float64)).nan_to_num(0.0).sum()
                    n_traj += n_chains
                obs = _measure(action, x)
                obs["delta_h"] = step.delta_h.detach().cpu().numpy()
                rows["samples"].append(x.detach().cpu().numpy())
                rows["action"].append(action_x.detach().cpu().numpy())
                rows["accepted"].append(accepted_any.cpu().numpy())
                rows["chain"].append(chain_ids)
                rows["mc_index"].append(np.full(n_chains, sweep, dtype=np.int64))
                rows["obs"].append(obs)
                sweep += 1
            observables = {k: np.concatenate([o[k] for o in rows["obs"]]) for k in rows["obs"][0]}
            writer.append(np.concatenate(rows["samples"]), np.concatenate(rows["action"]),
                          accepted=np.concatenate(rows["accepted"]), chain=np.concatenate(rows["chain"]),
                          mc_index=np.concatenate(rows["mc_index"]), observables=observables)
            writer.set_attrs(rng_state=generator.get_state().cpu().numpy(), rng_state_rows=writer.n_rows)
            bar.update(len(rows["chain"]) * n_chains)
            acc_sum, edh_sum = sums.tolist()  # one sync per written batch
            if n_traj:
                bar.set_postfix(acc=f"{acc_sum / n_traj:.3f}", exp_dH=f"{edh_sum / n_traj:.3f}", refresh=False)
        bar.close()
        n_final = writer.n_rows
    finally:
        writer.close()
    return SampleSummary(path=str(path), n_rows=n_final, n_new=n_final - n_rows,
                         acceptance=acc_sum / n_traj if n_traj else float("nan"),
                         exp_minus_delta_h=edh_sum / n_traj if n_traj else float("nan"),
                         step_size=hmc.step_size, seconds=time.perf_counter() - t0, resumed=resumed)


def _resume_state(path: Path, writer: EnsembleWriter, n_chains: int, hmc: HMC,
                  generator: torch.Generator, dtype, device, first_chain: int = 0) -> tuple[torch.Tensor, int]:
    """Last configuration of every chain, the frozen step size and the RNG state of a stored run."""
    with open_ensemble(path) as ens:
        attrs = ens.attrs
        stored_chains = int(attrs.get("n_chains", -1))
        if stored_chains != n_chains:
            raise ConfigError(f"sampler.n_chains is {n_chains} but {path} was written with n_chains={stored_chains}")
        n = ens.n_rows
        if n % n_chains:
            raise ValueError(f"{path} holds {n} rows, not a whole number of sweeps of {n_chains} chains")
        last = slice(n - n_chains, n)
        import h5py  # local: only the tail of the file is read

        with h5py.File(path, "r") as f:
            x = torch.as_tensor(np.asarray(f["samples"][last]), dtype=dtype, device=device)
            chain = np.asarray(f["chain"][last])
            sweep = int(np.asarray(f["mc_index"][last]).max()) + 1
        if not np.array_equal(chain, np.arange(first_chain, first_chain + n_chains)):
            raise ValueError(f"{path}: the last sweep is incomplete (chains {chain.tolist()})")
        hmc.step_size = float(attrs["step_size"])
        if int(attrs.get("rng_state_rows", -1)) == n and "rng_state" in attrs:
            generator.set_state(torch.as_tensor(np.asarray(attrs["rng_state"], dtype=np.uint8)))
        else:  # the batch was committed but its RNG state was not: continue with a fresh, reproducible stream
            generator.manual_seed(int(attrs.get("seed", 0)) * 1_000_003 + n)
    return x, sweep
