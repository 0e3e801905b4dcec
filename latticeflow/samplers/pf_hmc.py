"""Pseudofermion HMC for theories with two degenerate fermion flavours (Duane, Kennedy, Pendleton, Roweth 1987;
Gottlieb et al. 1987): det(D†D) = ∫ dφ† dφ e^{−φ†(D†D)⁻¹φ} up to a constant.

Each trajectory draws φ = D†η (η complex Gaussian) from its heat bath, then runs HMC for
H = ½ Σ p² + S_g(θ) + φ†(D†D)⁻¹φ at fixed φ (`HMC`'s leapfrog or Omelyan integrator), every (D†D)⁻¹φ by
conjugate gradients to the relative residual ``cg_tol`` (the same solver for the accept step). The joint chain
of (θ, φ) leaves e^{−S_g} det(D†D) invariant. The theory offers ``pseudofermion_heatbath(x, generator)``,
``pseudofermion_action(x, φ, tol)``, ``pseudofermion_force(x, φ, tol)`` and ``stored_action(x)`` (what a row
of the ensemble stores as its action: the exact effective action where affordable, see the theory).
"""
from __future__ import annotations

import torch

from .hmc import HMC, HMCStep

__all__ = ["PseudofermionHMC"]


class PseudofermionHMC(HMC):
    """`HMC` with a pseudofermion field refreshed every trajectory; ``cg_tol``: CG's relative residual.

    Example:
        >>> from actions import Schwinger
        >>> hmc = PseudofermionHMC(Schwinger((4, 4), beta=2.0, kappa=0.2), n_leapfrog=4, step_size=0.2,
        ...                        integrator="omelyan", generator=torch.Generator().manual_seed(0))
        >>> hmc.step(torch.zeros(2, 2, 4, 4, dtype=torch.float64)).accepted.shape
        torch.Size([2])
    """

    def __init__(self, action, *, cg_tol: float = 1e-10, **kwargs) -> None:
        for hook in ("pseudofermion_heatbath", "pseudofermion_action", "pseudofermion_force"):
            if not hasattr(action, hook):
                raise ValueError(f"pseudofermion HMC needs a theory with fermions, got {type(action).__name__}")
        if not 0 < cg_tol < 1:
            raise ValueError(f"sampler.cg_tol must be in (0, 1), got {cg_tol}")
        super().__init__(action, **kwargs)
        self.cg_tol = float(cg_tol)

    def step(self, x: torch.Tensor, action_x: torch.Tensor | None = None) -> HMCStep:
        """One trajectory per chain: heat bath for φ, momenta, integration at fixed φ, Metropolis on ΔH."""
        theory, tol, gen = self.action, self.cg_tol, self.generator
        phi = theory.pseudofermion_heatbath(x, gen)
        p = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        h0 = 0.5 * (p * p).flatten(1).sum(-1) + theory.pseudofermion_action(x, phi, tol)
        x1, p1 = self._integrate(x, p, lambda y: theory.pseudofermion_force(y, phi, tol))
        h1 = 0.5 * (p1 * p1).flatten(1).sum(-1) + theory.pseudofermion_action(x1, phi, tol)
        delta_h = h1 - h0
        u = torch.rand(x.shape[0], generator=gen, dtype=x.dtype, device=x.device)
        accepted = torch.log(u) < -delta_h
        view = (-1,) + (1,) * (x.dim() - 1)
        x_new = torch.where(accepted.view(view), x1, x)
        s_old = theory.stored_action(x) if action_x is None else action_x
        s_new = torch.where(accepted, theory.stored_action(x1), s_old)
        return HMCStep(x_new, accepted, delta_h, s_new)
