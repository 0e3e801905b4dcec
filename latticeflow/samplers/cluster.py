"""Swendsen–Wang clusters of the embedded Ising signs of φ⁴ theory, alternated with HMC for the magnitudes
(Brower & Tamayo, "Embedded dynamics for φ⁴ theory", PRL 62, 1087 (1989)).

Write φ_x = s_x |φ_x| with s_x = ±1. At fixed |φ| the hopping term of
S(φ) = Σ_x [−2κ Σ_μ φ_x φ_{x+μ̂} + (1 − 2λ) φ_x² + λ φ_x⁴] is an Ising model with one coupling per link (x, μ):

    S = S(|φ|) − Σ_{x,μ} J_{x,μ} (s_x s_{x+μ̂} − 1),   J_{x,μ} = 2κ |φ_x| |φ_{x+μ̂}|   (κ > 0: ferromagnetic).

Swendsen & Wang (PRL 58, 86 (1987)), from the Edwards–Sokal identity e^{J(ss' − 1)} = (1 − p) + p δ_{ss'} with
p = 1 − e^{−2J}: each link (x, μ) whose ends are aligned becomes a bond with probability
p_{x,μ} = 1 − exp(−4κ |φ_x φ_{x+μ̂}|), the clusters are the connected components of the bonds, and every
cluster flips its signs with probability ½. The links are exactly those of the action, one per (x, μ): on an
axis of extent 2 two links (each with its own J) join the same pair of sites, on an axis of extent 1 a link
joins a site to itself (no bond needed: s_x s_x = 1). The update keeps |φ| and leaves e^{−S} invariant
(detailed balance of the joint measure), but it *changes* S — the two ends of a bond flip together, yet a
link between two clusters that flip differently changes its term — and, acting on signs only, it is not
ergodic. `Cluster.step` therefore
composes one SW update (every ``cluster_every`` steps) with one HMC trajectory, which moves the magnitudes.
Near criticality and in the broken phase the clusters percolate and flip the magnetisation in one update,
where HMC has to tunnel through the double well.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from actions.lattice import shift
from .hmc import HMC, HMCStep

__all__ = ["Cluster", "swendsen_wang"]


@lru_cache(maxsize=16)
def _neighbour_table(n_chains: int, shape: tuple[int, ...]) -> np.ndarray:
    """``(n_chains·V, d)`` int32: row chain·V + site lists the node ids of site + μ̂ (periodic), μ = 0 … d − 1,
    in the row-major order of a ``(B, *shape, d)`` array."""
    n_nodes = n_chains * int(np.prod(shape))
    ids = np.arange(n_nodes, dtype=np.int32 if n_nodes < 2**31 - 1 else np.int64).reshape(n_chains, *shape)
    return np.stack([np.roll(ids, -1, axis=1 + mu) for mu in range(len(shape))], axis=-1).reshape(-1, len(shape))


def _check_phi4(action) -> None:
    if not (hasattr(action, "kappa") and hasattr(action, "lam") and hasattr(action, "ndim")):
        raise ValueError(f"the cluster sampler needs a φ⁴ action with kappa and lam (the embedded Ising signs of "
                         f"φ = s|φ|), got {type(action).__name__}")
    if not action.kappa > 0:
        raise ValueError(f"action.kappa must be > 0 for the embedded Ising clusters (ferromagnetic coupling "
                         f"J = 2κ|φ_x φ_y|), got {action.kappa}")


def swendsen_wang(action, phi: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Swendsen–Wang update of the signs of ``phi: (B, L0, L1, …)`` for every chain at once; |φ| is unchanged.

    Bonds are drawn with torch on ``phi``'s device; the clusters of all chains (one graph, nodes = (chain, site))
    are labelled on the CPU by ``scipy.sparse.csgraph.connected_components``: device → host transfers of the
    bond mask (and its per-site counts) and one host → device transfer of the labels per update, which a
    cluster algorithm cannot avoid cheaply. The flips (one uniform draw per cluster) come from ``generator``,
    so runs repeat from the seed.
    """
    _check_phi4(action)
    nd = phi.dim() - 1
    if nd != action.ndim:
        raise ValueError(f"phi must be (B, {', '.join(f'L{i}' for i in range(action.ndim))}), got {tuple(phi.shape)}")
    magnitude, positive = phi.abs(), phi >= 0
    u = torch.rand((*phi.shape, nd), generator=generator, dtype=phi.dtype, device=phi.device)
    bonds = torch.stack([
        (positive == shift(positive, mu, 1, nd))
        & (u[..., mu] < -torch.expm1(-4.0 * action.kappa * magnitude * shift(magnitude, mu, 1, nd)))
        for mu in range(nd)], dim=-1)  # (B, *shape, d): link (x, μ) is a bond
    per_site = bonds.flatten(0, -2).sum(-1).cpu().numpy()  # bonds leaving each node (a bool sum is slow in numpy)
    bonds = bonds.cpu().numpy().reshape(-1, nd)
    target = _neighbour_table(phi.shape[0], tuple(phi.shape[1:]))
    n_nodes = target.shape[0]
    indptr = np.zeros(n_nodes + 1, dtype=target.dtype)  # the bond graph in CSR form, rows = (chain, site)
    np.cumsum(per_site, out=indptr[1:])
    graph = csr_matrix((np.ones(int(indptr[-1]), dtype=np.int8), target[bonds], indptr), shape=(n_nodes, n_nodes))
    n_clusters, labels = connected_components(graph, directed=True, connection="weak")
    flip = torch.rand(n_clusters, generator=generator, dtype=phi.dtype, device=phi.device) < 0.5
    sign = 1.0 - 2.0 * flip.to(phi.dtype)
    labels = torch.from_numpy(labels.astype(np.int64)).to(phi.device)
    return phi * sign[labels].view(phi.shape)


