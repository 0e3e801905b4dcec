"""Gauge-equivariant coupling flow for 2D U(1) (Kanwar et al. 2020; Albergo et al. 2021, arXiv 2101.08176).

Layer i updates links θ_μ(x), μ = i mod 2, on the stripes x_ν ≡ (i // 2) mod 4 (ν ≠ μ). Each active link
enters exactly one *active* plaquette with sign +, so P' = h(P | frozen) is realised by
θ' = θ + h(P) − P; *frozen* plaquettes (no active link) condition h through a periodic CNN on
(cos P, sin P); the rest are passive. Plaquettes are gauge invariant, hence so is the flow density.
The stripes need both extents even and ≥ 4 (`check_gauge_lattice`); on L ≡ 2 mod 4 they are not
translation invariant (offsets 0, 1 hold ⌈L/4⌉ stripes, 2, 3 hold ⌊L/4⌋), but every link is still updated
exactly once per 8 layers and no plaquette holds two active links (see `u1_link_masks`).
h is a mixture of non-compact projections on (−π, π]:
    g_s(P) = 2 atan2(e^s sin(P/2), cos(P/2)),  h(P) = (1/K) Σ_k g_{s_k}(P) + t  (mod 2π),
    log g_s'(P) = −log(e^{−s} cos²(P/2) + e^{s} sin²(P/2)),  ∂_P log g_s' = −sinh(s) sin P / D_s,
    ∂_s g_s(P) = sin P / D_s.
h has no closed-form inverse: `ncp_inverse` bisects on [−π, π] (iteration count from the bracket width
and the dtype's resolution) and is differentiated implicitly, ∂P/∂τ = 1/G', ∂P/∂s = −∂_sG/G'.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from actions.lattice import shift
from actions.u1 import U1Gauge, wrap
from .base import FlowError
from .conditioners import ConvNet
from .coupling import Coupling

__all__ = ["GaugeCoupling", "NCPCoupling", "check_gauge_lattice", "ncp_mixture", "ncp_inverse", "u1_link_masks"]


def _ncp_terms(p: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per component (…, K): g_s(P), log g_s'(P) and D_s = e^{−s}cos²(P/2) + e^{s}sin²(P/2)."""
    half = 0.5 * p.unsqueeze(-1)
    c, sn = torch.cos(half), torch.sin(half)
    es = torch.exp(s)
    g = 2 * torch.atan2(es * sn, c)
    d = c * c / es + es * sn * sn
    return g, -torch.log(d), d


