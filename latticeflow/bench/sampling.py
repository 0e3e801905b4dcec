"""`latticeflow bench sampling`: configurations per second of flow sampling, neural MCMC and the HDF5 write, and
the shares of the HDF5 write (design: ≤ 10 %; it includes the per-batch checksums, fsync and length check of a
commit), of the checksums alone (issue 24: ≤ 2 %) and of the trust verdict's diagnostics (issue 12: < 5 %), and
NMCMC's accept/reject of 16 chains × 4096 proposals, vectorised against the Python loop it replaced (issue 25:
≥ 10× faster). Protocol: docs/benchmarks.md#sampling."""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actions import Phi4, U1Gauge
from ..analysis import text_table
from ..analysis.diagnostics import longest_rejection_run
from ..analysis.verdict import markov_checks, weight_checks
from ..flows import build_flow
from ..gradients import log_weights
from ..io import EnsembleWriter, result_header
from ..io.checksums import crc_of
from ..samplers.flow import SAMPLE_CHUNK
from ..samplers.nmcmc import _steps_checked, metropolize
from ..pipeline.common import resolve_dtype as torch_dtype

__all__ = ["run_sampling_bench", "format_sampling_table", "metropolis_speedup"]


def _cases():
    return [("phi4 16x8 z2nice", Phi4((16, 8), kappa=0.3, lam=0.022), {"family": "z2nice"}),
            ("u1 8x8 ncp", U1Gauge((8, 8), beta=2.0), {"family": "u1_ncp"})]


