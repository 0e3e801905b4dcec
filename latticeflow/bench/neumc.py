"""``latticeflow bench neumc``: our Schwinger-model flow against NeuMC's at its published 8×8 point, equal wall time.

NeuMC (Białas, Korcyl, Stebel, Zapolski; github.com/nmcmc/neumc, MIT licence) trains a 48-layer gauge-equivariant
circular-spline flow (2×1 loop masks, conv nets [64, 64] with dilations 1, 2, 3, 9 knots) on the N_f = 2 Schwinger
model at 8×8, β = 1, κ = 0.276 with the exact determinant and the REINFORCE gradient (Adam, lr 2.5e-4, batch
1024), as in its ``scripts/schwinger.py``. Both flows get the same wall time on this machine (``--seconds``, 600 by
default, the threads of ``--threads``); each is then judged on the same footing: reverse ESS/N of 4096 fresh
samples, log w = −S − log q with *our* exact action S = S_g − log det(D†D) for both (NeuMC's action is checked to
equal ours up to a constant on its samples: same Wilson–Dirac operator, γ₀ = σ₁, γ₁ = σ₂, antiperiodic along
axis 0), and the NMCMC acceptance of an independence-Metropolis chain over those samples.

NeuMC is not a dependency: put its ``src`` on ``PYTHONPATH`` (``git clone https://github.com/nmcmc/neumc``;
``PYTHONPATH=neumc/neumc/src latticeflow bench neumc``); without it the benchmark stops with one line.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from actions import build_theory
from ..analysis import reverse_ess, text_table
from .gauge_flow import train_gauge_flow

__all__ = ["run_neumc_bench", "format_neumc_table", "POINT"]

#: NeuMC's published Schwinger point
POINT = {"shape": (8, 8), "beta": 1.0, "kappa": 0.276}
_EVAL = 4096


def _import_neumc():
    try:
        import neumc  # noqa: F401
        import neumc.nf.cs_coupling
        import neumc.nf.gauge_masks
        import neumc.nf.nn
        import neumc.nf.prior
        import neumc.nf.u1_equiv
        import neumc.physics.schwinger
        import neumc.physics.u1
        import neumc.training.gradient_estimator
    except ImportError as err:
        raise ValueError(f"bench neumc needs the NeuMC package importable ({err}): git clone "
                         "https://github.com/nmcmc/neumc and put neumc/neumc/src on PYTHONPATH") from None
    return neumc


def _acceptance(log_w: np.ndarray) -> float:
    """Independence Metropolis over i.i.d. proposals in the given order: accept x' with min(1, w'/w)."""
    cur, acc = log_w[0], 0
    u = np.log(np.random.default_rng(0).random(len(log_w)))
    for lw, lu in zip(log_w[1:], u[1:]):
        if lu < lw - cur:
            cur, acc = lw, acc + 1
    return acc / max(len(log_w) - 1, 1)


def _judge(theory, x: torch.Tensor, log_q: torch.Tensor) -> dict[str, float]:
    log_w = (-theory.action(x.double()) - log_q.double()).numpy()
    return {"reverse_ess": reverse_ess(log_w), "acceptance": _acceptance(log_w),
            "log_w_var": float(np.var(log_w))}


def _ours(theory, seconds: float, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    trainer = train_gauge_flow(theory, None, 64, seconds, seed)
    train_s = time.perf_counter() - t0
    flow = trainer.flow
    gen = torch.Generator().manual_seed(seed + 7)
    xs, lqs = [], []
    with torch.no_grad():
        for _ in range(_EVAL // 512):
            x, log_q = flow.sample(512, generator=gen)
            xs.append(x)
            lqs.append(log_q)
    out = _judge(theory, torch.cat(xs), torch.cat(lqs))
    n_par = sum(p.numel() for p in flow.parameters())
    return {"train_seconds": train_s, "steps": trainer.step_count, "parameters": n_par,
            "batch_size": 64, "estimator": "reverse KL, fast path gradient", **out}


def _neumc_model(neumc, shape: tuple[int, int]):
    """NeuMC's published Schwinger flow, built from its own modules (``scripts/schwinger.py``'s settings)."""
    masks = neumc.nf.gauge_masks.sch_2x1_masks_gen(lattice_shape=shape, float_dtype=torch.float32, device="cpu")
    n_knots, layers = 9, []
    for _ in range(48):
        net = neumc.nf.nn.make_conv_net(in_channels=6, out_channels=3 * (n_knots - 1) + 1, hidden_channels=[64, 64],
                                        kernel_size=3, use_final_tanh=False, dilation=[1, 2, 3])
        link_mask, plaq_mask = next(masks)
        plaq = neumc.nf.cs_coupling.CouplingLayer(conditioner=neumc.nf.cs_coupling.CSConditioner(net, n_knots=n_knots),
                                                 transform=neumc.nf.cs_coupling.CSTransform(), mask=plaq_mask)
        layers.append(neumc.nf.u1_equiv.U1GaugeEquivCouplingLayer(
            loops_function=lambda x: [neumc.physics.u1.compute_u1_2x1_loops(x)], active_links_mask=link_mask,
            plaq_coupling=plaq))
    model = neumc.nf.flow_abc.TransformationSequence(layers)
    prior = neumc.nf.prior.MultivariateUniform(torch.zeros((2, *shape)), 2 * torch.pi * torch.ones(shape))
    return model, prior


def _theirs(theory, seconds: float, seed: int, batch_size: int) -> dict[str, Any]:
    neumc = _import_neumc()
    torch.manual_seed(seed)
    shape = tuple(theory.shape)
    model, prior = _neumc_model(neumc, shape)
    action = neumc.physics.schwinger.QEDAction(beta=POINT["beta"], kappa=POINT["kappa"])
    opt = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    est = neumc.training.gradient_estimator.REINFORCEEstimator(prior=prior, flow=model, action=action, use_amp=False)
    t0, steps, ess_train = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
        opt.zero_grad()
        _, log_q, log_p = est.step(batch_size=batch_size, n_batches=1)
        opt.step()
        steps += 1
        ess_train.append(float(neumc.utils.ess(log_p, log_q)))
    train_s = time.perf_counter() - t0
    xs, lqs = [], []
    with torch.no_grad():
        for _ in range(_EVAL // 256):
            z = prior.sample_n(256)
            log_prob_z = prior.log_prob(z)
            x, log_j = model(z)
            xs.append(x)
            lqs.append(log_prob_z - log_j)
    x, log_q = torch.cat(xs), torch.cat(lqs)
    ours = theory.action(x.double())
    theirs = action(x[:512]).double()
    offset = (theirs - ours[:512]).numpy()  # the two actions differ by a constant (normalisation of det)
    out = _judge(theory, x, log_q)
    return {"train_seconds": train_s, "steps": steps, "parameters": sum(p.numel() for p in model.parameters()),
            "batch_size": batch_size, "estimator": "REINFORCE (NeuMC)", "train_ess_last": ess_train[-1] if ess_train
            else math.nan, "action_offset_spread": float(offset.max() - offset.min()), **out}


def run_neumc_bench(*, seconds: float | None = None, quick: bool = False, seeds: list[int] | None = None,
                    contenders: str | None = None) -> dict[str, Any]:
    """Every contender trained for ``seconds`` (600; ``quick``: 10 s on 4×4), then judged alike; per seed.
    ``contenders`` (``--targets``): comma-separated of ``latticeflow``, ``neumc_b1024`` (NeuMC's published batch),
    ``neumc_b128`` (8× more steps in the same time; fairer on 2 cores); default all three, one after the other.
    Two single-thread processes with one contender each (``--threads 1 --targets …``) run side by side compare
    them at equal wall time on a shared machine."""
    names = [c.strip() for c in (contenders or "latticeflow,neumc_b1024,neumc_b128").split(",") if c.strip()]
    for c in names:
        if c != "latticeflow" and not (c.startswith("neumc_b") and c[7:].isdigit() and int(c[7:]) > 0):
            raise ValueError(f"bench neumc: --targets must name latticeflow or neumc_b<batch>, got {c!r}")
    seconds = float(seconds or (10 if quick else 600))
    shape = (4, 4) if quick else POINT["shape"]
    theory = build_theory("schwinger", shape, {"beta": POINT["beta"], "kappa": POINT["kappa"]})
    rows = []
    for seed in seeds or [0]:
        row: dict[str, Any] = {"seed": seed}
        for c in names:
            row[c] = _ours(theory, seconds, seed) if c == "latticeflow" else \
                _theirs(theory, seconds, seed, min(int(c[7:]), 64) if quick else int(c[7:]))
        rows.append(row)
    return {"point": {**POINT, "shape": list(shape)}, "seconds": seconds, "threads": torch.get_num_threads(),
            "eval_samples": _EVAL, "runs": rows}


def format_neumc_table(result: dict[str, Any]) -> str:
    p = result["point"]
    head = (f"Schwinger model {p['shape'][0]}x{p['shape'][1]}, beta = {p['beta']}, kappa = {p['kappa']}: "
            f"{result['seconds']:.0f} s of training each on {result['threads']} threads; ESS of {result['eval_samples']} "
            "fresh samples with the exact action")
    cols = [("flow", "<12"), ("seed", ">4"), ("gradient", "<32"), ("parameters", ">10"), ("batch", ">5"),
            ("steps", ">6"), ("ESS/N", ">7.3f"), ("NMCMC acceptance", ">16.3f"), ("Var log w", ">9.3g")]
    rows = [[name, r["seed"], r[name]["estimator"], r[name]["parameters"], r[name]["batch_size"], r[name]["steps"],
             r[name]["reverse_ess"], r[name]["acceptance"], r[name]["log_w_var"]]
            for r in result["runs"] for name in r if name != "seed"]
    return text_table(cols, rows, title=head)
