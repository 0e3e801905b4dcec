"""Samplers, one file each, registered in `SAMPLERS` (a new sampler is its file plus one line here):
HMC (baseline and forward-KL training data; pseudofermion HMC in `pf_hmc` for theories with fermions), i.i.d. flow samples with importance weights, neural MCMC
(independent Metropolis–Hastings with flow proposals), winding HMC (instanton moves for 2D U(1) and the
Schwinger model) and the φ⁴ cluster sampler.

A registry entry says whether the sampler needs a trained flow (``needs_flow``), whether its rows form
Markov chains (``markov``: ``chain``/``mc_index`` per row, split into replicas by the analysis), how a chain
sampler is built from the theory and the ``sampler:`` section (``make``: an object with ``step(x, action_x)``,
``thermalize(x, n, callback=…)``, ``state_attrs()`` and ``load_state_attrs(attrs)``, run by
`hmc_chains`), and its own config keys with their defaults (``options``). The pipeline runs every sampler
the same way from these facts; nothing else compares sampler names.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .flow import FlowBatch, flow_batches
from .hmc import HMC, HMCStep, Sweep, hmc_chains
from .nmcmc import ChainState, NMCMCBatch, NMCMCChainsBatch, metropolize, nmcmc_batches, nmcmc_chains

__all__ = ["HMC", "HMCStep", "Sweep", "hmc_chains", "FlowBatch", "flow_batches", "ChainState", "NMCMCBatch",
           "NMCMCChainsBatch", "metropolize", "nmcmc_batches", "nmcmc_chains", "SamplerEntry", "SAMPLERS",
           "REFERENCE_SAMPLER", "WINDING_SAMPLER", "make_chain_sampler"]


@dataclass(frozen=True)
class SamplerEntry:
    """What the pipeline needs to know of a sampler (see the module docstring)."""

    needs_flow: bool
    markov: bool
    make: Callable[..., Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


def _hmc(action, s, generator):
    """Plain HMC; for a theory with fermions (``pseudofermion_action``) pseudofermion HMC
    (``determinant: pseudofermion``, CG to ``cg_tol``) or HMC on the exact-determinant action
    (``determinant: exact``, small volumes, the check)."""
    common = dict(n_leapfrog=s.n_leapfrog, step_size=s.step_size, integrator=s.integrator,
                  target_acceptance=s.target_acceptance, step_size_jitter=s.step_size_jitter, generator=generator)
    opts = {**SAMPLERS["hmc"].options, **{k: v for k, v in dict(s.options).items() if k in SAMPLERS["hmc"].options}}
    if opts["determinant"] not in ("pseudofermion", "exact"):
        raise ValueError(f"sampler.determinant must be 'pseudofermion' or 'exact', got {opts['determinant']!r}")
    if hasattr(action, "pseudofermion_action") and opts["determinant"] == "pseudofermion":
        from .pf_hmc import PseudofermionHMC

        return PseudofermionHMC(action, cg_tol=opts["cg_tol"], **common)
    return HMC(action, **common)


def _winding_hmc(action, s, generator):
    """`_hmc` plus instanton moves (``winding_size``: 0 = the whole lattice; ``winding_moves`` per trajectory)."""
    from .winding_hmc import WindingHMC

    opts = {**SAMPLERS["winding_hmc"].options, **dict(s.options)}
    hmc = _hmc(action, s, generator)
    return WindingHMC(action, hmc, winding_size=opts["winding_size"] or None, winding_moves=opts["winding_moves"],
                      generator=generator)


def _cluster(action, s, generator):
    from .cluster import Cluster

    return Cluster(action, n_leapfrog=s.n_leapfrog, step_size=s.step_size, integrator=s.integrator,
                   target_acceptance=s.target_acceptance, step_size_jitter=s.step_size_jitter, generator=generator,
                   **dict(s.options))


#: the registry: ``sampler.name`` of a config → its entry
SAMPLERS: dict[str, SamplerEntry] = {
    "hmc": SamplerEntry(needs_flow=False, markov=True, make=_hmc,
                        options={"determinant": "pseudofermion", "cg_tol": 1e-10},
                        description="hybrid Monte Carlo (pseudofermion HMC for theories with fermions)"),
    "nmcmc": SamplerEntry(needs_flow=True, markov=True, description="neural MCMC with flow proposals"),
    "flow": SamplerEntry(needs_flow=True, markov=False, description="i.i.d. flow samples with weights"),
    "winding_hmc": SamplerEntry(needs_flow=False, markov=True, make=_winding_hmc,
                                options={"determinant": "pseudofermion", "cg_tol": 1e-10, "winding_size": 0,
                                         "winding_moves": 1},
                                description="2D U(1) (and Schwinger): HMC + instanton (winding) Metropolis moves"),
    "cluster": SamplerEntry(needs_flow=False, markov=True, make=_cluster, options={"cluster_every": 1},
                            description="φ⁴: Swendsen–Wang clusters of the embedded Ising signs + HMC"),
}

#: the sampler of a run's reference ensemble (``sampler.reference_hmc``)
REFERENCE_SAMPLER = "hmc"
#: the sampler of a run's second reference ensemble (``sampler.reference_winding``, gauge theories)
WINDING_SAMPLER = "winding_hmc"


def make_chain_sampler(name: str, action, sampler_config, generator):
    """The chain sampler ``name`` for ``action`` (``ValueError`` where the theory does not fit it)."""
    entry = SAMPLERS[name]
    if entry.make is None:
        raise ValueError(f"sampler.name {name!r} needs a trained flow, not a chain sampler")
    return entry.make(action, sampler_config, generator)