@torch.no_grad()
def _bench(name, action, flow_cfg, batch_size: int, n_batches: int, dtype, tmpdir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    flow = build_flow(flow_cfg, action).to(dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    t_flow, t_obs, t_mh, t_write, t_crc = [], [], [], [], []
    kept_obs, kept_lw, kept_acc = [], [], []
    path = tmpdir / f"{name.replace(' ', '_')}.h5"
    writer = EnsembleWriter(path, theory=action.theory, couplings=action.couplings, shape=tuple(action.shape),
                            field_shape=tuple(action.field_shape), sampler="nmcmc", seed=0,
                            dtype=str(dtype).replace("torch.", ""))
    try:
        for i in range(n_batches + 1):
            t0 = time.perf_counter()
            x, log_q, s = log_weights(flow, action, batch_size, chunk=SAMPLE_CHUNK, generator=gen)
            t1 = time.perf_counter()
            obs = {k: v.numpy() for k, v in action.observables(x).items()}
            t2 = time.perf_counter()
            # the Metropolis step alone (proposals already drawn)
            lw = (-s - log_q).numpy()
            idx = metropolize(lw, np.log(np.random.default_rng(i).random(batch_size)), -np.inf)
            xs = x[torch.as_tensor(np.maximum(idx, 0))]
            t3 = time.perf_counter()
            writer.append(xs, s, log_q=log_q, log_weight=-s - log_q, accepted=np.ones(batch_size, bool),
                          chain=np.zeros(batch_size, np.int64), mc_index=np.arange(batch_size) + i * batch_size,
                          observables=obs)
            t4 = time.perf_counter()
            for arr in (xs, s, log_q, -s - log_q, *obs.values()):  # what the writer checksums (as stored)
                crc_of(np.asarray(arr))
            t5 = time.perf_counter()
            kept_obs.append(obs); kept_lw.append(lw); kept_acc.append(idx >= 0)
            if i:  # first batch is warm-up
                t_flow.append(t1 - t0); t_obs.append(t2 - t1); t_mh.append(t3 - t2); t_write.append(t4 - t3)
                t_crc.append(t5 - t4)
        size = path.stat().st_size
    finally:
        writer.close()
    t_diag = _diagnostics_seconds(kept_obs, kept_lw, kept_acc, n_chains=16)
    med = {k: statistics.median(v) for k, v in (("flow", t_flow), ("observables", t_obs), ("metropolis", t_mh),
                                                  ("hdf5_write", t_write))}
    total = sum(med.values())
    crc = statistics.median(t_crc)
    return {"case": name, "batch_size": batch_size, "n_batches": n_batches,
            "configs_per_s": {"flow_sampling": batch_size / med["flow"],
                              "nmcmc_with_observables": batch_size / (total - med["hdf5_write"]),
                              "nmcmc_written": batch_size / total,
                              "hdf5_write": batch_size / med["hdf5_write"]},
            "seconds_per_batch": med, "hdf5_share": med["hdf5_write"] / total, "checksum_seconds": crc,
            "checksum_share": crc / total,
            "diagnostics_seconds": t_diag, "diagnostics_share": t_diag / (total * (n_batches + 1)),
            "bytes_per_config": size / ((n_batches + 1) * batch_size)}


def _diagnostics_seconds(obs: list[dict], log_weight: list, accepted: list, n_chains: int) -> float:
    """Seconds of the verdict's figures on all rows, cut into ``n_chains`` chains (every scalar observable,
    τ_int set to 1: the Gamma method is the analysis proper, timed by no one here)."""
    t0 = time.perf_counter()
    series = {}
    for name in obs[0]:
        v = np.concatenate([o[name] for o in obs])
        if v.ndim == 1:
            series[name] = np.array_split(v, n_chains)
    markov_checks(series, {name: 1.0 for name in series})
    weight_checks(np.concatenate(log_weight), "NMCMC proposals")
    for acc in np.array_split(np.concatenate(accepted), n_chains):
        longest_rejection_run(acc)
    return time.perf_counter() - t0


def _metropolis_loop(lw: np.ndarray, log_u: np.ndarray, k: int, current: list[float], runs: list[int],
                     longest: list[int]) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """NMCMC's accept/reject before issue 25, kept as the reference: per chain a Python loop over its proposals
    (proposal r to chain r mod k) on Python floats, then per proposal the rejection-run counters. Returns the row
    of each state (−1: the state before the batch), the decisions, and the current and longest runs."""
    b = len(lw)
    take, accepted = np.empty(b, dtype=np.int64), np.empty(b, dtype=bool)
    for c in range(k):
        idx = np.empty(b // k, dtype=np.int64)
        cur_i, cur_w = -1, current[c]
        for i, (w, u) in enumerate(zip(lw[c::k].tolist(), log_u[c::k].tolist())):
            if u < w - cur_w or (cur_w == -math.inf and w > -math.inf):
                cur_i, cur_w = i, w
            idx[i] = cur_i
        acc = np.empty(len(idx), dtype=bool)
        acc[0] = idx[0] == 0
        acc[1:] = idx[1:] != idx[:-1]
        accepted[c::k] = acc
        take[c::k] = np.where(idx < 0, -1, c + k * idx)
    new_runs, new_longest = [], []
    for c in range(k):
        run, top = runs[c], longest[c]
        for a in accepted[c::k].tolist():
            run = 0 if a else run + 1
            top = max(top, run)
        new_runs.append(run)
        new_longest.append(top)
    return take, accepted, new_runs, new_longest


def metropolis_speedup(n_chains: int = 16, n_proposals: int = 4096, repeats: int = 7, seed: int = 0) -> dict[str, Any]:
    """Seconds of NMCMC's accept/reject of ``n_chains`` chains × ``n_proposals`` proposals each (the decisions,
    the row of each state and the rejection-run counters, from float64 log-weights and log-uniforms in the
    sampler's row order): the Python loop it replaced (`_metropolis_loop`) against the vectorised version
    (`latticeflow.samplers.nmcmc._steps_checked`, as `nmcmc_chains` calls it, on the CPU), interleaved, medians of
    ``repeats``; the two must agree exactly. Log-weights ~ N(0, 1.5²) (acceptance ≈ 0.4), half the chains fresh."""
    k, n = n_chains, n_proposals
    rng = np.random.default_rng(seed)
    lw, log_u = rng.normal(0.0, 1.5, k * n), np.log(rng.random(k * n))
    current = [-math.inf if c % 2 else float(rng.normal(0.0, 1.5)) for c in range(k)]
    runs = [int(r) for r in rng.integers(0, 5, k)]
    longest = [r + 3 for r in runs]
    lw_t, lu_t = torch.from_numpy(lw).view(n, k), torch.from_numpy(log_u).view(n, k)
    cur_t, runs_t = torch.tensor(current, dtype=torch.float64), torch.tensor(runs)
    t_loop, t_vec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        take, accepted, new_runs, new_longest = _metropolis_loop(lw, log_u, k, current, runs, longest)
        t1 = time.perf_counter()
        index, acc, run, top = _steps_checked(lw_t, lu_t, cur_t, runs_t)
        top = torch.maximum(top, torch.tensor(longest, dtype=top.dtype))
        t2 = time.perf_counter()
        t_loop.append(t1 - t0)
        t_vec.append(t2 - t1)
    lane = torch.arange(k)
    rows = torch.where(index >= 0, index.long() * k + lane, -1).view(-1).numpy()
    if not (np.array_equal(rows, take) and np.array_equal(acc.view(-1).numpy(), accepted)
            and run.tolist() == new_runs and top.tolist() == new_longest):
        raise AssertionError("bench sampling: the vectorised accept/reject differs from the loop")
    loop, vec = statistics.median(t_loop), statistics.median(t_vec)
    return {"n_chains": k, "proposals_per_chain": n, "repeats": repeats, "acceptance": float(accepted.mean()),
            "loop_seconds": loop, "vectorised_seconds": vec, "speedup": loop / vec}


def run_sampling_bench(batch_size: int = 4096, n_batches: int = 8, dtype=torch.float32, quick: bool = False) -> dict:
    """{"benchmark": "sampling", …, "results": one per case, "metropolis": `metropolis_speedup`}
    (docs/benchmarks.md#sampling)."""
    with tempfile.TemporaryDirectory() as tmp:
        results = [_bench(n, a, f, batch_size, 3 if quick else n_batches, torch_dtype(dtype), Path(tmp))
                   for n, a, f in _cases()]
    return result_header("sampling", results=results, metropolis=metropolis_speedup(repeats=3 if quick else 7))


def format_sampling_table(result: dict) -> str:
    """The per-case table, then the accept/reject line."""
    table = text_table([("case", "<18"), ("flow cfg/s", "11.0f"), ("NMCMC cfg/s", "12.0f"), ("written cfg/s", "14.0f"),
                        ("HDF5 cfg/s", "11.0f"), ("HDF5 share", "11.1%"), ("checksums", "10.2%"),
                        ("diagnostics", "12.2%")],
                       [[r["case"], *(r["configs_per_s"][k] for k in ("flow_sampling", "nmcmc_with_observables",
                                                                       "nmcmc_written", "hdf5_write")),
                         r["hdf5_share"], r["checksum_share"], r["diagnostics_share"]] for r in result["results"]])
    return table + _mh_line(result)


def _mh_line(result: dict) -> str:
    m = result.get("metropolis")
    if not m:
        return ""
    return (f"\nNMCMC accept/reject, {m['n_chains']} chains × {m['proposals_per_chain']} proposals: Python loop "
            f"{m['loop_seconds'] * 1e3:.1f} ms, vectorised {m['vectorised_seconds'] * 1e3:.2f} ms "
            f"({m['speedup']:.1f}×, medians of {m['repeats']}, interleaved)")
