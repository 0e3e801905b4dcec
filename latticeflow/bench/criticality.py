"""`latticeflow bench criticality`: HMC, the Brower–Tamayo cluster sampler and flow NMCMC for critical φ⁴ on the
line ξ ≈ L/4 (issue 25): τ_int of χ₂ and |m|, configurations/s, the time to 10⁴ independent χ₂ samples (the
flow's training and its transfer chain L → 2L counted), reverse ESS and acceptance of the flow, agreement of
χ₂ and |m| between the samplers, and the exponents of cost against L. Protocol: docs/benchmarks.md#criticality."""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from actions import Phi4
from actions.phi4 import second_moment_xi
from ..analysis import figure, format_cell, pull, reverse_ess, tau_int_summary, text_table
from ..config import SamplerConfig
from ..flows import build_flow
from ..io import result_header, strict
from ..pipeline.common import resolve_dtype
from ..samplers import make_chain_sampler, nmcmc_chains
from ..samplers.hmc import tuned_run
from ..training import ArchitectureMismatch, Trainer, TrainingError, transfer_state, warm_up
from . import names

__all__ = ["KAPPAS", "LAM", "SIZES", "QUICK_SIZES", "SAMPLERS", "run_criticality_bench", "format_criticality_table",
           "plot_criticality", "fit_exponent", "observables", "progress_line"]

LAM = 0.5
#: κ on the line ξ ≈ L/4 at λ = 0.5 (issue 25; L = 8, the quick run's: ξ₂ = 2.04 measured with the cluster
#: sampler, 16 chains × 4 s)
KAPPAS: dict[int, float] = {8: 0.29, 16: 0.318, 32: 0.331, 64: 0.337, 128: 0.340}
SIZES = (16, 32, 64, 128)
QUICK_SIZES = (8, 16)
#: result key, label, colour; the MCMC entries are `latticeflow.samplers.SAMPLERS` names
SAMPLERS = (("hmc", "HMC", "tab:red"), ("cluster", "cluster (Brower-Tamayo)", "tab:green"),
            ("nmcmc", "NMCMC (flow)", "tab:blue"))
CHAIN_SAMPLERS = ("hmc", "cluster")
PAIRS = (("hmc", "cluster"), ("hmc", "nmcmc"), ("cluster", "nmcmc"))  # agreement of χ₂ and |m|
RATIOS = (("hmc", "nmcmc"), ("cluster", "nmcmc"), ("hmc", "cluster"))  # cost ratios
#: the two-level decimated spline flow (5/8 of the sites from their exact conditionals) with colour couplings (16:
#: every learned site twice, each given all the others) and a symmetric start at every L, so that the weights carry
#: over L → 2L (with vacua auto the base switches to the broken-phase mixture between L = 16 and 32 on this line,
#: another architecture); as in configs/phi4_critical_L*.yaml; ``--flow`` picks another
DEFAULT_FLOW: dict[str, Any] = {"family": "spline", "vacua": False, "decimate": 2, "colours": True, "n_layers": 16}
SETTINGS = {"seconds": 120.0, "n_chains": 16, "n_thermalize": 300, "max_proposals": 4096, "lr": 1e-3,
            "train_batch": {8: 128, 16: 64, 32: 16, 64: 16, 128: 4}}  # 64: as phi4_critical_L64.yaml
QUICK_SETTINGS = {"seconds": 1.0, "n_chains": 8, "n_thermalize": 40, "max_proposals": 256, "lr": 1e-3,
                  "train_batch": {8: 32, 16: 32, 32: 32, 64: 32, 128: 32}}
MIN_TAU_PER_CHAIN = 50.0
MIN_SWEEPS = 16
INDEPENDENT = 1e4
AGREEMENT_SIGMA = 4.0