class Cluster:
    """Brower–Tamayo embedded clusters for φ⁴: per `step`, one Swendsen–Wang update of the signs (every
    ``cluster_every`` steps) then one HMC trajectory (``n_leapfrog``, ``step_size``, ``integrator``,
    ``target_acceptance``, ``step_size_jitter`` are the inner `HMC`'s). ``x: (n_chains, *shape)``; the same
    interface as `HMC`. Needs κ > 0. The cluster labelling runs on the CPU (see `swendsen_wang`).

    Example:
        >>> from actions import Phi4
        >>> sampler = Cluster(Phi4((4, 4), kappa=0.3, lam=0.02), n_leapfrog=5, step_size=0.2,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> step = sampler.step(torch.ones(8, 4, 4, dtype=torch.float64))
        >>> step.x.shape, step.accepted.dtype, bool(torch.allclose(step.action, sampler.action.action(step.x)))
        (torch.Size([8, 4, 4]), torch.bool, True)
    """

    def __init__(self, action, *, n_leapfrog: int = 10, step_size: float = 0.1, integrator: str = "leapfrog",
                 target_acceptance: float = 0.8, step_size_jitter: float = 0.2,
                 generator: torch.Generator | None = None, cluster_every: int = 1) -> None:
        _check_phi4(action)
        if int(cluster_every) != cluster_every or cluster_every < 1:
            raise ValueError(f"sampler.cluster_every must be an integer >= 1, got {cluster_every}")
        self.action = action
        self.generator = generator
        self.cluster_every = int(cluster_every)
        self.hmc = HMC(action, n_leapfrog=n_leapfrog, step_size=step_size, integrator=integrator,
                       target_acceptance=target_acceptance, step_size_jitter=step_size_jitter, generator=generator)
        self.n_steps = 0  # steps taken: the SW update comes before steps 0, k, 2k, … (k = cluster_every)

    # -- the inner HMC's settings -------------------------------------------------------------------
    @property
    def step_size(self) -> float:
        return self.hmc.step_size

    @step_size.setter
    def step_size(self, value: float) -> None:
        self.hmc.step_size = float(value)

    @property
    def n_leapfrog(self) -> int:
        return self.hmc.n_leapfrog

    @n_leapfrog.setter
    def n_leapfrog(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"sampler.n_leapfrog must be >= 1, got {value}")
        self.hmc.n_leapfrog = int(value)

    @property
    def target_acceptance(self) -> float:
        return self.hmc.target_acceptance

    # -- resumable state ----------------------------------------------------------------------------
    def state_attrs(self) -> dict[str, float | int]:
        """What a resumed chain needs besides the fields and the RNG state: the frozen HMC step size,
        ``cluster_every`` and the phase of the SW schedule (so that a resumed run is bit-identical)."""
        return {**self.hmc.state_attrs(), "cluster_every": self.cluster_every,
                "cluster_phase": self.n_steps % self.cluster_every}

    def load_state_attrs(self, attrs) -> None:
        """Restore `state_attrs`; a file written with another ``cluster_every`` is refused (``ValueError``)."""
        stored = int(attrs.get("cluster_every", self.cluster_every))
        if stored != self.cluster_every:
            raise ValueError(f"sampler.cluster_every is {self.cluster_every} but the ensemble was written with "
                             f"cluster_every={stored}")
        self.hmc.load_state_attrs(attrs)
        self.n_steps = int(attrs.get("cluster_phase", 0))

    # -- updates ------------------------------------------------------------------------------------
    def cluster_update(self, x: torch.Tensor) -> torch.Tensor:
        """One Swendsen–Wang update of the signs of every chain (`swendsen_wang`)."""
        return swendsen_wang(self.action, x, self.generator)

    def step(self, x: torch.Tensor, action_x: torch.Tensor | None = None) -> HMCStep:
        """One SW update (when due) then one HMC trajectory; ``accepted`` and ``delta_h`` are the trajectory's,
        ``action`` is S of the returned fields. The SW update changes S, so ``action_x`` is only reused
        on steps without one."""
        if self.n_steps % self.cluster_every == 0:
            x, action_x = self.cluster_update(x), None
        self.n_steps += 1
        return self.hmc.step(x, action_x)

    def thermalize(self, x: torch.Tensor, n_steps: int, *, tune: bool = True,
                   callback: Callable[[int, float, float], None] | None = None) -> torch.Tensor:
        """Run ``n_steps`` steps (cluster updates interleaved), tuning the HMC step size towards
        ``target_acceptance`` by the rule of `HMC.thermalize` (which only uses ``step``, ``step_size`` and
        ``target_acceptance``, all of which this class provides)."""
        return HMC.thermalize(self, x, n_steps, tune=tune, callback=callback)  # type: ignore[arg-type]
