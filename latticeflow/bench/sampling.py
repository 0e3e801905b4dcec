"""`latticeflow bench sampling`: configurations per second of flow sampling, neural MCMC and the HDF5 write, and
the shares of the HDF5 write (design: ≤ 10 %; it includes the per-batch checksums, fsync and length check of a
commit), of the checksums alone (issue 24: ≤ 2 %) and of the trust verdict's diagnostics (issue 12: < 5 %).
Protocol: docs/benchmarks.md#sampling."""
from __future__ import annotations

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
from ..samplers.nmcmc import metropolize
from ..pipeline.common import resolve_dtype as torch_dtype

__all__ = ["run_sampling_bench", "format_sampling_table"]


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


def run_sampling_bench(batch_size: int = 4096, n_batches: int = 8, dtype=torch.float32, quick: bool = False) -> dict:
    """{"benchmark": "sampling", …, "results": one per case} (docs/benchmarks.md#sampling)."""
    with tempfile.TemporaryDirectory() as tmp:
        return result_header("sampling", results=[_bench(n, a, f, batch_size, 3 if quick else n_batches, torch_dtype(dtype),
                                                         Path(tmp)) for n, a, f in _cases()])


def format_sampling_table(result: dict) -> str:
    return text_table([("case", "<18"), ("flow cfg/s", "11.0f"), ("NMCMC cfg/s", "12.0f"), ("written cfg/s", "14.0f"),
                       ("HDF5 cfg/s", "11.0f"), ("HDF5 share", "11.1%"), ("checksums", "10.2%"),
                       ("diagnostics", "12.2%")],
                      [[r["case"], *(r["configs_per_s"][k] for k in ("flow_sampling", "nmcmc_with_observables",
                                                                      "nmcmc_written", "hdf5_write")),
                        r["hdf5_share"], r["checksum_share"], r["diagnostics_share"]] for r in result["results"]])
