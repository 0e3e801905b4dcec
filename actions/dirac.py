"""The Wilson–Dirac operator of 2D U(1) with antiperiodic time, as a batched stencil and as a dense matrix.

Hopping form (Wilson 1974; Gattringer & Lang, "Quantum Chromodynamics on the Lattice", ch. 5), time = axis 0:

    D ψ(x) = ψ(x) − κ Σ_μ [ (1 − γ_μ) U_μ(x) ψ(x+μ̂) + (1 + γ_μ) U_μ(x−μ̂)* ψ(x−μ̂) ],

U_μ(x) = e^{iθ_μ(x)}, fermions antiperiodic in time (a hop across the x₀ boundary carries a −1) and periodic
in space. γ₀ = σ₁, γ₁ = σ₂, γ₅ = σ₃ = −iγ₀γ₁; then γ₅ D γ₅ = D† (γ₅-hermiticity, so det D is real).
The bare-mass form is D_m = D / (2κ) with κ = 1/(2m + 4).

Spinor fields are complex ``(B, …, L0, L1, 2)`` (any extra batch axes between B and the lattice); the dense
matrix orders its 2V rows as (x₀ L1 + x₁)·2 + spin. On the free field (θ = 0) D is diagonal in momentum,
D(p) = 1 − 2κ Σ_μ cos p_μ + 2iκ Σ_μ γ_μ sin p_μ, p₀ = 2π(n₀ + ½)/L0, p₁ = 2π n₁/L1 (`free_eigenvalues`).

Example:
    >>> theta = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    >>> d = dirac_matrix(theta, kappa=0.0)
    >>> bool(torch.equal(d[0], torch.eye(32, dtype=torch.complex128)))
    True
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["links", "apply_dirac", "apply_dirac_dagger", "apply_gamma5", "dirac_matrix", "dirac_derivative",
           "log_abs_det", "inverse", "free_eigenvalues", "conjugate_gradient"]


def _roll(psi: torch.Tensor, mu: int, step: int) -> torch.Tensor:
    """``_roll(psi, mu, +1)[x] = psi[x + μ̂]`` on spinor fields ``(…, L0, L1, 2)`` (periodic)."""
    return torch.roll(psi, shifts=-step, dims=psi.dim() - 3 + mu)


def links(theta: torch.Tensor) -> torch.Tensor:
    """U'_μ(x) = e^{iθ_μ(x)} with the antiperiodic sign folded in (−1 on time links x₀ = L0 − 1);
    ``(B, 2, L0, L1)`` real → complex."""
    u = torch.polar(torch.ones_like(theta), theta)
    sign = torch.ones(theta.shape[-2], 1, dtype=theta.dtype, device=theta.device)
    sign[-1] = -1.0
    return torch.cat([u[:, :1] * sign, u[:, 1:]], dim=1)


def _gamma(mu: int, v: torch.Tensor) -> torch.Tensor:
    """γ_μ v on the last (spin) axis: γ₀ = σ₁, γ₁ = σ₂."""
    v0, v1 = v[..., 0], v[..., 1]
    if mu == 0:
        return torch.stack([v1, v0], dim=-1)
    return torch.stack([-1j * v1, 1j * v0], dim=-1)


def apply_gamma5(v: torch.Tensor) -> torch.Tensor:
    """γ₅ v = σ₃ v on the last (spin) axis."""
    return torch.stack([v[..., 0], -v[..., 1]], dim=-1)


def _lift(u: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Links ``(B, L0, L1)`` broadcast against a spinor ``(B, …, L0, L1, 2)``."""
    return u.view(u.shape[0], *([1] * (psi.dim() - 4)), *u.shape[1:], 1)


def apply_dirac(theta: torch.Tensor, psi: torch.Tensor, kappa: float, u: torch.Tensor | None = None
                ) -> torch.Tensor:
    """D ψ for links ``theta: (B, 2, L0, L1)`` and spinors ``psi: (B, …, L0, L1, 2)`` (the stencil above);
    ``u`` = `links` (θ) where already at hand. The spin projectors are rank one, (1 ∓ γ₀)v = (a, ∓a) with
    a = v₀ ∓ v₁ and (1 ∓ γ₁)v = (a, ∓ia) with a = v₀ ± iv₁, so each hop moves one complex number per site."""
    u = links(theta) if u is None else u
    psi0, psi1 = psi[..., 0], psi[..., 1]
    dims = psi0.dim() - 2
    u0, u1 = (u[:, mu].view(u.shape[0], *([1] * (dims - 1)), *u.shape[2:]) for mu in range(2))
    a = u0 * torch.roll(psi0 - psi1, -1, dims)  # (1 − γ₀) U₀(x) ψ(x + 0̂)
    b = torch.roll(u0.conj() * (psi0 + psi1), 1, dims)  # (1 + γ₀) U₀(x − 0̂)* ψ(x − 0̂)
    c = u1 * torch.roll(psi0 + 1j * psi1, -1, dims + 1)  # (1 − γ₁) U₁(x) ψ(x + 1̂)
    d = torch.roll(u1.conj() * (psi0 - 1j * psi1), 1, dims + 1)  # (1 + γ₁) U₁(x − 1̂)* ψ(x − 1̂)
    out0 = psi0 - kappa * (a + b + c + d)
    out1 = psi1 - kappa * (b - a + 1j * (d - c))
    return torch.stack([out0, out1], dim=-1)


