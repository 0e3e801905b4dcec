"""Composed flows T = T_L ∘ … ∘ T_1 with a base density q₀: log q(x) = log q₀(z) − Σ_l log|det J_l|.

`Flow.forward_with_score` carries s_l = ∇ log q_l alongside sampling (Vaitl et al. 2024, Alg. 1),
`Flow.inverse_with_score` carries the pulled-back score of a target backwards (forward-KL fast path).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .base import Bijection, DomainError, FlowError, sum_sites

__all__ = ["StandardNormal", "VacuumMixture", "UniformAngles", "Flow", "FINITE_CHECK_MODES", "finite_checks",
           "set_finite_checks"]

FINITE_CHECK_MODES = ("auto", "always", "never")
_finite_checks = os.environ.get("LATTICEFLOW_FINITE_CHECKS", "auto")
if _finite_checks not in FINITE_CHECK_MODES:  # a typo must not switch the checks off silently
    raise ValueError(f"LATTICEFLOW_FINITE_CHECKS must be one of {', '.join(FINITE_CHECK_MODES)}, "
                     f"got {_finite_checks!r}")


def set_finite_checks(mode: str) -> str:
    """When `Flow.inverse` (and ``log_prob``, ``inverse_with_score``) rejects NaN/inf input with `DomainError`:
    ``auto`` (default) on CPU tensors only, where the test costs no device sync; ``always`` on every device
    (a debug mode: one host sync per call on an accelerator); ``never``. Returns the previous mode. Also
    set by the environment variable ``LATTICEFLOW_FINITE_CHECKS``."""
    global _finite_checks
    if mode not in FINITE_CHECK_MODES:
        raise ValueError(f"finite checks must be one of {', '.join(FINITE_CHECK_MODES)}, got {mode!r}")
    previous, _finite_checks = _finite_checks, mode
    return previous


@contextlib.contextmanager
def finite_checks(mode: str) -> Iterator[None]:
    """`set_finite_checks` inside a ``with`` block, restored after it."""
    previous = set_finite_checks(mode)
    try:
        yield
    finally:
        set_finite_checks(previous)


class _Base(nn.Module):
    def __init__(self, field_shape: Sequence[int]) -> None:
        super().__init__()
        self.field_shape = tuple(field_shape)
        self.register_buffer("_ref", torch.zeros(()))  # carries dtype and device

    def sample(self, sample_shape: Sequence[int] = (1,), generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, z: torch.Tensor) -> None:
        if tuple(z.shape[1:]) != self.field_shape:
            raise FlowError(f"field shape {tuple(z.shape[1:])} does not match the flow's {self.field_shape}")


class StandardNormal(_Base):
    """q₀(z) = Π N(z_x; 0, 1); log q₀ = −½ Σ z² − (D/2) ln 2π; score ∇ log q₀ = −z."""

    def sample(self, sample_shape=(1,), generator=None):
        return torch.randn(*sample_shape, *self.field_shape, generator=generator, dtype=self._ref.dtype, device=self._ref.device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return -0.5 * sum_sites(z * z) - 0.5 * math.log(2 * math.pi) * z[0].numel()

    def score(self, z: torch.Tensor) -> torch.Tensor:
        return -z.detach()


class VacuumMixture(_Base):
    """Two global vacua: q₀(z) = ½ Π_x N(z_x; +m, 1) + ½ Π_x N(z_x; −m, 1), one sign s = ±1 for the whole field.

    log q₀ = −½ Σ z² − ½ D m² + ln cosh(m Σ z) − (D/2) ln 2π; score ∇ log q₀ = −z + m tanh(m Σ z)·1.
    Z2-symmetric, so a Z2-equivariant flow on it stays exactly symmetric, while the flow only has to model
    the fluctuations around each vacuum, not the split into two (the broken phase of φ⁴; cf. the
    symmetrised mixtures of Nicoli et al., PRL 126 (2021) 032001). m = 0 is `StandardNormal`.
    """

    def __init__(self, field_shape: Sequence[int], shift: float) -> None:
        super().__init__(field_shape)
        shift = float(shift)
        if not (math.isfinite(shift) and shift >= 0):
            raise FlowError(f"VacuumMixture shift must be finite and >= 0, got {shift!r}")
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float64))  # .to(z.dtype) where used

    def sample(self, sample_shape=(1,), generator=None):
        ref = self._ref
        eps = torch.randn(*sample_shape, *self.field_shape, generator=generator, dtype=ref.dtype, device=ref.device)
        sign = torch.randint(0, 2, tuple(sample_shape), generator=generator, device=ref.device).to(ref.dtype) * 2 - 1
        return eps + (sign * self.shift.to(ref.dtype)).reshape(*sample_shape, *([1] * len(self.field_shape)))

    def _u(self, z: torch.Tensor) -> torch.Tensor:
        return self.shift.to(z.dtype) * sum_sites(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        # −½Σz² − ½Dm² + |u| = −½Σ(z − s m)² with s = sign(u): written so, float32 does not cancel large terms
        m = self.shift.to(z.dtype)
        n = math.prod(self.field_shape)
        u = self._u(z)
        s = torch.where(u < 0, -1.0, 1.0).to(z.dtype)  # s·u = |u|, but with the gradient of tanh at u = 0 too
        fluct = -0.5 * sum_sites((z - (s * m).reshape(-1, *([1] * len(self.field_shape)))) ** 2)
        return fluct + torch.log1p(torch.exp(-2 * s * u)) - math.log(2.0) - 0.5 * math.log(2 * math.pi) * n

    def score(self, z: torch.Tensor) -> torch.Tensor:
        z = z.detach()
        t = torch.tanh(self._u(z)).reshape(-1, *([1] * len(self.field_shape)))
        return -z + self.shift.to(z.dtype) * t


class UniformAngles(_Base):
    """Uniform link angles on (−π, π]: log q₀ = −D ln 2π, score 0."""

    def sample(self, sample_shape=(1,), generator=None):
        u = torch.rand(*sample_shape, *self.field_shape, generator=generator, dtype=self._ref.dtype, device=self._ref.device)
        return math.pi - 2 * math.pi * u  # (−π, π]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return torch.full((z.shape[0],), -math.log(2 * math.pi) * z[0].numel(), dtype=z.dtype, device=z.device)

    def score(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z).detach()


class Flow(nn.Module):
    """A base distribution and a sequence of bijections.

    ``forward(z) -> (x, logdet)``, ``inverse(x) -> (z, logdet_inv)``, ``sample(n) -> (x, log_q)``,
    ``log_prob(x)``, and the score versions for path gradients.
    """

    def __init__(self, base: _Base, layers: Sequence[Bijection]) -> None:
        super().__init__()
        self.base = base
        self.layers = nn.ModuleList(layers)

    @property
    def field_shape(self) -> tuple[int, ...]:
        return self.base.field_shape

    def _check(self, x: torch.Tensor) -> None:
        """Shape check always; the NaN/inf check as `set_finite_checks` says (no device sync by default)."""
        self.base._check(x)
        mode = _finite_checks
        if (mode == "always" or (mode == "auto" and x.device.type == "cpu")) and not torch.isfinite(x).all():
            raise DomainError("flow input contains NaN or inf")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.base._check(z)
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        x = z
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z = x
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x ~ q_θ and its exact log q_θ(x), each ``(n, …)`` / ``(n,)``."""
        z = self.base.sample((n,), generator=generator)
        x, logdet = self.forward(z)
        return x, self.base.log_prob(z) - logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q_θ(x) = log q₀(T⁻¹x) + log|det ∂T⁻¹/∂x|."""
        z, logdet_inv = self.inverse(x)
        return self.base.log_prob(z) + logdet_inv

    def marginal(self, action) -> tuple["Flow", object]:
        """(flow, target) for reverse-KL training in place of (self, ``action``): where the last layer draws its
        sites exactly from the target's conditional (``marginal_target``, e.g. `SiteConditional`), the flow
        without it, sharing its parameters, and the marginal of the other sites; otherwise (self, action)."""
        last = self.layers[-1] if len(self.layers) else None
        target = last.marginal_target(action) if hasattr(last, "marginal_target") else None
        if target is None:
            return self, action
        return Flow(self.base, list(self.layers)[:-1]), target

    def forward_with_score(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, log q(x), ∇ₓ log q(x)) with s₀ = ∇ log q₀(z), s_l = J_l^{−T}(s_{l−1} − ∇ log|det J_l|)."""
        self.base._check(z)
        score = self.base.score(z)
        log_q = self.base.log_prob(z)
        x = z
        for layer in self.layers:
            x, ld, score = layer.forward_with_score(x, score)
            log_q = log_q - ld
        return x, log_q, score

    def inverse_with_score(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, log|det ∂T⁻¹/∂x|, r_z): r is pulled back by r_w = J_lᵀ r_y + ∇_w log|det J_l|.

        Starting from r = ∇ₓ log p(x) = −∇S(x), r_z = ∇_z log p^♯(z) with p^♯(z) = p(T z)|det J_T(z)|.
        """
        self._check(x)
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z = x
        for layer in reversed(self.layers):
            z, ld, r = layer.inverse_with_score(z, r)
            logdet = logdet + ld
        return z, logdet, r
