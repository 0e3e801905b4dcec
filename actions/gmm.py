"""Gaussian-mixture target, the toy problem of the path-gradient papers (Vaitl et al. 2022, 2024).

p(x) = Σ_k w_k N(x; μ_k, σ_k² I) on R^D, action S(x) = −log p(x) (normalised, so ln Z = 0),
force ∇S(x) = Σ_k r_k(x) (x − μ_k)/σ_k², with responsibilities r_k = w_k N_k(x)/p(x).
Fields are ``x: (B, D)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["GaussianMixture", "ProductMixture"]


class _VectorTarget:
    """A density on R^D: fields ``x: (B, D)``; ``shape`` = ``field_shape`` = (D,)."""

    dim: int

    @property
    def field_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,)


class GaussianMixture(_VectorTarget):
    """Isotropic Gaussian mixture in ``dim`` dimensions.

    By default, ``n_components`` means are drawn uniformly from [−``spread``, ``spread``]^D with a fixed
    ``seed``, unit widths and equal weights (the paper's setup is a 2D mixture of well separated modes).

    Example:
        >>> gmm = GaussianMixture(dim=2, means=[[0.0, 0.0]], sigmas=[1.0])
        >>> float(gmm.action(torch.zeros(1, 2, dtype=torch.float64))[0]) == math.log(2 * math.pi)
        True
    """

    theory = "gmm"

    def __init__(self, dim: int = 2, n_components: int = 4, *, means: Sequence[Sequence[float]] | None = None,
                 sigmas: Sequence[float] | None = None, weights: Sequence[float] | None = None,
                 spread: float = 5.0, seed: int = 0) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        self.dim = int(dim)
        if means is None:
            g = torch.Generator().manual_seed(seed)
            means_t = (torch.rand(n_components, self.dim, generator=g, dtype=torch.float64) * 2 - 1) * spread
        else:
            means_t = torch.as_tensor(means, dtype=torch.float64)
            if means_t.dim() != 2 or means_t.shape[1] != self.dim:
                raise ValueError(f"means must have shape (K, {self.dim}), got {tuple(means_t.shape)}")
        k = means_t.shape[0]
        sig = torch.ones(k, dtype=torch.float64) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if sig.shape != (k,) or bool((sig <= 0).any()):
            raise ValueError(f"sigmas must be {k} positive numbers, got {sig.tolist()}")
        if w.shape != (k,) or bool((w <= 0).any()):
            raise ValueError(f"weights must be {k} positive numbers, got {w.tolist()}")
        self.means, self.sigmas, self.weights = means_t, sig, w / w.sum()

    @property
    def couplings(self) -> dict[str, float]:
        return {}

    def _log_components(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; μ_k, σ_k²I), ``(B, K)``."""
        mu, sig, w = (t.to(x) for t in (self.means, self.sigmas, self.weights))
        d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        return torch.log(w) - 0.5 * d2 / sig**2 - self.dim * (torch.log(sig) + 0.5 * math.log(2 * math.pi))

    def action(self, x: torch.Tensor) -> torch.Tensor:
        """S(x) = −log Σ_k w_k N(x; μ_k, σ_k² I), ``(B,)``."""
        return -torch.logsumexp(self._log_components(x), dim=-1)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """∇S(x) = Σ_k r_k(x)(x − μ_k)/σ_k², ``(B, D)``."""
        r = torch.softmax(self._log_components(x), dim=-1)
        mu, sig = self.means.to(x), self.sigmas.to(x)
        return ((r / sig**2)[:, :, None] * (x[:, None, :] - mu[None])).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Exact samples ``(n, D)`` (for tests and forward-KL data)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=self.means.device)
        return (self.means[k] + self.sigmas[k, None] * eps).to(dtype)


class ProductMixture(_VectorTarget):
    """The path-gradient paper's forward-KL target: a product of 1D two-component mixtures on R^D,

        p(x) = Π_i ½[N(x_i; +μ, σ²) + N(x_i; −μ, σ²)],

    so 2^D equal-weight modes at (±μ, …, ±μ) (Vaitl, Winkler, Richter, Kessel, ICLR 2024, arXiv 2403.15881:
    D = 6, μ = 1, σ = 0.5). Normalised: ln Z = 0 and S = −log p, with

        S(x) = −Σ_i [log cosh(μ x_i/σ²) − (x_i² + μ²)/(2σ²) − ½ log(2πσ²)],
        ∇S(x)_i = x_i/σ² − (μ/σ²) tanh(μ x_i/σ²).

    Exact moments: ⟨x_i⟩ = 0, ⟨x_i²⟩ = μ² + σ², ⟨x_i⁴⟩ = μ⁴ + 6μ²σ² + 3σ⁴. Fields are ``x: (B, D)``.
    """

    theory = "gmm"

    def __init__(self, dim: int = 6, mu: float = 1.0, sigma: float = 0.5) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        self.dim, self.mu, self.sigma = dim, float(mu), float(sigma)

    @property
    def couplings(self) -> dict[str, float]:
        return {"dim": float(self.dim), "mu": self.mu, "sigma": self.sigma}

    @property
    def n_modes(self) -> int:
        return 2 ** self.dim

    log_z = 0.0  # normalised density

    @property
    def entropy(self) -> float:
        """H = −∫ p log p = D · H₁ in nats, H₁ the entropy of one two-component coordinate, by quadrature
        (no closed form). A flow's forward KL is KL(p‖q) = −⟨log q⟩_p − H: the test NLL minus this."""
        from scipy import integrate

        def minus_p_log_p(x: float) -> float:
            x_t = torch.tensor([[x]], dtype=torch.float64)
            log_p = -float(ProductMixture(1, self.mu, self.sigma).action(x_t))
            return -math.exp(log_p) * log_p

        reach = abs(self.mu) + 12 * self.sigma
        pts = sorted({-abs(self.mu), abs(self.mu)})
        h1 = integrate.quad(minus_p_log_p, -reach, reach, points=pts, epsabs=1e-12, epsrel=1e-10, limit=200)[0]
        return self.dim * h1

    def action(self, x: torch.Tensor) -> torch.Tensor:
        """S(x) = −log p(x), ``(B,)``; log cosh written stably as |a| + log1p(e^{−2|a|}) − log 2."""
        s2 = self.sigma ** 2
        a = (self.mu / s2) * x
        log_cosh = a.abs() + torch.log1p(torch.exp(-2 * a.abs())) - math.log(2.0)
        per_site = log_cosh - (x ** 2 + self.mu ** 2) / (2 * s2) - 0.5 * math.log(2 * math.pi * s2)
        return -per_site.sum(-1)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """∇S(x) = x/σ² − (μ/σ²) tanh(μx/σ²), ``(B, D)``."""
        s2 = self.sigma ** 2
        return x / s2 - (self.mu / s2) * torch.tanh(self.mu * x / s2)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Exact samples ``(n, D)``: independent signs and Gaussian noise per coordinate."""
        device = generator.device if generator is not None else None  # (None: torch's default device)
        signs = torch.randint(0, 2, (n, self.dim), generator=generator, device=device).to(torch.float64) * 2 - 1
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        return (self.mu * signs + self.sigma * eps).to(dtype)