def apply_dirac_dagger(theta: torch.Tensor, psi: torch.Tensor, kappa: float, u: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """D† ψ = γ₅ D γ₅ ψ."""
    return apply_gamma5(apply_dirac(theta, apply_gamma5(psi), kappa, u))


def dirac_matrix(theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """The dense D, ``(B, 2V, 2V)`` complex, built by the stencil on the unit vectors (differentiable in θ);
    O(V²) memory per configuration: meant for V ≤ 16 × 16."""
    b, _, l0, l1 = theta.shape
    n = 2 * l0 * l1
    cdtype = torch.complex128 if theta.dtype == torch.float64 else torch.complex64
    basis = torch.eye(n, dtype=cdtype, device=theta.device).view(1, n, l0, l1, 2)
    columns = apply_dirac(theta, basis.expand(b, n, l0, l1, 2), kappa)  # column j = D e_j
    return columns.reshape(b, n, n).transpose(1, 2)


def log_abs_det(d: torch.Tensor) -> torch.Tensor:
    """log |det d| of ``(B, n, n)`` matrices, ``(B,)`` real, differentiable: one LU per matrix. torch 2.13's CPU
    batched LU returns invalid pivots for n ≥ 256 once `torch.set_num_threads` (2) has been called (MKL error
    "Parameter 6 was incorrect on entry to ZLASWP"), so the batch is never handed to it at once."""
    return torch.stack([torch.linalg.slogdet(m).logabsdet for m in d.unbind(0)])


def inverse(d: torch.Tensor) -> torch.Tensor:
    """d⁻¹ of ``(B, n, n)`` matrices, one LU per matrix (see `log_abs_det`)."""
    return torch.stack([torch.linalg.inv(m) for m in d.unbind(0)])


def dirac_derivative(theta: torch.Tensor, left: torch.Tensor, right: torch.Tensor, kappa: float) -> torch.Tensor:
    """C_μ(x) = Σ_… left† (∂D/∂θ_μ(x)) right, summed over the extra batch axes of the spinors; ``(B, 2, L0, L1)``
    complex. Only D's hops through the link (x, μ) depend on θ_μ(x):
    ∂D_{x,x+μ̂} = −iκ U'_μ(x)(1 − γ_μ), ∂D_{x+μ̂,x} = +iκ U'_μ(x)*(1 + γ_μ).

    Uses: ∂ log det D = tr(D⁻¹ ∂D) = Σ_j (row j of D⁻¹)·(∂D e_j), and the pseudofermion force
    ∂[φ†(D†D)⁻¹φ] = −2 Re (Dχ)† ∂D χ with χ = (D†D)⁻¹φ.
    """
    u = links(theta)
    out = []
    for mu in range(2):
        um = _lift(u[:, mu], right)
        r_fwd = _roll(right, mu, 1)  # right(x + μ̂)
        a_fwd = -1j * kappa * um * (r_fwd - _gamma(mu, r_fwd))
        a_bwd = 1j * kappa * um.conj() * (right + _gamma(mu, right))  # lands on the row x + μ̂
        term = (left.conj() * a_fwd).sum(-1) + (_roll(left, mu, 1).conj() * a_bwd).sum(-1)
        out.append(term.flatten(1, term.dim() - 3).sum(1) if term.dim() > 3 else term)
    return torch.stack(out, dim=1)


def free_eigenvalues(shape: tuple[int, int], kappa: float) -> np.ndarray:
    """The 2V eigenvalues of the free D (θ = 0): 1 − 2κ Σ_μ cos p_μ ± 2iκ (Σ_μ sin² p_μ)^{1/2}, p₀ antiperiodic."""
    l0, l1 = shape
    p0 = 2 * math.pi * (np.arange(l0) + 0.5) / l0
    p1 = 2 * math.pi * np.arange(l1) / l1
    g0, g1 = np.meshgrid(p0, p1, indexing="ij")
    re = 1 - 2 * kappa * (np.cos(g0) + np.cos(g1))
    im = 2 * kappa * np.sqrt(np.sin(g0) ** 2 + np.sin(g1) ** 2)
    return np.concatenate([(re + 1j * im).ravel(), (re - 1j * im).ravel()])


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, tol: float = 1e-10,
                       max_iter: int = 10000) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Solve A x = b for a hermitian positive-definite A (e.g. D†D) by conjugate gradients (Hestenes & Stiefel
    1952), every configuration of the batch ``rhs: (B, …)`` at once, until ‖b − A x‖ ≤ ``tol``·‖b‖ for all.

    Returns (x, iterations, the relative residual ‖b − A x‖/‖b‖ per configuration, recomputed at the end).
    Converged configurations stop moving (their step is masked), so each solution meets its own tolerance.
    """
    def dot(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (a.conj() * c).flatten(1).sum(1).real

    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = dot(r, r)
    b2 = dot(rhs, rhs).clamp_min(torch.finfo(rr.dtype).tiny)
    view = (-1,) + (1,) * (rhs.dim() - 1)
    it = 0
    while it < max_iter:
        active = rr > tol * tol * b2
        if it % 8 == 0 and not bool(active.any()):  # one host sync every 8 iterations
            break
        ap = apply(p)
        alpha = torch.where(active, rr / dot(p, ap).clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        x = x + alpha.view(view) * p
        r = r - alpha.view(view) * ap
        rr_new = dot(r, r)
        beta = torch.where(active, rr_new / rr.clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        p = torch.where(active.view(view), r + beta.view(view) * p, p)
        rr = torch.where(active, rr_new, rr)
        it += 1
    r = rhs - apply(x)
    residual = torch.sqrt(dot(r, r) / b2)
    return x, it, residual
