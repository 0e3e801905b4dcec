"""`latticeflow bench gradients`: step time and autograd-graph memory of every gradient estimator relative to
``standard`` on the grid of Table 2 of Vaitl et al. (ICLR 2024). Protocol: docs/benchmarks.md#gradients."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from actions import build_theory
from ..analysis import median_iqr, text_table
from ..flows import build_flow
from ..gradients import FORWARD_ESTIMATORS, REVERSE_ESTIMATORS, forward_kl, reverse_kl
from ..io import result_header
from ..training import saved_tensors_mib
from ..pipeline.common import resolve_dtype as torch_dtype

__all__ = ["GradientCase", "default_cases", "bench_case", "run_gradient_bench", "format_gradient_table"]


@dataclass
class GradientCase:
    """One benchmark row: a theory, a flow config and a batch size."""

    name: str
    theory: str
    shape: tuple[int, ...]
    flow: dict[str, Any]
    batch_size: int
    couplings: dict[str, float] = field(default_factory=dict)

    def build(self, dtype: torch.dtype, device: torch.device):
        action = build_theory(self.theory, self.shape, self.couplings)
        flow = build_flow(self.flow, action).to(device=device, dtype=dtype)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # leave the identity initialisation, as after some training
            for p in flow.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype).to(device))
        return action, flow


def default_cases(quick: bool = False) -> list[GradientCase]:
    """The paper's Table 2 grid: Z2Nice and RealNVP (FC, 4 hidden layers, widths 256 and 1000) on φ⁴
    8×8 and 16×8, and the U(1) NCP flow on 8×8 and 16×16 (batch 256). φ⁴ batches: the paper's 8000 for
    width 256; 1024 for width 1000, where a CPU step at 8000 would take seconds."""
    widths, shapes = ((256,), ((8, 8),)) if quick else ((256, 1000), ((8, 8), (16, 8)))
    return [GradientCase(f"{family} fc{width} {shape[0]}x{shape[1]}", "phi4", shape,
                         {"family": family, "conditioner": "fc", "hidden": [width] * 4, "n_layers": 8},
                         batch_size=8000 if width <= 256 else 1024, couplings={"kappa": 0.3, "lam": 0.022})
            for family in ("z2nice", "realnvp") for shape in shapes for width in widths] + \
        [GradientCase(f"u1_ncp {L}x{L}", "u1", (L, L), {"family": "u1_ncp"}, batch_size=256, couplings={"beta": 2.0})
         for L in ((8,) if quick else (8, 16))]


def bench_case(case: GradientCase, *, objective: str = "reverse_kl", repeats: int = 10, warmup: int = 2,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Median step time, spread, ratio to ``standard`` and graph memory of every estimator of ``objective``."""
    device = torch.device(device)
    action, flow = case.build(dtype, device)
    cuda = device.type == "cuda"
    if objective == "reverse_kl":
        estimators, surrogate, data = REVERSE_ESTIMATORS, reverse_kl, flow.base.sample((case.batch_size,))
    else:
        with torch.no_grad():
            estimators, surrogate, data = FORWARD_ESTIMATORS, forward_kl, flow.sample(case.batch_size)[0]

    def step(e: str) -> None:
        flow.zero_grad(set_to_none=True)
        surrogate(flow, action, data, e).backward()
        if cuda:
            torch.cuda.synchronize(device)

    memory = {}
    for e in estimators:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        memory[e] = saved_tensors_mib(lambda: step(e))
        memory[e] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else memory[e]
    times: dict[str, list[float]] = {e: [] for e in estimators}
    for r in range(warmup + repeats):
        for e in estimators if r % 2 == 0 else tuple(reversed(estimators)):
            t0 = time.perf_counter()
            step(e)
            if r >= warmup:
                times[e].append(time.perf_counter() - t0)
    out = {"case": case.name, "objective": objective, "batch_size": case.batch_size, "dtype": str(dtype).replace("torch.", ""),
           "device": str(device), "repeats": repeats, "estimators": {}}
    spread = {e: median_iqr(times[e]) for e in estimators}
    for e, (med, iqr) in spread.items():
        out["estimators"][e] = {"median_ms": 1e3 * med, "iqr_ms": 1e3 * iqr,
                                "ratio_to_standard": med / spread["standard"][0], "graph_memory_mib": memory[e]}
    return out


def run_gradient_bench(cases: list[GradientCase] | None = None, *, quick: bool = False, objective: str = "both",
                       repeats: int = 10, dtype: torch.dtype | str = torch.float32, device: str = "cpu",
                       progress=None) -> dict[str, Any]:
    """Every case (default `default_cases(quick)`) for ``objective`` (``reverse_kl``, ``forward_kl`` or ``both``)."""
    from ..pipeline import resolve_device

    resolve_device(device)
    objectives = ("reverse_kl", "forward_kl") if objective == "both" else (objective,)
    results = []
    for case in cases or default_cases(quick):
        for obj in objectives:
            results.append(bench_case(case, objective=obj, repeats=repeats, dtype=torch_dtype(dtype), device=device))
            if progress is not None:
                progress(results[-1])
    return result_header("gradients", results=results)


def progress_line(r: dict) -> str:
    return f"{r['case']} {r['objective']}: " + ", ".join(f"{e} {v['ratio_to_standard']:.2f}"
                                                           for e, v in r["estimators"].items())


def format_gradient_table(result: dict) -> str:
    """The paper's Table 2 layout: step-time factor of every estimator relative to ``standard``."""
    rows = []
    for r in result["results"]:
        est = r["estimators"]
        ratios = "  ".join(f"{e} {v['ratio_to_standard']:.2f}" for e, v in est.items() if e != "standard")
        extra = ""
        for other in ("path_inverse", "gdreg"):  # the step-time factor over fast_path
            if "fast_path" in est and other in est:
                extra = f"  ({other}/fast_path {est[other]['median_ms'] / est['fast_path']['median_ms']:.2f})"
        rows.append([r["case"], r["objective"], est["standard"]["median_ms"], " " + ratios + extra])
    return text_table([("case", "<24"), ("objective", "<11"), ("standard ms", "11.1f"),
                       (" ratios to standard (median of interleaved repeats)", "")], rows)