def ncp_mixture(p: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G(P) = (1/K) Σ_k g_{s_k}(P) and log G'(P) = logsumexp_k log g_k' − log K; ``s: (…, K)``."""
    g, log_gp, _ = _ncp_terms(p, s)
    k = s.shape[-1]
    return g.mean(-1), torch.logsumexp(log_gp, -1) - math.log(k)


def _bisect(tau: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    lo = torch.full_like(tau, -math.pi)
    hi = torch.full_like(tau, math.pi)
    tol = 4 * torch.finfo(tau.dtype).eps
    n_iter = int(math.ceil(math.log2(2 * math.pi / tol)))
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        below = ncp_mixture(mid, s)[0] < tau
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class _NCPInverse(torch.autograd.Function):
    """P = G⁻¹(τ; s) by bisection; backward by implicit differentiation of G(P; s) = τ."""

    @staticmethod
    def forward(ctx, tau: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = _bisect(tau, s)
        ctx.save_for_backward(p, s)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        p, s = ctx.saved_tensors
        _, log_gp, d = _ncp_terms(p, s)
        k = s.shape[-1]
        g_prime = torch.exp(torch.logsumexp(log_gp, -1) - math.log(k))
        dtau = grad_p / g_prime
        ds = -dtau.unsqueeze(-1) * torch.sin(p).unsqueeze(-1) / d / k
        return dtau, ds


def ncp_inverse(tau: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Solve G(P; s) = τ for P ∈ [−π, π] (τ in (−π, π]); differentiable in τ and s."""
    return _NCPInverse.apply(tau, s)


def check_gauge_lattice(shape: Sequence[int]) -> tuple[int, int]:
    """``(L0, L1)`` if the period-4 link stripes of `u1_link_masks` fit the lattice, else a one-line `FlowError`.

    Both extents must be even (on L ≡ 1 mod 4 the stripes x_ν = 0 and x_ν = L − 1 of one offset would share
    a plaquette; odd extents are not supported at all) and ≥ 4 (on L = 2 the offsets 2 and 3 hold no link).
    """
    extents = tuple(int(s) for s in shape)
    why = ""
    if len(extents) != 2:
        why = "a 2D lattice is needed"
    else:
        for extent in extents:
            if extent < 4:
                why = f"extent {extent} < 4 leaves stripe offsets without links"
                break
            if extent % 2:
                why = f"extent {extent} is odd"
                break
    if why:
        raise FlowError(f"flow: gauge-equivariant U(1) couplings (link stripes x_nu = offset mod 4) need both "
                        f"lattice extents even and >= 4, got shape {list(shape)}: {why}")
    return extents  # type: ignore[return-value]


def u1_link_masks(shape: Sequence[int], layer: int, device=None) -> dict[str, torch.Tensor]:
    """Masks of layer ``layer``: active links ``(2, L0, L1)``, active/frozen plaquettes ``(L0, L1)``.

    μ = layer mod 2, active links θ_μ(x) on the stripes S = {x_ν ≡ (layer // 2) mod 4} along ν = 1 − μ.
    The active plaquette of θ₀(x) is P(x) and of θ₁(x) is P(x − 0̂) (where each enters with sign +); the
    other plaquette it touches (sign −) is passive; the rest are frozen. A plaquette holds θ_μ on the two
    neighbouring lines x_ν and x_ν + 1, so it holds at most one active link iff no two lines of S are
    neighbours on the ring ℤ_{L_ν}. On an even extent L ≥ 4: inside 0 … L − 1 the lines of S are 4 apart, and
    across the boundary the neighbours L − 1 and 0 have residues 3, 0 (L ≡ 0 mod 4) or 1, 0 (L ≡ 2 mod 4),
    never equal. The four offsets partition the lines, so layers 0 … 7 update every link exactly once (the
    default 16 layers twice). On multiples of 4 the pattern is translation invariant by 4 lattice spacings.
    """
    L0, L1 = check_gauge_lattice(shape)
    mu, off = layer % 2, (layer // 2) % 4
    nu = 1 - mu
    coord = torch.arange((L0, L1)[nu], device=device)
    line = (coord % 4) == off
    stripe = line.view(-1, 1).expand(L0, L1) if nu == 0 else line.view(1, -1).expand(L0, L1)
    links = torch.zeros(2, L0, L1, dtype=torch.bool, device=device)
    links[mu] = stripe
    m = links.to(torch.float64)[None]
    touched = (m[:, 0] + shift(m[:, 1], 0, 1) + shift(m[:, 0], 1, 1) + m[:, 1])[0] > 0
    active_plaq = stripe if mu == 0 else shift(stripe[None].to(torch.float64), 0, 1)[0] > 0
    return {"links": links, "active_plaquettes": active_plaq, "frozen_plaquettes": ~touched, "mu": mu}


class GaugeCoupling(Coupling):
    """Shared plumbing of the gauge-equivariant couplings on link angles ``theta: (B, 2, L0, L1)``.

    Active links of layer ``layer`` (see `u1_link_masks`), the index of each active link's active
    plaquette, and a periodic CNN on gauge-invariant features of the frozen region: (cos P, sin P) of the
    frozen plaquettes and, with ``loops=True``, (cos W, sin W) of the 2×1 and 1×2 Wilson loops
    W = P(x) + P(x + μ̂) whose two plaquettes are both frozen (as in NeuMC). ``conditioner_params`` of a
    subclass receives ``(rest, out)``: rest = P − θ_active at the active links, ``out: (B, C, n_b)``.
    A lattice the stripes do not fit (an odd extent, an extent < 4, not 2D) raises a one-line `FlowError`.
    """

    def __init__(self, shape: Sequence[int], layer: int, n_out: int, *, hidden: Sequence[int] = (8, 8),
                 kernel_size: int = 3, activation: str = "tanh", dilation: int | Sequence[int] = 1,
                 loops: bool = False) -> None:
        masks = u1_link_masks(shape, layer)
        super().__init__(masks["links"])
        self.mu = masks["mu"]
        fz = masks["frozen_plaquettes"]
        self.register_buffer("frozen_plaquettes", fz)
        self.loops = loops
        if loops:  # both plaquettes of the loop frozen
            self.register_buffer("frozen_loops", torch.stack([fz & torch.roll(fz, -1, mu) for mu in (0, 1)]))
        # flat index of the active plaquette of each active link (θ₀(x) ↔ P(x), θ₁(x) ↔ P(x − 0̂))
        L0, L1 = shape
        site = self.idx_b % (L0 * L1)
        x0, x1 = site // L1, site % L1
        if self.mu == 1:
            x0 = (x0 - 1) % L0
        self.register_buffer("plaquette_index", x0 * L1 + x1)
        self.net = ConvNet(6 if loops else 2, n_out, hidden, kernel_size, activation, bias=True, dilation=dilation)

    def gauge_features(self, x_frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rest at the active links (B, n_b), conditioner output (B, C, n_b))."""
        plaq = U1Gauge.plaquettes(x_frozen)  # = P at frozen plaquettes, = P − θ_active at active ones
        fz = self.frozen_plaquettes.to(plaq.dtype)
        feats = [torch.cos(plaq) * fz, torch.sin(plaq) * fz]
        if self.loops:
            for mu in (0, 1):
                loop = plaq + shift(plaq, mu, 1)
                m = self.frozen_loops[mu].to(plaq.dtype)
                feats += [torch.cos(loop) * m, torch.sin(loop) * m]
        out = self.net(torch.stack(feats, dim=1)).flatten(2).index_select(2, self.plaquette_index)  # (B, C, n_b)
        rest = plaq.flatten(1).index_select(1, self.plaquette_index)
        return rest, out


class NCPCoupling(GaugeCoupling):
    """One gauge-equivariant NCP coupling on link angles ``theta: (B, 2, L0, L1)``."""

    def __init__(self, shape: Sequence[int], layer: int, *, n_components: int = 2, hidden: Sequence[int] = (8, 8),
                 kernel_size: int = 3, activation: str = "tanh", dilation: int | Sequence[int] = 1,
                 loops: bool = False) -> None:
        super().__init__(shape, layer, n_components + 1, hidden=hidden, kernel_size=kernel_size,
                         activation=activation, dilation=dilation, loops=loops)
        self.n_components = n_components

    def conditioner_params(self, x_frozen: torch.Tensor):
        """(rest, s, t) at the active links: rest = P − θ_active, NCP log-scales s (B, n_b, K), shift t."""
        rest, out = self.gauge_features(x_frozen)
        return rest, out[:, : self.n_components].transpose(1, 2), out[:, self.n_components]

    def transform(self, x, params):
        rest, s, t = params
        p = wrap(x + rest)
        g, log_gp = ncp_mixture(p, s)
        return wrap(g + t - rest), log_gp

    def transform_with_dlog(self, x, params):
        """(h(P) − rest, log h'(P)) with their parameter graph, plus ∂_P log h' and a cache for the
        analytic cotangents (no graph: the score hooks only differentiate through the conditioner)."""
        rest, s, t = params
        p = wrap(x + rest)
        g, log_gp, d = _ncp_terms(p, s)
        log_fprime = torch.logsumexp(log_gp, -1) - math.log(self.n_components)
        y = wrap(g.mean(-1) + t - rest)
        with torch.no_grad():
            p, s, d, log_gp = p.detach(), s.detach(), d.detach(), log_gp.detach()
            half = 0.5 * p.unsqueeze(-1)
            es = torch.exp(s)
            c2, s2 = torch.cos(half) ** 2 / es, es * torch.sin(half) ** 2  # e^{−s}cos²(P/2), e^{s}sin²(P/2)
            w = torch.softmax(log_gp, -1)  # g_k' / Σ g'
            sin_p = torch.sin(p).unsqueeze(-1)
            dlog = (w * (-torch.sinh(s) * sin_p / d)).sum(-1)
        return y, log_fprime, dlog, (sin_p, d, c2, s2, w, log_fprime.detach(), dlog)

    def param_cotangents(self, u_b, x_b, params, cache):
        """Analytic ∂/∂(rest, s, t) of Σ_b [log h'(P) + u_b (h(P) − rest)], P = x_b + rest:
        ∂t = u_b,  ∂rest = u_b (h' − 1) + ∂_P log h',  ∂s_k = u_b sin P/(K D_k) + w_k (e^{−s}c² − e^{s}s²)/D_k."""
        sin_p, d, c2, s2, w, log_fprime, dlog = cache
        k = self.n_components
        c_rest = u_b * (torch.exp(log_fprime) - 1) + dlog
        c_s = u_b.unsqueeze(-1) * sin_p / (k * d) + w * (c2 - s2) / d
        return c_rest, c_s, u_b

    def inverse_transform(self, y, params):
        rest, s, t = params
        tau = wrap(y + rest - t)
        p = ncp_inverse(tau, s)
        _, log_gp = ncp_mixture(p, s)
        return wrap(p - rest), log_gp
