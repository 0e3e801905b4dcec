"""Self-normalizing linear layers (Keller, Peters, Jaini, Hoogeboom, Forré, Welling, ICML 2021) on lattice fields.

A layer applies y = W h: `SelfNormDense` mixes all D sites, `SelfNormConv` is a periodic convolution
(C channels, k × k kernel). The exact gradient of log|det W| is W⁻ᵀ, an O(D³) solve per step. With
``gradient="self_normalized"`` the backward pass uses a learned inverse R ≈ W⁻¹ instead (O(D²)):

    ∂L/∂W = δ_yᵀ h + c Rᵀ,      ∂L/∂R = −δ_hᵀ y − c Wᵀ,      c = ∂L/∂log|det W|,

the second being the exact gradient of the same loss written in terms of R (W = R⁻¹, dW = −W dR W,
with W⁻¹ replaced by R) — the "mirrored" update of the inverse weights. The reconstruction loss
ρ = mean_b ‖h_b − R W h_b‖² on the detached input h keeps R ≈ W⁻¹; the `Trainer` adds λ ρ
(`collect_reconstruction`). Its gradients are fused into the same backward (6 products of size B·D²
per layer and step, no solve). With R = W⁻¹ the W-gradient is exactly the exact one.

Everything that is not a training gradient is exact and never uses R: log|det W| by LU (dense) or by
the FFT of the circulant kernel (conv, log|det| = Σ_p log|det Ŵ(p)|), the inverse by LU solve / FFT
solve. So log q(x), importance weights and Metropolis tests stay exact. During self-normalized training
the *value* of log|det W| of a dense layer is tracked to first order, ℓ ← ℓ + tr(R ΔW) after each
update, and recomputed exactly every ``refresh`` updates (25) (it only enters reported metrics).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from .base import Bijection, FlowError
from .conditioners import circular_pad

__all__ = ["SelfNormDense", "SelfNormConv", "SelfNormalizing", "OddPower", "collect_reconstruction",
           "circulant_kernel_fft", "self_normalized_training", "GRADIENTS"]

GRADIENTS = ("self_normalized", "exact")
_IN_TRAINING_STEP = [False]


@contextlib.contextmanager
def self_normalized_training(enabled: bool = True):
    """Inside (the `Trainer` wraps each step in it), layers with ``gradient="self_normalized"`` use the SNF
    backward, the tracked log-det value and record reconstruction losses. Everywhere else every layer is
    exact (log-det by LU / FFT, exact autograd), so no log q, sample or weight ever depends on R."""
    previous = _IN_TRAINING_STEP[0]
    _IN_TRAINING_STEP[0] = enabled
    try:
        yield
    finally:
        _IN_TRAINING_STEP[0] = previous


class _SelfNormLinear(torch.autograd.Function):
    """(y, logdet, ρ) = (W h, log|det W| per sample, mean_b ‖h − R W h‖²) with the SNF backward."""

    @staticmethod
    def forward(ctx, h, W, R, ld, layer):
        y = layer._op(h, W)
        e = h - layer._op_r(y, R)
        rec = (e * e).flatten(1).sum(1).mean()
        ctx.save_for_backward(h, y, e, W, R)
        ctx.layer = layer
        return y, ld.detach().expand(h.shape[0]).clone(), rec

    @staticmethod
    def backward(ctx, g_y, g_ld, g_rec):
        h, y, e, W, R = ctx.saved_tensors
        layer = ctx.layer
        g_y = torch.zeros_like(y) if g_y is None else g_y
        c = float(g_ld.sum()) if g_ld is not None else 0.0  # one sync per layer: addmm takes a Python beta
        a = 2.0 * g_rec / h.shape[0] if g_rec is not None else 0.0
        g_h = layer._op_adjoint(g_y, W)
        g_W = layer._grad_w(h, g_y - a * layer._op_adjoint_r(e, R), R, c * layer.scale)
        g_R = layer._grad_r(y, g_h + a * e, W, -c * layer.scale)
        return (g_h if ctx.needs_input_grad[0] else None), g_W, g_R, None, None


class SelfNormalizing(Bijection):
    """A linear bijection y = W h with learned inverse weights R (see the module docstring).

    ``inverted=False``: the flow's forward direction (z → x, sampling; reverse KL) applies W;
    ``inverted=True``: the inverse direction (x → z, density; forward KL / maximum likelihood) applies W,
    and sampling solves W h = y exactly. The direction that applies W is the one that trains at O(D²).
    """

    scale: float = 1.0

    def __init__(self, weight: torch.Tensor, *, gradient: str = "self_normalized", inverted: bool = False,
                 refresh: int = 25) -> None:
        super().__init__()
        if gradient not in GRADIENTS:
            raise FlowError(f"flow.gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
        self.gradient, self.inverted, self.refresh = gradient, bool(inverted), int(refresh)
        self.weight = nn.Parameter(weight.clone())
        self.inverse_weight = nn.Parameter(weight.clone())  # the initial W is orthogonal-like: R = W = I
        self.register_buffer("_ld_value", torch.zeros(()))
        self.register_buffer("_n_updates", torch.tensor(-1))  # −1: not yet computed
        self._pending: list[torch.Tensor] = []
        self._cache: dict | None = None

    # -- operator-specific pieces (dense / conv) -----------------------------------------------------
    def _op(self, h: torch.Tensor, K: torch.Tensor) -> torch.Tensor: raise NotImplementedError
    def _op_adjoint(self, g: torch.Tensor, K: torch.Tensor) -> torch.Tensor: raise NotImplementedError
    def _op_weight_grad(self, inp: torch.Tensor, g: torch.Tensor) -> torch.Tensor: raise NotImplementedError
    def _op_flip_t(self, K: torch.Tensor) -> torch.Tensor: raise NotImplementedError

    def _op_r(self, y: torch.Tensor, R: torch.Tensor) -> torch.Tensor: return self._op(y, R)  # R y
    def _op_adjoint_r(self, e: torch.Tensor, R: torch.Tensor) -> torch.Tensor: return self._op_adjoint(e, R)

    def _grad_w(self, h, g, R, beta: float) -> torch.Tensor:
        """∂L/∂W = δ_yᵀ h + β Rᵀ in the layout of ``weight`` (β = c · scale)."""
        return self._op_weight_grad(h, g) + beta * self._op_flip_t(R)

    def _grad_r(self, y, g, W, beta: float) -> torch.Tensor:
        """∂L/∂R = −gᵀ y + β Wᵀ in the layout of ``inverse_weight`` (β = −c · scale)."""
        return beta * self._op_flip_t(W) - self._op_weight_grad(y, g)
    def exact_logdet(self) -> torch.Tensor: raise NotImplementedError  # log|det W|, differentiable
    def _solve(self, y: torch.Tensor) -> torch.Tensor: raise NotImplementedError  # W⁻¹ y, exact
    def _to_op(self, x: torch.Tensor) -> torch.Tensor: return x  # field ↔ operator layout
    def _from_op(self, h: torch.Tensor, like: torch.Tensor) -> torch.Tensor: return h

    # -- log-det values ---------------------------------------------------------------------------------
    def _cached(self, name: str, compute):
        """``compute()`` under no_grad, cached while W holds the same values (an O(D²) comparison, so
        in-place updates that bypass autograd's version counter — fused optimisers, ``.data`` — are seen)."""
        w = self.weight.detach()
        ref = self._cache.get("weight") if self._cache else None
        if ref is None or ref.shape != w.shape or ref.dtype != w.dtype or ref.device != w.device or not torch.equal(ref, w):
            self._cache = {"weight": w.clone()}
        if name not in self._cache:
            with torch.no_grad():
                self._cache[name] = compute()
        return self._cache[name]

    def logdet_value(self) -> torch.Tensor:
        """Exact log|det W| without gradient, cached until W changes."""
        return self._cached("logdet", lambda: self.exact_logdet().detach())

    def _tracked_logdet(self) -> torch.Tensor:
        """The value used during self-normalized training: exact every ``refresh`` updates (25), else ℓ + tr(R ΔW)."""
        return self.logdet_value()

    # -- the linear map in both directions -----------------------------------------------------------------
    def _apply_w(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._to_op(x)
        if (self.gradient == "self_normalized" and _IN_TRAINING_STEP[0] and torch.is_grad_enabled()
                and self.weight.requires_grad):
            y, ld, rec = _SelfNormLinear.apply(h, self.weight, self.inverse_weight, self._tracked_logdet(), self)
            if len(self._pending) > 16:  # not collected by a trainer: keep memory bounded
                self._pending.pop(0)
            self._pending.append(rec)
        else:
            y = self._op(h, self.weight)
            ld = self._exact_ld(x.shape[0])
        return self._from_op(y, x), ld

    def _solve_w(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._solve(self._to_op(y))
        return self._from_op(h, y), -self._exact_ld(y.shape[0])

    def _exact_ld(self, n: int) -> torch.Tensor:
        """Exact log|det W| per sample: differentiable under autograd, cached otherwise."""
        return (self.exact_logdet() if torch.is_grad_enabled() else self.logdet_value()).expand(n)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._solve_w(x) if self.inverted else self._apply_w(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._apply_w(y) if self.inverted else self._solve_w(y)

    def pop_reconstruction(self) -> torch.Tensor | None:
        """Σ of the reconstruction losses of the forward passes since the last call (with their graph)."""
        terms, self._pending = self._pending, []
        return sum(terms) if terms else None

    @torch.no_grad()
    def reconstruction_error(self, h: torch.Tensor) -> float:
        """mean_b ‖h − R W h‖² / mean_b ‖h‖² on field-shaped ``h`` (0 when R = W⁻¹)."""
        op = self._to_op(h)
        e = op - self._op_r(self._op(op, self.weight), self.inverse_weight)
        return float((e * e).sum() / (op * op).sum().clamp_min(torch.finfo(op.dtype).tiny))


def collect_reconstruction(flow: nn.Module) -> torch.Tensor | None:
    """Σ over the self-normalizing layers of ``flow`` of their pending reconstruction losses (None if none)."""
    terms = [t for m in flow.modules() if isinstance(m, SelfNormalizing) for t in [m.pop_reconstruction()] if t is not None]
    return sum(terms) if terms else None


class SelfNormDense(SelfNormalizing):
    """y = W h on the flattened field (all D sites), W and R of shape D × D, initialised to the identity.

    Stored so that every O(D²) step reads memory contiguously: ``weight`` holds Wᵀ (y = h @ weight for
    batch rows h), ``inverse_weight`` holds R (h ≈ y @ Rᵀ); then the SNF terms c Rᵀ, c Wᵀ and tr(R ΔW)
    need no transposed copies. log|det W| by LU (slogdet), O(D³); its exact gradient W⁻ᵀ is what
    ``gradient="self_normalized"`` avoids.
    """

    def __init__(self, field_shape: Sequence[int], *, gradient: str = "self_normalized", inverted: bool = False,
                 refresh: int = 25) -> None:
        self.field_shape = tuple(field_shape)
        d = int(torch.Size(self.field_shape).numel())
        super().__init__(torch.eye(d), gradient=gradient, inverted=inverted, refresh=refresh)
        self.register_buffer("_weight_ref", torch.eye(d))

    def _to_op(self, x): return x.flatten(1)
    def _from_op(self, h, like): return h.view(like.shape)
    def _op(self, h, A): return h @ A
    def _op_adjoint(self, g, A): return g @ A.T
    def _op_r(self, y, R): return y @ R.T
    def _op_adjoint_r(self, e, R): return e @ R
    def _grad_w(self, h, g, R, beta): return torch.addmm(R, h.T, g, beta=beta)  # hᵀ δ + β R (= (δᵀh + β Rᵀ)ᵀ)
    def _grad_r(self, y, g, A, beta): return torch.addmm(A, g.T, y, beta=beta, alpha=-1.0)  # −gᵀ y + β Wᵀ

    def exact_logdet(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight).logabsdet

    def _solve(self, y):  # h Wᵀ = y
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return torch.linalg.solve(self.weight, y, left=False)
        lu, piv = self._cached("lu", lambda: torch.linalg.lu_factor(self.weight))
        return torch.linalg.lu_solve(lu, piv, y, left=False)

    def _tracked_logdet(self) -> torch.Tensor:
        with torch.no_grad():
            W = self.weight
            n = int(self._n_updates)
            dW = W - self._weight_ref
            changed = bool(dW.any())
            if n >= 0 and changed:
                n += 1  # W was updated since the last call
            if n < 0 or n >= self.refresh:  # exact after every `refresh` updates
                self._ld_value.copy_(self.logdet_value())
                n = 0
            elif changed:
                self._ld_value.add_((self.inverse_weight * dW).sum())  # tr(R ΔW) = Σ R ∘ ΔWᵀ, weight = Wᵀ
            self._weight_ref.copy_(W)
            self._n_updates.fill_(n)
            return self._ld_value.clone()


def circulant_kernel_fft(kernel: torch.Tensor, lattice: Sequence[int]) -> torch.Tensor:
    """Ŵ(p) of the periodic correlation y_o(x) = Σ_{i,δ} w[o,i,δ] h_i(x+δ): ``(L0, L1, C_out, C_in)`` complex.

    ŷ(p) = Ŵ(p) ĥ(p) with torch's FFT convention, Ŵ(p) = Σ_δ w[·,·,δ] e^{i p·δ}.
    """
    c_out, c_in, k0, k1 = kernel.shape
    l0, l1 = lattice
    r0 = (-(torch.arange(k0, device=kernel.device) - k0 // 2)) % l0
    r1 = (-(torch.arange(k1, device=kernel.device) - k1 // 2)) % l1
    flat = (r0[:, None] * l1 + r1[None, :]).flatten()
    full = kernel.new_zeros(l0 * l1, c_out, c_in).index_add(0, flat, kernel.permute(2, 3, 0, 1).reshape(k0 * k1, c_out, c_in))
    return torch.fft.fft2(full.view(l0, l1, c_out, c_in), dim=(0, 1))


class SelfNormConv(SelfNormalizing):
    """y = w ⋆ h, a periodic k × k convolution mixing C channels (C_in = C_out); R is a k × k convolution too.

    ``field_shape`` (L0, L1) or (C, L0, L1); ``block = 2`` first regroups each 2 × 2 block into channels
    (space-to-depth, a permutation: log-det 0), giving 4C channels on an (L0/2, L1/2) lattice.
    log|det W| = Σ_p log|det Ŵ(p)| (FFT of the kernel), exact and O(V C³ + V log V C²).
    """

    def __init__(self, field_shape: Sequence[int], *, kernel_size: int = 3, block: int = 1,
                 gradient: str = "self_normalized", inverted: bool = False, refresh: int = 25) -> None:
        self.field_shape = tuple(field_shape)
        lattice = self.field_shape[-2:]
        channels = self.field_shape[0] if len(self.field_shape) == 3 else 1
        if len(self.field_shape) not in (2, 3):
            raise FlowError(f"SelfNormConv needs a 2D field (L0, L1) or (C, L0, L1), got {list(field_shape)}")
        if block < 1 or any(s % block for s in lattice):
            raise FlowError(f"flow.block {block} must divide the lattice extents {list(lattice)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise FlowError(f"flow.kernel_size must be an odd positive integer, got {kernel_size!r}")
        self.block = block
        self.lattice = (lattice[0] // block, lattice[1] // block)
        self.channels = channels * block * block
        if kernel_size > min(self.lattice):  # wrapped offsets would alias in the R-based log-det gradient
            raise FlowError(f"flow.kernel_size {kernel_size} is larger than the {list(self.lattice)} lattice of the layer")
        w = torch.zeros(self.channels, self.channels, kernel_size, kernel_size)
        w[:, :, kernel_size // 2, kernel_size // 2] = torch.eye(self.channels)
        super().__init__(w, gradient=gradient, inverted=inverted, refresh=refresh)
        self.scale = float(self.lattice[0] * self.lattice[1])
        self.pad = kernel_size // 2

    def _to_op(self, x):
        b, c, (l0, l1), k = x.shape[0], self.channels // self.block ** 2, self.field_shape[-2:], self.block
        x = x.reshape(b, c, l0 // k, k, l1 // k, k)
        return x.permute(0, 1, 3, 5, 2, 4).reshape(b, self.channels, l0 // k, l1 // k)

    def _from_op(self, h, like):
        b, k = h.shape[0], self.block
        c = self.channels // k ** 2
        h = h.reshape(b, c, k, k, *self.lattice).permute(0, 1, 4, 2, 5, 3)
        return h.reshape(like.shape)

    def _op(self, h, K):
        return torch.nn.functional.conv2d(circular_pad(h, self.pad), K)

    def _op_adjoint(self, g, K):
        return torch.nn.functional.conv2d(circular_pad(g, self.pad), self._op_flip_t(K))

    def _op_weight_grad(self, inp, g):
        return torch.nn.grad.conv2d_weight(circular_pad(inp, self.pad), self.weight.shape, g)

    def _op_flip_t(self, K):
        return K.transpose(0, 1).flip(-2, -1)

    def kernel_fft(self) -> torch.Tensor:
        return circulant_kernel_fft(self.weight, self.lattice)

    def exact_logdet(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.kernel_fft()).logabsdet.sum()

    def _solve(self, y):
        w_hat = self.kernel_fft()
        y_hat = torch.fft.fft2(y).permute(0, 2, 3, 1).unsqueeze(-1)  # (B, L0, L1, C, 1)
        h_hat = torch.linalg.solve(w_hat, y_hat).squeeze(-1).permute(0, 3, 1, 2)
        return torch.fft.ifft2(h_hat).real


class OddPower(Bijection):
    """Elementwise odd bijection y = sgn(x) ((1 + |x|)^p − 1), p = e^a (one learned a per layer, init 0).

    Monotone with closed-form inverse x = sgn(y) ((1 + |y|)^{1/p} − 1); log|det| = Σ_x [ln p + (p − 1) ln(1 + |x|)].
    p > 1 widens the tails, p < 1 narrows them; odd, so Z2-symmetric flows stay symmetric.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_power = nn.Parameter(torch.zeros(()))

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.exp(self.log_power)
        return (self.log_power + (p - 1) * torch.log1p(x.abs())).flatten(1).sum(1)

    def forward(self, x):
        p = torch.exp(self.log_power)
        y = torch.sign(x) * torch.expm1(p * torch.log1p(x.abs()))
        return y, self._logdet(x)

    def inverse(self, y):
        p = torch.exp(self.log_power)
        x = torch.sign(y) * torch.expm1(torch.log1p(y.abs()) / p)
        return x, -self._logdet(x)
