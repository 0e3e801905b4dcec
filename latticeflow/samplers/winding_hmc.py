"""Winding HMC for 2D U(1) gauge theories, with or without fermions (Albandea, Hernández, Ramos, Romero-López,
"Topological sampling through windings", arXiv 2106.14234, Eur. Phys. J. C 81, 873 (2021)).

Each step is one HMC trajectory (pseudofermion HMC for a theory with fermions) followed by ``winding_moves``
instanton proposals θ' = θ + s W(· − r): W the unit instanton of `actions.u1.winding_field` (every plaquette of an
``winding_size``² square, or of the whole lattice, turned by 2π/size²; Q → Q ± 1 on smooth fields), s = ±1 and
the position r uniform, so the proposal is symmetric, accepted with min(1, e^{−ΔS}) on the theory's full action
(for the Schwinger model the exact determinant; beyond the volume where it is affordable, at a pseudofermion
field drawn for the move, which is exact for the joint (θ, φ) chain). HMC alone moves Q by continuous
deformations, which freeze at large β; the winding moves jump between sectors directly.
"""
from __future__ import annotations

import torch

from actions.u1 import winding_field
from .hmc import HMC, HMCStep

__all__ = ["WindingHMC"]


class WindingHMC:
    """``hmc`` (an `HMC` or `PseudofermionHMC` on ``action``) plus instanton Metropolis moves after every trajectory.

    Example:
        >>> from actions import U1Gauge
        >>> u1 = U1Gauge((8, 8), beta=6.0)
        >>> gen = torch.Generator().manual_seed(0)
        >>> sampler = WindingHMC(u1, HMC(u1, generator=gen), generator=gen)
        >>> sampler.step(torch.zeros(4, 2, 8, 8, dtype=torch.float64)).x.shape
        torch.Size([4, 2, 8, 8])
    """

    thermalize = HMC.thermalize  # tunes the trajectory's step size on the HMC acceptance (`HMCStep.accepted`)

    def __init__(self, action, hmc, *, winding_size: int | None = None, winding_moves: int = 1,
                 generator: torch.Generator | None = None) -> None:
        if not hasattr(action, "plaquettes") or len(getattr(action, "shape", ())) != 2:
            raise ValueError(f"winding HMC needs a 2D U(1) gauge theory, got {type(action).__name__}")
        if winding_moves < 0:
            raise ValueError(f"sampler.winding_moves must be >= 0, got {winding_moves}")
        try:
            self.field = winding_field(action.shape, winding_size)
        except ValueError as err:
            raise ValueError(f"sampler.{err}") from None
        self.action, self.hmc, self.generator = action, hmc, generator
        self.winding_size, self.winding_moves = winding_size, int(winding_moves)
        self.n_tried = 0
        self.n_accepted: torch.Tensor | None = None  # on the fields' device: no host sync per move
        # pseudofermion acceptance where the exact determinant is too dear to store (`stored_action` is then S_g)
        self._pseudofermion = (hasattr(action, "pseudofermion_action")
                               and action.volume > getattr(action, "max_exact_volume", float("inf")))

    # the HMC's tuned attributes, read and set through the wrapper (`tune_trajectory`, resume)
    step_size = property(lambda self: self.hmc.step_size, lambda self, v: setattr(self.hmc, "step_size", v))
    n_leapfrog = property(lambda self: self.hmc.n_leapfrog, lambda self, v: setattr(self.hmc, "n_leapfrog", v))
    target_acceptance = property(lambda self: self.hmc.target_acceptance)

    def state_attrs(self) -> dict[str, float]:
        return self.hmc.state_attrs()

    def load_state_attrs(self, attrs) -> None:
        self.hmc.load_state_attrs(attrs)

    @property
    def winding_acceptance(self) -> float | None:
        """Fraction of winding proposals accepted so far (one host read)."""
        return None if not self.n_tried else float(self.n_accepted) / self.n_tried

    def _proposal(self, x: torch.Tensor) -> torch.Tensor:
        """x + s W(· − r) per chain, s = ±1 and r uniform."""
        b, gen, dev = x.shape[0], self.generator, x.device
        l0, l1 = self.action.shape
        r = torch.randint(0, l0 * l1, (b,), generator=gen, device=dev)
        sign = torch.randint(0, 2, (b,), generator=gen, device=dev).to(x.dtype) * 2 - 1
        i0 = (torch.arange(l0, device=dev).view(1, l0, 1) - (r // l1).view(b, 1, 1)) % l0
        i1 = (torch.arange(l1, device=dev).view(1, 1, l1) - (r % l1).view(b, 1, 1)) % l1
        w = self.field.to(device=dev, dtype=x.dtype)[:, i0, i1].transpose(0, 1)  # (B, 2, L0, L1)
        return self.action.project(x + sign.view(b, 1, 1, 1) * w)

    def wind(self, x: torch.Tensor, action_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One winding Metropolis step for every chain; returns the fields and their stored actions."""
        theory, gen = self.action, self.generator
        stored = getattr(theory, "stored_action", theory.action)
        x1 = self._proposal(x)
        if self._pseudofermion:
            phi = theory.pseudofermion_heatbath(x, gen)
            tol = getattr(self.hmc, "cg_tol", 1e-10)
            delta = theory.pseudofermion_action(x1, phi, tol) - theory.pseudofermion_action(x, phi, tol)
            s1 = stored(x1)
            s0 = stored(x) if action_x is None else action_x
        else:
            s0 = theory.action(x) if action_x is None else action_x
            s1 = theory.action(x1)
            delta = s1 - s0
        u = torch.rand(x.shape[0], generator=gen, dtype=x.dtype, device=x.device)
        accepted = torch.log(u) < -delta  # NaN is rejected
        self.n_tried += x.shape[0]
        n = accepted.sum()
        self.n_accepted = n if self.n_accepted is None else self.n_accepted + n
        view = (-1,) + (1,) * (x.dim() - 1)
        return torch.where(accepted.view(view), x1, x), torch.where(accepted, s1, s0)

    def step(self, x: torch.Tensor, action_x: torch.Tensor | None = None) -> HMCStep:
        """One HMC trajectory, then ``winding_moves`` winding proposals; ``accepted``/``delta_h`` are the
        trajectory's (the step-size tuning and ⟨e^{−ΔH}⟩ refer to it)."""
        out = self.hmc.step(x, action_x)
        x, s = out.x, out.action
        for _ in range(self.winding_moves):
            x, s = self.wind(x, s)
        return HMCStep(x, out.accepted, out.delta_h, s)
