"""`latticeflow sample` with a chain sampler (``needs_flow: false`` in ``latticeflow.samplers.SAMPLERS``:
HMC, the φ⁴ cluster sampler, …): many chains as one batch; after thermalisation (HMC step size tuned, then
frozen) every ``save_every``-th update of every chain is a row of the ensemble, written in batches of about
``sampler.batch_size`` rows and flushed after each. Rerunning the same command on a killed or shorter run
resumes from the last complete batch: the chains restart from their last stored configurations with the
stored sampler state (``state_attrs``, e.g. the step size) and random-number state.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config, ConfigError, build_action
from ..io import EnsembleWriter, read_last_sweep
from ..io._format import check_couplings, check_equal, decode_attrs, open_h5_readonly
from ..io.shards import SHARD_RANKS_ATTR
from ..io.verify import warn
from ..samplers import hmc_chains, make_chain_sampler
from .common import SampleSummary, resolve_device

__all__ = ["sample_chains", "check_resume", "open_resume"]


def _measure(action, x: torch.Tensor) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in action.observables(x).items()}



def refuse(gate, writer: EnsembleWriter | None, err: BaseException) -> None:
    """A check refused this rank: close the resumed writer (nothing was written) and tell the MPI gate."""
    if writer is not None:
        writer.close()
    if gate is not None:
        gate.ready(err)


def gated_writer(gate, writer: EnsembleWriter | None, path: Path, action, cfg: Config, sampler: str,
                 replica: int | None, config_text: str, command: str | None) -> EnsembleWriter:
    """Pass the MPI gate (every rank's checks passed), then the writer to append with: the resumed one (its
    damaged-tail message printed now, after the gate) or a new file."""
    if gate is not None:
        try:
            gate.ready()
        except Exception:
            if writer is not None:
                writer.close()
            raise
    if writer is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return EnsembleWriter(path, theory=action.theory, couplings=action.couplings, shape=tuple(action.shape),
                              field_shape=tuple(action.field_shape), sampler=sampler, seed=cfg.seed,
                              replica=replica or 0, config_text=config_text, dtype=cfg.dtype, command=command)
    if writer.resume_message:
        warn(writer.resume_message)
    return writer

def open_resume(path: Path, action, sampler: str, dtype: str, n_chains: int | None, first_chain: int = 0,
                default_n_chains: int = -1, n_target: int | None = None,
                **writer_args) -> tuple[EnsembleWriter | None, int]:
    """Read-only: every check that can refuse appending to the ensemble at ``path``, run before anything is
    written (theory, couplings, shape, sampler, structure and checksums, and for chains ``n_chains`` and whole
    sweeps). Returns ``(writer, rows kept)``: the writer opened on the existing file (it writes nothing before
    its first append; a damaged tail is cut back then, its message in ``writer.resume_message``), or
    ``(None, 0)`` if there is no file yet. The last sweep is checked at the rows kept, after the cut. A file with
    observables added by `latticeflow measure` is refused if it would grow (below ``n_target`` rows)."""
    if not Path(path).exists():
        return None, 0
    with open_h5_readonly(path) as f:
        attrs = decode_attrs(f.attrs)
    if "format_version" not in attrs:
        raise ValueError(f"not a latticeflow ensemble: {path} (no format_version attribute)")
    check_equal("theory", attrs.get("theory"), action.theory, path)
    check_couplings({n: attrs.get(n, float("nan")) for n in attrs.get("coupling_names", [])},
                    {str(k): float(v) for k, v in action.couplings.items()}, path)
    check_equal("shape", tuple(attrs.get("shape", ())), tuple(action.shape), path)
    check_equal("field_shape", tuple(attrs.get("field_shape", ())), tuple(action.field_shape), path)
    check_equal("sampler", attrs.get("sampler"), sampler, path)
    check_equal("dtype", attrs.get("dtype"), np.dtype(dtype).name, path)
    stored = int(attrs.get("n_rows", 0))
    if stored and n_chains is not None and stored % n_chains:  # never written so by a chain sampler: refused
        try:
            read_last_sweep(path, stored, n_chains, first_chain, datasets=(), default_n_chains=default_n_chains)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    writer_args.setdefault("seed", int(attrs.get("seed", 0)))
    writer = EnsembleWriter(path, theory=action.theory, couplings=action.couplings, shape=tuple(action.shape),
                            field_shape=tuple(action.field_shape), sampler=sampler, dtype=dtype, quiet=True,
                            **writer_args)  # read-only here: computes the rows a damaged tail leaves
    n_rows = writer.n_rows
    if n_target is not None and n_rows < n_target and writer.measured:
        writer.close()
        raise ValueError(f"{path} holds {', '.join(writer.measured)}, added by `latticeflow measure`, which new rows "
                         f"would lack: sample more into another directory, then measure again; nothing was written")
    if n_rows and n_chains is not None:
        try:
            read_last_sweep(path, n_rows, n_chains, first_chain, datasets=(), default_n_chains=default_n_chains)
        except ValueError as err:
            writer.close()
            raise ConfigError(str(err)) from None
    return writer, n_rows


def check_resume(path: Path, action, sampler: str, dtype: str, n_chains: int | None, first_chain: int = 0,
                 default_n_chains: int = -1) -> int:
    """Read-only: `open_resume` without keeping the writer; the rows a resume continues from (0 if there is no
    file yet; fewer than the file's ``n_rows`` where a damaged tail will be cut back)."""
    writer, n_rows = open_resume(path, action, sampler, dtype, n_chains, first_chain, default_n_chains)
    if writer is not None:
        writer.close()
    return n_rows


def sample_chains(cfg: Config, config_text: str = "", *, command: str | None = None, progress: bool = True,
                  path: Path | None = None, replica: int | None = None, gate=None,
                  n_replicas: int | None = None) -> SampleSummary:
    """Generate (or resume) the chain ensemble of ``cfg`` at ``path`` (default ``<output.dir>/ensemble.h5``);
    ``replica`` marks one shard of an MPI run of ``n_replicas`` ranks (its chains numbered from
    ``replica * n_chains``). ``gate`` (a `latticeflow.pipeline.rundir.WriteGate`) is passed after the read-only
    checks and before the first write."""
    s = cfg.sampler
    action = build_action(cfg.action)
    device, dtype = resolve_device(cfg.device), cfg.torch_dtype
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    out_dir = cfg.output_dir
    path = Path(path) if path is not None else out_dir / "ensemble.h5"
    n_chains = s.n_chains
    n_target = math.ceil(s.n_samples / n_chains) * n_chains
    sweeps_per_batch = max(1, s.batch_size // n_chains)
    first_chain = (replica or 0) * n_chains
    writer = None
    try:  # every refusal before the first write (the writer opened on an existing file writes nothing yet)
        try:
            sampler = make_chain_sampler(s.name, action, s, generator)
        except ValueError as err:
            raise ConfigError(f"sampler: {err}") from None
        writer, n_rows = open_resume(path, action, s.name, cfg.dtype, n_chains, first_chain, n_target=n_target,
                                     seed=cfg.seed,
                                     replica=replica or 0, config_text=config_text, command=command)
        state = _resume_state(path, n_rows, n_chains, sampler, generator, dtype, device, first_chain) if n_rows else None
    except Exception as err:
        refuse(gate, writer, err)
        raise
    writer = gated_writer(gate, writer, path, action, cfg, s.name, replica, config_text, command)
    t0 = time.perf_counter()
    if gate is not None:
        gate.accepted()  # config.yaml, only once the ensemble file accepted this config
    try:
        resumed = n_rows > 0
        if state is not None:
            x, sweep = state
        else:
            x = action.hot_start(n_chains, generator, dtype, device)
            bar = tqdm(total=s.n_thermalize, desc="thermalise", disable=not progress, unit="traj", file=sys.stderr,
                       mininterval=0.5)
            x = sampler.thermalize(x, s.n_thermalize, callback=lambda t, a, e: (
                bar.set_postfix(acc=f"{a:.2f}", eps=f"{e:.3g}", refresh=False), bar.update(1)))
            bar.close()
            sweep = 0
            ranks = {SHARD_RANKS_ATTR: n_replicas} if n_replicas else {}
            writer.set_attrs(n_chains=n_chains, n_thermalize=s.n_thermalize, n_leapfrog=s.n_leapfrog,
                             integrator=s.integrator, save_every=s.save_every, **ranks, **sampler.state_attrs())
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # Σ accepted, Σ e^{−ΔH}: no sync per sweep
        acc_sum = edh_sum = 0.0
        n_traj = 0
        bar = tqdm(total=n_target, initial=min(n_rows, n_target), desc=s.name, unit="cfg",
                   disable=not progress, file=sys.stderr, mininterval=0.5)
        chain_ids = np.arange(first_chain, first_chain + n_chains, dtype=np.int64)
        n_sweeps = max((n_target - n_rows) // n_chains, 0)
        batch: list = []
        for sw in hmc_chains(sampler, x, n_sweeps, save_every=s.save_every, first_sweep=sweep):
            sums[0] += sw.n_accepted  # every trajectory counts, also those between stored configurations
            sums[1] += sw.sum_exp_minus_delta_h
            n_traj += n_chains * sw.n_updates
            obs = _measure(action, sw.x)
            obs["delta_h"] = sw.delta_h.detach().cpu().numpy()
            batch.append((sw.x.detach().cpu().numpy(), sw.action.detach().cpu().numpy(),
                          sw.accepted.cpu().numpy(), sw.index, obs))
            if len(batch) < sweeps_per_batch and (n_target - writer.n_rows) // n_chains > len(batch):
                continue
            observables = {k: np.concatenate([b[4][k] for b in batch]) for k in batch[0][4]}
            writer.append(np.concatenate([b[0] for b in batch]), np.concatenate([b[1] for b in batch]),
                          accepted=np.concatenate([b[2] for b in batch]), chain=np.tile(chain_ids, len(batch)),
                          mc_index=np.concatenate([np.full(n_chains, b[3], dtype=np.int64) for b in batch]),
                          observables=observables)
            writer.set_attrs(rng_state=generator.get_state().cpu().numpy(), rng_state_rows=writer.n_rows,
                             **sampler.state_attrs())
            bar.update(len(batch) * n_chains)
            batch = []
            acc_sum, edh_sum = sums.tolist()  # one sync per written batch
            bar.set_postfix(acc=f"{acc_sum / n_traj:.3f}", exp_dH=f"{edh_sum / n_traj:.3f}", refresh=False)
        bar.close()
        n_final = writer.n_rows
    finally:
        writer.close()
    return SampleSummary(path=str(path), n_rows=n_final, n_new=n_final - n_rows,
                         acceptance=acc_sum / n_traj if n_traj else float("nan"),
                         exp_minus_delta_h=edh_sum / n_traj if n_traj else float("nan"),
                         step_size=float(sampler.state_attrs().get("step_size", float("nan"))),
                         seconds=time.perf_counter() - t0, resumed=resumed,
                         winding_acceptance=_or_nan(getattr(sampler, "winding_acceptance", None)))


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _resume_state(path: Path, n_rows: int, n_chains: int, sampler, generator: torch.Generator, dtype, device,
                  first_chain: int = 0) -> tuple[torch.Tensor, int]:
    """Last configuration of every chain, the sampler state and the RNG state of a stored run."""
    try:
        last, attrs = read_last_sweep(path, n_rows, n_chains, first_chain, datasets=("samples",))
    except ValueError as err:
        if "n_chains" in str(err):
            raise ConfigError(str(err)) from None
        raise
    x = torch.as_tensor(last["samples"], dtype=dtype, device=device)
    sweep = int(last["mc_index"].max()) + 1
    try:
        sampler.load_state_attrs(attrs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if int(attrs.get("rng_state_rows", -1)) == n_rows and "rng_state" in attrs:
        generator.set_state(torch.as_tensor(np.asarray(attrs["rng_state"], dtype=np.uint8)))
    else:  # the batch was committed but its RNG state was not: continue with a fresh, reproducible stream
        generator.manual_seed(int(attrs.get("seed", 0)) * 1_000_003 + n_rows)
    return x, sweep