def _sizes(sizes: str | Iterable[int | str] | None, quick: bool, kappas: Mapping[int, float]) -> list[int]:
    """Ascending distinct lattice sizes from a comma-separated string or an iterable; each must have a κ."""
    values = names(sizes if isinstance(sizes, str) else None if sizes is None else [str(s) for s in sizes])
    if values is None:
        return list(QUICK_SIZES if quick else SIZES)
    try:
        out = sorted({int(v) for v in values})
    except ValueError:
        raise ValueError(f"bench criticality: sizes must be integers, got {sizes!r}") from None
    unknown = [L for L in out if L not in kappas]
    if unknown:
        raise ValueError(f"bench criticality: no kappa on the line xi ~ L/4 for L = {unknown[0]} (sizes: "
                         f"{', '.join(map(str, sorted(kappas)))})")
    return out


def _parse_train_seconds(text: str) -> float | dict[int, float]:
    """``"600"`` (every L) or ``"16:300,32:1800"`` (per L; the others train for ``seconds``).

    Example:
        >>> _parse_train_seconds("16:300,32:1800")
        {16: 300.0, 32: 1800.0}
    """
    try:
        if ":" not in text:
            return float(text)
        return {int(L): float(v) for L, v in (item.split(":") for item in text.split(",") if item.strip())}
    except ValueError:
        raise ValueError(f"bench criticality: train_seconds must be S or L:S,L:S…, got {text!r}") from None


def _peak_memory_mb(device: torch.device) -> float:
    """The peak memory so far: on CUDA the device's allocated peak (reset before each L's training), on the CPU
    the process's peak resident set (``ru_maxrss``; with ascending L, the peak of the largest L trained so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def observables(x: torch.Tensor) -> torch.Tensor:
    """``(2, B)`` float64 on ``x``'s device: m = V⁻¹ Σ_x φ_x and F = V⁻¹ |Σ_x φ_x e^{ip·x}|² at the smallest
    non-zero momenta (the mean over the directions), per configuration of ``x: (B, L, …, L)``; no host sync."""
    x = x.double()
    dims = tuple(range(1, x.dim()))
    volume = math.prod(x.shape[1:])
    ft = torch.fft.fftn(x, dim=dims)
    p_min = [tuple(1 if nu == mu else 0 for nu in range(len(dims))) for mu in range(len(dims))]
    f = sum(ft[(slice(None),) + p].abs() ** 2 for p in p_min) / (len(p_min) * volume)
    return torch.stack([x.flatten(1).mean(1), f])


def _summary(obs: np.ndarray, shape: Sequence[int], wall_seconds: float, train_seconds: float) -> dict[str, Any]:
    """Gamma-method figures (chains as replicas) of the per-chain series ``obs: (2, n_chains, n)`` of m and F
    (`observables`) on the lattice ``shape``; ``train_seconds`` joins the cost to 10⁴ independent χ₂."""
    m, f = obs
    volume, length = math.prod(shape), shape[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chi2, abs_m, fmom = [tau_int_summary(s, min_tau_per_chain=MIN_TAU_PER_CHAIN)
                             for s in (volume * m * m, np.abs(m), f)]
    configurations = m.size
    rate = configurations / wall_seconds if wall_seconds > 0 else math.nan
    xi = second_moment_xi(chi2["mean"], fmom["mean"], length)
    xi = None if math.isnan(xi) else xi
    return {"n_chains": m.shape[0], "chain_length": m.shape[1], "configurations": configurations,
            "wall_seconds": wall_seconds, "configs_per_s": rate,
            "chi2": chi2["mean"], "chi2_err": chi2["error"], "tau_int_chi2": chi2["tau_int"],
            "tau_int_chi2_err": chi2["tau_int_error"], "chi2_lower_bound": chi2["lower_bound"],
            "abs_m": abs_m["mean"], "abs_m_err": abs_m["error"], "tau_int_abs_m": abs_m["tau_int"],
            "tau_int_abs_m_err": abs_m["tau_int_error"], "abs_m_lower_bound": abs_m["lower_bound"],
            "xi_second_moment": xi, "train_seconds_total": train_seconds,
            "cost_1e4_seconds": train_seconds + INDEPENDENT * 2 * max(chi2["tau_int"], 0.5) / rate,
            "cost_is_lower_bound": chi2["lower_bound"],
            "warnings": sorted({str(w.message).split(";")[0] for w in caught})}


def _run_chains(name: str, action: Phi4, *, seconds: float, n_chains: int, n_thermalize: int, seed: int,
                device: torch.device) -> dict[str, Any]:
    """The chain sampler ``name`` of `latticeflow.samplers.SAMPLERS` (HMC or cluster), tuned as in ``bench
    efficiency`` (`tuned_run`: acceptance 0.8, trajectory length ≈ 1, jitter ±20 %), float64, for ``seconds``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sampler = make_chain_sampler(name, action, SamplerConfig(), gen)
    x = torch.randn(n_chains, *action.shape, generator=gen, dtype=torch.float64, device=device)
    run = tuned_run(sampler, x, n_thermalize=n_thermalize, seconds=seconds, measure=observables, min_sweeps=MIN_SWEEPS)
    obs = torch.stack(run["measurements"], -1).cpu().numpy()  # (2, n_chains, n)
    inner = getattr(sampler, "hmc", sampler)  # the cluster sampler's magnitudes move by its inner HMC
    return {**_summary(obs, action.shape, run["wall_seconds"], 0.0), "acceptance": float(np.mean(run["acceptance"])),
            "n_leapfrog": inner.n_leapfrog, "step_size": inner.step_size,
            "thermalize_seconds": run["thermalize_seconds"], "cpu_seconds": run["cpu_seconds"]}


