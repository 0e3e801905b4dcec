"""`latticeflow sample` with a trained flow: ``sampler.name: flow`` (i.i.d. samples with importance
weights) or ``nmcmc`` (``sampler.n_chains`` independent Metropolis–Hastings chains fed from one stream of
flow proposals, written sweep-major with ``chain``/``mc_index`` like HMC), streamed to
``<output.dir>/ensemble.h5`` in batches of about ``sampler.batch_size`` and flushed after each; a killed
run resumes from the last complete batch (every chain continues from its last stored state).
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
from ..flows import build_flow
from ..io import load_checkpoint, read_last_sweep
from ..io.shards import SHARD_RANKS_ATTR
from ..samplers import SAMPLERS, ChainState, flow_batches, nmcmc_chains
from .common import SampleSummary, resolve_device
from .sample_chains import gated_writer, open_resume, refuse

__all__ = ["load_flow", "sample_with_flow"]


def load_flow(cfg: Config, checkpoint: str | Path | None = None):
    """(action, flow) with the weights of ``checkpoint`` (default ``<output.dir>/checkpoints/latest.pt``, or
    ``best.pt`` beside it with ``train.early_stopping``: the flow with the lowest validation NLL)."""
    action = build_action(cfg.action)
    device, dtype = resolve_device(cfg.device), cfg.torch_dtype
    path = Path(checkpoint) if checkpoint else cfg.output_dir / "checkpoints" / "latest.pt"
    if not checkpoint and cfg.train.early_stopping and (path.parent / "best.pt").is_file():
        path = path.parent / "best.pt"
    if not path.is_file():
        raise ConfigError(f"sampler.name {cfg.sampler.name!r} needs a trained flow: checkpoint not found: {str(path)!r} "
                          f"(run 'latticeflow train' first or pass --checkpoint)")
    flow = build_flow(cfg.flow, action).to(device=device, dtype=dtype)
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state.get("flow"), dict):
        raise ConfigError(f"checkpoint {str(path)!r} is not a checkpoint of 'latticeflow train' (no flow weights)")
    try:
        flow.load_state_dict(state["flow"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        first = " ".join(lines[:2])[:400]  # torch's header and its first list of keys, on one line
        hint = ("; its base and the config's differ in the vacuum start: set flow.vacua to the value it was trained "
                "with (false for checkpoints from before flow.vacua)") if "base.shift" in str(err) else ""
        raise ConfigError(f"checkpoint {str(path)!r} does not fit the config's flow section: {first}{hint}") from None
    flow.eval()
    return action, flow


def _resume_chains(path: Path, n: int, n_chains: int, first_chain: int, dtype, device) -> list[ChainState]:
    """The K chain states from the last sweep of a stored NMCMC run (its rejection runs from the attributes)."""
    try:
        last, attrs = read_last_sweep(path, n, n_chains, first_chain, datasets=("samples", "action", "log_q",
                                                                                   "log_weight"),
                                     default_n_chains=1)
    except ValueError as err:
        if "n_chains" in str(err):
            raise ConfigError(str(err)) from None
        raise
    x = torch.as_tensor(last["samples"], dtype=dtype, device=device)
    s, lq, lw = last["action"], last["log_q"], last["log_weight"]
    step = last["mc_index"] + 1
    longest = np.broadcast_to(np.asarray(attrs.get("longest_rejection_run", 0)), (n_chains,))
    current = np.broadcast_to(np.asarray(attrs.get("current_rejection_run", 0)), (n_chains,))
    return [ChainState(x[c], float(s[c]), float(lq[c]), float(lw[c]), int(step[c]), int(longest[c]), int(current[c]))
            for c in range(n_chains)]


def sample_with_flow(cfg: Config, config_text: str = "", *, checkpoint: str | None = None, command: str | None = None,
                     progress: bool = True, path: Path | None = None, replica: int | None = None, gate=None,
                     n_replicas: int | None = None) -> SampleSummary:
    """Write (or extend) the flow / NMCMC ensemble of ``cfg``; ``replica`` numbers the NMCMC chain of a shard of an
    MPI run of ``n_replicas`` ranks. ``gate`` (a `latticeflow.pipeline.rundir.WriteGate`) is passed after the
    read-only checks (the checkpoint included) and before the first write."""
    s = cfg.sampler
    device, dtype = resolve_device(cfg.device), cfg.torch_dtype
    out = cfg.output_dir
    path = path or out / "ensemble.h5"
    markov, k = SAMPLERS[s.name].markov, s.n_chains
    first_chain = (replica or 0) * k
    writer = None
    try:  # every refusal (a bad checkpoint, a file that cannot be resumed) before the first write
        action, flow = load_flow(cfg, checkpoint)
        writer, n_rows = open_resume(path, action, s.name, cfg.dtype, k if markov else None, first_chain,
                                     default_n_chains=1, n_target=s.n_samples, seed=cfg.seed, replica=replica or 0,
                                     config_text=config_text, command=command)
        states = _resume_chains(path, n_rows, k, first_chain, dtype, device) if n_rows and markov else None
    except Exception as err:
        refuse(gate, writer, err)
        raise
    writer = gated_writer(gate, writer, path, action, cfg, s.name, replica, config_text, command)
    if gate is not None:
        gate.accepted()
    t0 = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + n_rows + 17)
    n_acc = n_prop = 0
    try:
        remaining = max(s.n_samples - n_rows, 0)
        bar = tqdm(total=s.n_samples, initial=min(n_rows, s.n_samples), desc=s.name, unit="cfg", disable=not progress,
                   file=sys.stderr, mininterval=0.5)
        ranks = {SHARD_RANKS_ATTR: n_replicas} if n_replicas else {}
        if not markov:  # i.i.d. flow samples with importance weights
            if not n_rows and ranks:
                writer.set_attrs(**ranks)
            for batch in flow_batches(flow, action, remaining, s.batch_size, generator=generator):
                obs = {k: v.cpu().numpy() for k, v in action.observables(batch.x).items()}
                writer.append(batch.x, batch.action, log_q=batch.log_q, log_weight=batch.log_weight, observables=obs)
                bar.update(batch.x.shape[0])
        else:
            n_sweeps = max(math.ceil(s.n_samples / k) - n_rows // k, 0)
            bar.total = math.ceil(s.n_samples / k) * k
            if not n_rows:
                writer.set_attrs(n_chains=k, **ranks)
            for batch, states in nmcmc_chains(flow, action, n_sweeps, max(1, s.batch_size // k), k, states=states,
                                              generator=generator):
                obs = {k_: v.cpu().numpy() for k_, v in action.observables(batch.x).items()}
                writer.append(batch.x, batch.action, log_q=batch.log_q, log_weight=batch.log_weight,
                              accepted=batch.accepted, chain=batch.chain + first_chain,
                              mc_index=batch.mc_index, observables=obs, proposal_log_weight=batch.proposal_log_weight)
                writer.set_attrs(longest_rejection_run=np.array([st.longest_rejection_run for st in states]),
                                 current_rejection_run=np.array([st.current_rejection_run for st in states]))
                n_acc += int(batch.accepted.sum())
                n_prop += len(batch.accepted)
                bar.update(len(batch.accepted))
                bar.set_postfix(acc=f"{n_acc / n_prop:.3f}", refresh=False)
        bar.close()
        n_final = writer.n_rows
    finally:
        writer.close()
    return SampleSummary(path=str(path), n_rows=n_final, n_new=n_final - n_rows,
                         acceptance=n_acc / n_prop if n_prop else float("nan"), exp_minus_delta_h=float("nan"),
                         step_size=float("nan"), seconds=time.perf_counter() - t0, resumed=n_rows > 0)