def _train_flow(action: Phi4, previous: tuple[torch.nn.Module, Phi4] | None, *, flow_config: Mapping[str, Any], seconds: float,
                batch_size: int, lr: float, seed: int, dtype: torch.dtype, device: torch.device
                ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the flow, load the weights of ``previous`` = (flow, its action) (`transfer_state`, as ``train.init`` does,
    the learned Fourier correction interpolated to the new lattice), train it by reverse KL
    (fast path, cosine schedule) for ``seconds`` of training time; the wall time of all of it is returned, but for
    one untimed step on a copy first (`warm_up`: lazy initialisations, as ``bench quality`` does)."""
    settings = dict(objective="reverse_kl", estimator="fast_path", batch_size=batch_size, lr=lr, grad_clip=1.0)
    t_warm = time.perf_counter()
    warm_up(build_flow(dict(flow_config), action).to(device=device, dtype=dtype), action, seed=seed + 12345, **settings)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    flow = build_flow(dict(flow_config), action).to(device=device, dtype=dtype)
    info: dict[str, Any] = {"transferred_from": None, "transfer_error": None, "error": None,
                            "n_parameters": sum(p.numel() for p in flow.parameters() if p.requires_grad)}
    if previous is not None:
        previous, previous_action = previous
        try:
            with torch.random.fork_rng(devices=[]):  # the source's fresh start (its Fourier init), RNG untouched
                source_init = build_flow(dict(flow_config), previous_action).state_dict()
            transfer_state(flow, previous.state_dict(), lattice=tuple(action.shape),
                           source_lattice=tuple(previous.field_shape), source_init=source_init)
            info["transferred_from"] = list(previous.field_shape)
        except ArchitectureMismatch as err:  # trained from scratch, said so
            info["transfer_error"] = str(err)
    trainer = Trainer(flow, action, scheduler="cosine", warmup_steps=20, seed=seed, **settings)
    try:
        trainer.train(None, seconds=seconds, log_every=10 ** 9, progress=False)
    except TrainingError as err:  # the skipped non-finite steps left the weights finite: sample with them
        info["error"] = str(err).splitlines()[0]
    wall = time.perf_counter() - t0
    info.update(train_seconds=wall, train_clock_seconds=trainer.wall_time, train_steps=trainer.step_count,
                train_steps_per_s=trainer.step_count / trainer.wall_time if trainer.wall_time > 0 else None,
                train_seconds_per_step=trainer.wall_time / trainer.step_count if trainer.step_count else None,
                train_peak_memory_mb=_peak_memory_mb(device),
                train_batch=batch_size, n_skipped=trainer.n_skipped, warm_up_seconds=t0 - t_warm)
    return flow, info


def _parse_runs(text: str | Mapping[int, str] | None) -> dict[int, str]:
    """``"32:runs/a,64:runs/b"`` (or a mapping) → {L: run directory}.

    Example:
        >>> _parse_runs("32:runs/a,64:runs/b")
        {32: 'runs/a', 64: 'runs/b'}
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return {int(L): str(d) for L, d in text.items()}
    try:
        return {int(L): d.strip() for L, d in (item.split(":", 1) for item in text.split(",") if item.strip())}
    except ValueError:
        raise ValueError(f"bench criticality: runs must be L:DIR,L:DIR…, got {text!r}") from None


def _flow_from_run(run_dir: str, action: Phi4, *, dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The flow trained by ``latticeflow train`` in ``run_dir`` (its config.yaml and checkpoints/latest.pt) for
    ``action``, and its training record: every second of its chain (`training_chain_seconds`: the schedule over
    sizes and the runs ``train.init`` started from), the steps and seconds per step on this lattice."""
    from ..config import ConfigError, load_config
    from ..pipeline.sample_flow import load_flow
    from ..pipeline.sizes import training_chain_seconds

    path = Path(run_dir) / "config.yaml"
    try:
        cfg, _ = load_config(str(path), [])
        run_action, flow = load_flow(cfg)
    except (OSError, ConfigError) as err:
        raise ValueError(f"bench criticality: run {run_dir!r}: {err}") from None
    if not (isinstance(run_action, Phi4) and tuple(run_action.shape) == tuple(action.shape)
            and math.isclose(run_action.kappa, action.kappa) and math.isclose(run_action.lam, action.lam)):
        raise ValueError(f"bench criticality: run {run_dir!r} trained {cfg.action.theory} on {list(run_action.shape)} "
                         f"(kappa {getattr(run_action, 'kappa', None)}), not phi4 on {list(action.shape)} with kappa "
                         f"{action.kappa:g}, lam {action.lam:g}")
    chain = training_chain_seconds(run_dir)  # a clear error where the run has no training record
    summary = json.loads((Path(run_dir) / "train_summary.json").read_text())
    steps, wall = int(summary["steps"]), float(summary["wall_time"])
    info = {"from_run": str(run_dir), "flow_config": dict(cfg.flow) if isinstance(cfg.flow, Mapping) else cfg.flow,
            "transferred_from": None, "transfer_error": None, "error": None,
            "n_parameters": sum(p.numel() for p in flow.parameters() if p.requires_grad),
            "train_seconds": chain, "train_clock_seconds": wall, "train_steps": steps,
            "train_steps_per_s": steps / wall if wall > 0 else None,
            "train_seconds_per_step": wall / steps if steps else None, "train_peak_memory_mb": None,
            "train_batch": cfg.train.batch_size, "n_skipped": summary.get("n_skipped"), "warm_up_seconds": 0.0}
    return flow.to(device=device, dtype=dtype), info


def _run_nmcmc(flow: torch.nn.Module, action: Phi4, *, seconds: float, n_chains: int, max_proposals: int, seed: int,
               device: torch.device, train_seconds: float) -> dict[str, Any]:
    """``n_chains`` NMCMC chains (`nmcmc_chains`, one stream of flow proposals) for ``seconds`` of wall time."""
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    per_batch = max(1, min(max_proposals, 2 ** 22 // action.volume) // n_chains)  # sweeps per batch of proposals
    series, accepted, log_w = [], [], []
    t0, sweeps = time.perf_counter(), 0
    for batch, _ in nmcmc_chains(flow, action, 10 ** 12, per_batch, n_chains, generator=gen):
        series.append(observables(batch.x).reshape(2, -1, n_chains))  # rows are sweep-major: (2, sweeps, chains)
        accepted.append(batch.accepted)
        log_w.append(batch.proposal_log_weight)
        sweeps += per_batch
        if sweeps >= MIN_SWEEPS and time.perf_counter() - t0 >= seconds:
            break
    obs = torch.cat(series, 1).transpose(1, 2).cpu().numpy()  # (2, n_chains, n)
    wall = time.perf_counter() - t0
    lw = np.concatenate(log_w)
    return {**_summary(obs, action.shape, wall, train_seconds), "acceptance": float(np.mean(np.concatenate(accepted))),
            "reverse_ess": reverse_ess(lw) if np.isfinite(lw).any() else None,
            "proposals_per_batch": per_batch * n_chains}


def fit_exponent(sizes: Sequence[float], values: Sequence[float | None]) -> dict[str, Any]:
    """Least squares of log(value) against log(L) over the positive finite values: ``exponent`` (the slope),
    its standard error (None with fewer than 3 points), ``prefactor`` (value = prefactor · L^exponent) and
    ``n_points``.

    Example:
        >>> r = fit_exponent([16, 32, 64], [1.0, 4.0, 16.0])
        >>> round(r["exponent"], 6), r["n_points"]
        (2.0, 3)
    """
    pts = [(float(L), float(v)) for L, v in zip(sizes, values) if v is not None and math.isfinite(v) and v > 0]
    out: dict[str, Any] = {"exponent": None, "exponent_err": None, "prefactor": None, "n_points": len(pts)}
    if len(pts) < 2 or len({L for L, _ in pts}) < 2:
        return out
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    if len(pts) > 2:
        residual = y - (slope * x + intercept)
        out["exponent_err"] = float(math.sqrt(residual @ residual / (len(pts) - 2) / np.sum((x - x.mean()) ** 2)))
    out.update(exponent=float(slope), prefactor=float(math.exp(intercept)))
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """cost(a) / cost(b) and what it is: a lower bound (a's τ_int bounded), upper, unknown (both) or an estimate."""
    bound = {(True, False): "lower", (False, True): "upper", (True, True): "unknown"}.get(
        (bool(a["cost_is_lower_bound"]), bool(b["cost_is_lower_bound"])), "estimate")
    return {"value": a["cost_1e4_seconds"] / b["cost_1e4_seconds"], "bound": bound}


def _agreement(samplers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pulls of χ₂ and ⟨|m|⟩ between every pair of samplers, the largest |pull|, whether all are ≤ 4σ, and the
    samplers whose errors are underestimated (τ_int only bounded from below: chains shorter than 50 τ_int)."""
    pulls = {obs: {f"{a}-{b}": pull(samplers[a][obs], samplers[a][f"{obs}_err"],
                                    samplers[b][obs], samplers[b][f"{obs}_err"]) for a, b in PAIRS}
             for obs in ("chi2", "abs_m")}
    finite = [abs(p) for d in pulls.values() for p in d.values() if p is not None and math.isfinite(p)]
    largest = max(finite) if finite else None
    bounded = [key for key, _, _ in SAMPLERS if samplers[key]["chi2_lower_bound"] or samplers[key]["abs_m_lower_bound"]]
    return {"pulls": pulls, "max_abs_pull": largest, "agree": largest is not None and largest <= AGREEMENT_SIGMA,
            "errors_underestimated": bounded}


def run_criticality_bench(*, sizes: str | Iterable[int] | None = None, seconds: float | None = None,
                          train_seconds: float | Mapping[int, float] | None = None, quick: bool = False,
                          n_chains: int | None = None, seed: int = 0, dtype: torch.dtype | str = torch.float32,
                          device: str | torch.device = "cpu", flow: Mapping[str, Any] | None = None,
                          kappas: Mapping[int, float] | None = None, transfer: bool = True,
                          runs: str | Mapping[int, str] | None = None,
                          plot: str | None = "bench_criticality.png",
                          progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """HMC, cluster and flow NMCMC at every L of ``sizes`` on the line ξ ≈ L/4 (`KAPPAS`, λ = `LAM`).

    ``sizes``: comma-separated or integers (default `SIZES`; ``quick``: `QUICK_SIZES`); ``seconds``: each
    sampler's wall-time budget per L (HMC's and the cluster sampler's chains, the flow's training at that L
    and its NMCMC chains; default 120, ``quick``: 1); ``train_seconds`` overrides the training budget (one
    number, or {L: seconds}); ``transfer``: each L's flow starts from the previous L's weights (all training
    seconds counted); ``flow``: the flow config (default `DEFAULT_FLOW`, float ``dtype`` on ``device``; the
    MCMC chains run in float64 on ``device``); ``runs``: {L: run directory} (or ``"L:DIR,…"``) of flows trained by
    ``latticeflow train`` (e.g. ``configs/phi4_critical_L64.yaml``), used at those L instead of training one here,
    every second of their training chain counted (`training_chain_seconds`); ``plot``: a PNG of cost and τ_int(χ₂)
    against L (None: none); ``progress(row)`` after every sampler at every L.
    """
    st = QUICK_SETTINGS if quick else SETTINGS
    kappas = {**KAPPAS, **{int(k): float(v) for k, v in (kappas or {}).items()}}
    chosen = _sizes(sizes, quick, kappas)
    seconds = float(st["seconds"] if seconds is None else seconds)
    n_chains = int(st["n_chains"] if n_chains is None else n_chains)
    if not seconds > 0:
        raise ValueError(f"bench criticality: seconds must be > 0, got {seconds}")
    if n_chains < 2:
        raise ValueError(f"bench criticality: n_chains must be >= 2 (the chains are the Gamma method's replicas), "
                         f"got {n_chains}")
    if isinstance(train_seconds, str):
        train_seconds = _parse_train_seconds(train_seconds)
    budget = {L: float(train_seconds.get(L, seconds) if isinstance(train_seconds, Mapping)
                       else seconds if train_seconds is None else train_seconds) for L in chosen}
    if not all(b > 0 for b in budget.values()):
        raise ValueError(f"bench criticality: train_seconds must be > 0, got {train_seconds!r}")
    dtype, device = resolve_dtype(dtype), torch.device(device)
    if isinstance(flow, str):
        parsed = yaml.safe_load(flow)
        if not isinstance(parsed, Mapping):
            raise ValueError(f"bench criticality: --flow must be a YAML mapping of flow options, got {flow!r}")
        flow = parsed
    flow_config = dict(DEFAULT_FLOW if flow is None else flow)
    runs = _parse_runs(runs)
    stray = sorted(set(runs) - set(chosen))
    if stray:
        raise ValueError(f"bench criticality: runs given for L = {stray[0]}, which is not among the sizes {chosen}")
    out = result_header("criticality", quick=quick, sizes=chosen, lam=LAM, kappas={str(L): kappas[L] for L in chosen},
                        seconds=seconds, train_seconds={str(L): budget[L] for L in chosen}, n_chains=n_chains,
                        seed=seed, dtype=str(dtype).replace("torch.", ""), device=str(device), flow=flow_config,
                        transfer=transfer, runs={str(L): d for L, d in runs.items()}, n_thermalize=st["n_thermalize"],
                        independent=INDEPENDENT, min_tau_per_chain=MIN_TAU_PER_CHAIN, points=[])
    previous, trained = None, 0.0
    for L in chosen:
        action = Phi4((L, L), kappa=kappas[L], lam=LAM)
        point: dict[str, Any] = {"L": L, "kappa": kappas[L], "shape": [L, L], "volume": L * L}

        def report(key: str, entry: dict[str, Any]) -> None:
            point[key] = entry
            if progress is not None:
                progress({"L": L, "kappa": kappas[L], "sampler": key, **entry})

        for i, key in enumerate(CHAIN_SAMPLERS):
            report(key, _run_chains(key, action, seconds=seconds, n_chains=n_chains, n_thermalize=st["n_thermalize"],
                                    seed=seed + i, device=device))
        if L in runs:  # trained elsewhere: its whole chain is in its record
            flow_l, info = _flow_from_run(runs[L], action, dtype=dtype, device=device)
            trained = info["train_seconds"]
        else:
            flow_l, info = _train_flow(action, previous if transfer else None, flow_config=flow_config,
                                       seconds=budget[L], batch_size=st["train_batch"].get(L, 64), lr=st["lr"],
                                       seed=seed, dtype=dtype, device=device)
            trained = (trained if info["transferred_from"] else 0.0) + info["train_seconds"]
        report("nmcmc", {**_run_nmcmc(flow_l, action, seconds=seconds, n_chains=n_chains, seed=seed, device=device,
                                      max_proposals=st["max_proposals"], train_seconds=trained), **info})
        previous = (flow_l, action)
        point.update(agreement=_agreement(point),
                     cost_ratio={f"{a}/{b}": _ratio(point[a], point[b]) for a, b in RATIOS})
        out["points"].append(point)
    out["fits"] = {key: {"cost": fit_exponent(chosen, [p[key]["cost_1e4_seconds"] for p in out["points"]]),
                         "tau_int_chi2": fit_exponent(chosen, [p[key]["tau_int_chi2"] for p in out["points"]]),
                         "lower_bounds": sum(bool(p[key]["cost_is_lower_bound"]) for p in out["points"])}
                   for key, _, _ in SAMPLERS}
    out = strict(out)
    if plot:
        out["plot"] = plot_criticality(out, plot)
    return out


def _tau_cell(r: dict[str, Any], key: str) -> str:
    return format_cell(r[f"tau_int_{key}"], ".3g") if not r[f"{key}_lower_bound"] else f"> {r[f'tau_int_{key}']:.3g}"


def format_criticality_table(result: dict[str, Any]) -> str:
    """One row per (L, sampler): τ_int(χ₂) and τ_int(|m|) ("> X": lower bound), χ₂ and ⟨|m|⟩ with errors,
    ξ₂, configurations/s, acceptance, reverse ESS, training seconds and the time to 10⁴ independent χ₂; per L the
    largest pull between the samplers and the cost ratios; the fitted exponents."""
    rows: list[Any] = []
    for p in result["points"]:
        for key, _, _ in SAMPLERS:
            r = p[key]
            err = lambda o: "—" if r[o] is None else f"{r[o]:.4g} ± {format_cell(r[o + '_err'], '.2g')}"  # noqa: E731
            rows.append([p["L"], p["kappa"], key, _tau_cell(r, "chi2"), _tau_cell(r, "abs_m"), err("chi2"),
                         err("abs_m"), r["xi_second_moment"], r["configs_per_s"], r["acceptance"],
                         r.get("reverse_ess"), r["train_seconds_total"] or None,
                         ("> " if r["cost_is_lower_bound"] else "") + format_cell(r["cost_1e4_seconds"], ".3g") + " s"])
        a, c = p["agreement"], p["cost_ratio"]
        rows.append(f"{'':>4} max |pull| chi2/|m| between samplers {format_cell(a['max_abs_pull'], '.2f')} "
                    f"({'agree' if a['agree'] else 'DISAGREE'} at {AGREEMENT_SIGMA:g} sigma"
                    + (f"; errors of {', '.join(a['errors_underestimated'])} underestimated" if a["errors_underestimated"]
                       else "") + "); cost "
                    + "; ".join(f"{k} {format_cell(v['value'], '.3g')} ({v['bound']})" for k, v in c.items()))
        f = p["nmcmc"]
        if f.get("train_seconds_per_step") is not None:
            memory = ("" if f.get("train_peak_memory_mb") is None
                      else f", peak memory {f['train_peak_memory_mb']:.0f} MB")
            rows.append(f"{'':>4} flow training at L = {p['L']}: {f['train_steps']} steps of batch {f['train_batch']}, "
                        f"{f['train_seconds_per_step']:.3g} s/step{memory}"
                        + (f" (run {f['from_run']}, {f['train_seconds']:.0f} s of training in its chain)"
                           if f.get("from_run") else ""))
    notes = [f"{label}: cost ~ L^{format_cell(f['cost']['exponent'], '.2f')}"
             + ("" if f["cost"]["exponent_err"] is None else f" ± {f['cost']['exponent_err']:.2f}")
             + f", tau_int(chi2) ~ L^{format_cell(f['tau_int_chi2']['exponent'], '.2f')}"
             + (f" ({f['lower_bounds']} point(s) lower bounds)" if f["lower_bounds"] else "")
             for key, label, _ in SAMPLERS for f in (result["fits"][key],)]
    return text_table([("L", ">4"), ("kappa", "6.3f"), ("sampler", "<8"), ("tau(chi2)", ">10"), ("tau(|m|)", ">9"),
                       ("chi2", ">18"), ("|m|", ">18"), ("xi2", "6.2f"), ("cfg/s", "8.3g"), ("acc", "5.2f"),
                       ("ESS", "6.3f"), ("train s", "8.0f"), ("t(1e4 chi2)", ">13")], rows,
                      title=f"critical phi4, lam={result['lam']:g}, xi ~ L/4: {result['n_chains']} chains, "
                            f"{result['seconds']:g} s per sampler and L, {result['threads']} thread(s), "
                            f"{result['dtype']} flow on {result['device']}",
                      notes=notes + ["t(1e4 chi2) = training (the transfer chain included) + 1e4 * 2 tau_int(chi2) "
                                     "/ (cfg/s); '> X': chains shorter than 50 tau_int, tau_int and cost are "
                                     "lower bounds"])


def plot_criticality(result: dict[str, Any], path: str) -> str:
    """Log-log PNG: time to 10⁴ independent χ₂ against L with the fitted power laws (left) and τ_int(χ₂) (right);
    open markers: lower bounds."""
    from matplotlib.ticker import NullLocator

    sizes = [p["L"] for p in result["points"]]
    with figure(path, 1, 2, figsize=(11, 4.4)) as (fig, axes):
        for ax, key, what in ((axes[0, 0], "cost_1e4_seconds", "cost"), (axes[0, 1], "tau_int_chi2", "tau_int_chi2")):
            for name, label, colour in SAMPLERS:
                values = [math.nan if p[name][key] is None else p[name][key] for p in result["points"]]
                fit = result["fits"][name][what]
                text = "" if fit["exponent"] is None else f" ∝ $L^{{{fit['exponent']:.2f}}}$"
                ax.plot(sizes, values, "-", color=colour, alpha=0.4)
                for p, v in zip(result["points"], values):
                    if math.isfinite(v):
                        open_marker = p[name]["cost_is_lower_bound"]
                        ax.plot([p["L"]], [v], "o", color=colour, mfc="none" if open_marker else colour)
                if fit["exponent"] is not None:
                    grid = np.geomspace(min(sizes), max(sizes), 20)
                    ax.plot(grid, fit["prefactor"] * grid ** fit["exponent"], "--", color=colour, lw=1)
                ax.plot([], [], "o-", color=colour, label=label + text)
            ax.set(xscale="log", yscale="log", xlabel="L")
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(sizes, [str(L) for L in sizes])
            ax.legend(fontsize=8)
        axes[0, 0].set(ylabel="seconds", title="time to 10⁴ independent χ₂ (training counted)")
        axes[0, 1].set(ylabel="τ_int(χ₂)", title="autocorrelation of χ₂ = V m² (open: lower bound)")
        kappa = ", ".join(f"{p['L']}: {p['kappa']:g}" for p in result["points"])
        fig.suptitle(f"φ⁴ (hopping form), λ = {result['lam']:g}, on the line ξ ≈ L/4 (κ at L = {kappa}); "
                     f"{result['threads']} thread(s), {result['device']}", fontsize=10)
    return path


def progress_line(r: dict) -> str:
    extra = "" if r.get("reverse_ess") is None else f", ESS {r['reverse_ess']:.3f}, acceptance {r['acceptance']:.2f}"
    return (f"L={r['L']} kappa={r['kappa']:g} {r['sampler']}: tau_int(chi2) "
            f"{'> ' if r['chi2_lower_bound'] else ''}{format_cell(r['tau_int_chi2'], '.3g')}, chi2 "
            f"{format_cell(r['chi2'], '.4g')}, {format_cell(r['configs_per_s'], '.3g')} cfg/s, t(1e4 chi2) "
            f"{format_cell(r['cost_1e4_seconds'], '.3g')} s{extra}")
