"""FourierScaling: y = F⁻¹(e^{a(p)} F x) with an even log-scale a(p) = a(−p).

Each check is against an independent value: dense autograd Jacobians, a slow complex-FFT implementation,
finite differences, the exact free-field ln Z, and the closed-form Gaussian expectation of the action.
"""
import math

import numpy as np
import pytest
import torch

from actions import Phi4
from actions.exact import free_field_kernel, free_field_log_z
from actions.lattice import shift
from latticeflow.flows import AdditiveCoupling, AffineCoupling, Flow, FlowError, StandardNormal
from latticeflow.flows.fourier import FourierScaling
from latticeflow.gradients import forward_kl, reverse_kl

from .helpers import dense_jacobian, maxabs

F64 = torch.float64
SHAPES = [(4, 4), (5, 6), (3, 4, 5), (7,)]


def _neg_momentum(t: torch.Tensor) -> torch.Tensor:
    """t(−p) by explicit index arithmetic (independent of the layer's flip/roll)."""
    for dim, length in enumerate(t.shape):
        t = t.index_select(dim, torch.tensor([(-k) % length for k in range(length)]))
    return t


def random_layer(shape, seed=0, scale=0.5, dtype=F64) -> FourierScaling:
    """A layer with a random raw parameter (not even by itself: the layer must symmetrise it)."""
    layer = FourierScaling(shape, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.raw.add_(scale * torch.randn(layer.raw.shape, generator=g, dtype=F64).to(dtype))
    return layer


def randn(shape, n=3, seed=1, dtype=F64):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def slow_forward(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Complex fftn / ifftn over all lattice axes, no half-spectrum tricks; returns the complex result."""
    dims = tuple(range(1, x.dim()))
    return torch.fft.ifftn(torch.exp(a).to(torch.complex128) * torch.fft.fftn(x.to(torch.complex128), dim=dims), dim=dims)


# 1 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_both_directions(shape):
    layer = random_layer(shape)
    x = randn(shape)
    y, ld = layer(x)
    x_back, ld_inv = layer.inverse(y)
    assert maxabs(x_back - x) < 1e-12
    assert maxabs(ld + ld_inv) < 1e-12
    y2, _ = layer(layer.inverse(x)[0])
    assert maxabs(y2 - x) < 1e-12
    assert maxabs(y - x) > 1e-2  # not the identity


# 2 -----------------------------------------------------------------------------------------------
def test_log_scale_is_exactly_even_and_every_entry_is_trainable():
    layer = random_layer((4, 6))
    a = layer.log_scale
    assert torch.equal(a, _neg_momentum(a))
    assert maxabs(layer.raw - _neg_momentum(layer.raw)) > 1e-2  # the raw parameter itself is not even
    (grad,) = torch.autograd.grad((a * torch.randn(a.shape, dtype=F64)).sum(), layer.raw)
    assert (grad != 0).all()


def test_logdet_is_slogdet_of_the_dense_jacobian():
    layer = random_layer((4, 4), seed=3)
    x = randn((4, 4), n=1)
    jac = dense_jacobian(lambda v: layer(v)[0], x)
    sign, logabs = torch.linalg.slogdet(jac)
    ld = layer(x)[1].detach()
    assert float(sign) == 1.0
    assert abs(float(logabs - ld[0])) < 1e-12
    assert abs(float(ld[0] - layer.log_scale.detach().sum())) < 1e-14
    assert maxabs(jac - jac.T) < 1e-14  # a real symmetric circulant
    jac_inv = dense_jacobian(lambda v: layer.inverse(v)[0], x)
    assert maxabs(jac_inv @ jac - torch.eye(16, dtype=F64)) < 1e-12


def test_parameter_gradient_matches_finite_differences():
    """The θ-graph through rfftn/irfftn and the symmetrisation (gradcheck: central differences)."""
    shape = (4, 5)
    raw0 = random_layer(shape, seed=4).raw.detach().clone()
    x = randn(shape, n=2)

    def fn(raw):
        # the layer's computation with `raw` as a free input
        dims = (0, 1)
        neg = torch.roll(torch.flip(raw, dims), shifts=(1, 1), dims=dims)
        probe = FourierScaling(shape, dtype=F64)
        del probe.raw
        probe.raw = raw  # plain tensor attribute: forward uses it like the parameter
        y, ld = probe(x)
        inv, _ = probe.inverse(x)
        return y, ld, inv, 0.5 * (raw + neg)

    assert torch.autograd.gradcheck(fn, (raw0.requires_grad_(),), eps=1e-6, atol=1e-8)


# 3 -----------------------------------------------------------------------------------------------
def test_score_hooks_solve_the_jacobian_equations():
    shape = (4, 4)
    layer = random_layer(shape, seed=5)
    x = randn(shape, n=1, seed=6)
    g = randn(shape, n=1, seed=7)
    jac = dense_jacobian(lambda v: layer(v)[0], x)
    y, ld, g_new = layer.forward_with_score(x, g)
    assert not g_new.requires_grad
    assert y.requires_grad and ld.requires_grad
    ref = torch.linalg.solve(jac.T, g.flatten())  # ∇ logdet = 0
    assert maxabs(g_new.flatten() - ref) < 1e-12 * max(1.0, maxabs(ref))
    x2, ld_inv, r_new = layer.inverse_with_score(y.detach(), g)
    assert maxabs(x2 - x) < 1e-12 and abs(float((ld + ld_inv).detach())) < 1e-12
    jac_at_x2 = dense_jacobian(lambda v: layer(v)[0], x2.detach())
    assert maxabs(r_new.flatten() - jac_at_x2.T @ g.flatten()) < 1e-12 * max(1.0, maxabs(r_new))
    assert not r_new.requires_grad and x2.requires_grad


def _mixed_flow(shape, seed=0):
    """[FourierScaling, AdditiveCoupling ×2, AffineCoupling], randomised, float64."""
    torch.manual_seed(100 + seed)
    layers = [random_layer(shape, seed=seed, scale=0.3), AdditiveCoupling(shape, 0, hidden=(8,)),
              AffineCoupling(shape, 1, hidden=(8,)), AdditiveCoupling(shape, 1, hidden=(8,))]
    flow = Flow(StandardNormal(shape), layers).double()
    g = torch.Generator().manual_seed(200 + seed)
    with torch.no_grad():
        for layer in layers[1:]:
            for p in layer.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    return flow


@pytest.mark.parametrize("mixed", [False, True])
def test_flow_scores_match_autograd(mixed):
    shape = (4, 4)
    flow = _mixed_flow(shape) if mixed else Flow(StandardNormal(shape), [random_layer(shape, seed=8)]).double()
    z = randn(shape, n=3, seed=9)
    x, log_q, score = flow.forward_with_score(z)
    xd = x.detach().requires_grad_()
    lp = flow.log_prob(xd)
    (grad,) = torch.autograd.grad(lp.sum(), xd)
    assert maxabs(log_q - lp) < 1e-10
    assert maxabs(grad) > 1e-2
    assert maxabs(score - grad) < 1e-10 * max(1.0, maxabs(grad))
    # pulled-back target score: r_z = ∇_z[−S(T z) + log|det J_T(z)|]
    action = Phi4(shape, kappa=0.3, lam=0.02)
    zz, _, r_z = flow.inverse_with_score(x.detach(), -action.force(x.detach()))
    z0 = zz.detach().requires_grad_()
    x_of_z, logdet = flow(z0)
    (ref,) = torch.autograd.grad((-action.action(x_of_z) + logdet).sum(), z0)
    assert maxabs(zz - z) < 1e-10
    assert maxabs(r_z - ref) < 1e-10 * max(1.0, maxabs(ref))


# 4 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_output_is_real_and_equals_a_complex_fftn_implementation(shape):
    layer = random_layer(shape, seed=10)
    x = randn(shape, seed=11)
    y, _ = layer(x)
    assert y.dtype == F64 and y.shape == x.shape
    ref = slow_forward(x, layer.log_scale.detach())
    assert maxabs(ref.imag) < 1e-13  # the multiplier is Hermitian-even, so the exact result is real
    assert maxabs(y - ref.real) < 1e-12
    inv_ref = slow_forward(x, -layer.log_scale.detach())
    assert maxabs(layer.inverse(x)[0] - inv_ref.real) < 1e-12


# 5 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 4), (3, 4, 5)])
def test_odd_and_translation_equivariant(shape):
    layer = random_layer(shape, seed=12)
    x = randn(shape, seed=13)
    y, ld = layer(x)
    y_neg, ld_neg = layer(-x)
    assert maxabs(y_neg + y) < 1e-12 and maxabs(ld_neg - ld) == 0
    nd = len(shape)
    for mu in range(nd):
        for step in (1, 2):
            assert maxabs(layer(shift(x, mu, step, nd))[0] - shift(y, mu, step, nd)) < 1e-12
    both = torch.roll(x, shifts=(1,) * nd, dims=tuple(range(1, nd + 1)))
    assert maxabs(layer(both)[0] - torch.roll(y, shifts=(1,) * nd, dims=tuple(range(1, nd + 1)))) < 1e-12


def _former_quadratic_kernel(shape, kappa, lam):
    """The kernel latticeflow.flows.fourier computed before the theory offered it: A(p) from |n_μ| (exactly
    even), A(p) = 2(1 − 2λ) − 4κ Σ_μ cos(2π min(n_μ, L_μ − n_μ)/L_μ)."""
    total = np.zeros(shape)
    for mu, length in enumerate(shape):
        k = np.arange(length)
        n = np.minimum(k, length - k)
        total = total + np.cos(2 * np.pi * n / length).reshape([-1 if nu == mu else 1 for nu in range(len(shape))])
    return 2.0 * (1.0 - 2.0 * lam) - 4.0 * kappa * total


@pytest.mark.parametrize("shape,kappa,lam", [((4, 4), 0.3, 0.022), ((5, 6), 0.2, 0.0), ((3, 4, 5), 0.1, 0.5),
                                             ((7,), 0.4, 0.1), ((2, 2, 2, 4), 0.1, 0.02)])
def test_theory_quadratic_kernel_equals_the_former_flow_kernel(shape, kappa, lam):
    """`Phi4.quadratic_kernel` (which the Fourier start now asks for) is the kernel the flows computed themselves."""
    got = Phi4(shape, kappa=kappa, lam=lam).quadratic_kernel()
    assert got.shape == shape and got.dtype == np.float64
    assert np.abs(got - _former_quadratic_kernel(shape, kappa, lam)).max() < 1e-14


def test_from_action_asks_the_theory_in_3d():
    """d = 3: init="action" is −½ log of the theory's Hartree kernel, init="quadratic" of its clipped A(p)."""
    action = Phi4((4, 2, 6), kappa=0.2, lam=0.02)
    layer = FourierScaling.from_action(action, dtype=F64)
    expected = -0.5 * np.log(action.gaussian_vacuum(False).kernel)
    assert maxabs(layer.log_scale - torch.from_numpy(expected)) < 1e-14
    quad = FourierScaling.from_action(action, init="quadratic", dtype=F64)
    assert maxabs(quad.log_scale - torch.from_numpy(-0.5 * np.log(np.maximum(action.quadratic_kernel(), 0.1)))) < 1e-14
    with pytest.raises(FlowError, match="quadratic_kernel"):
        FourierScaling.from_action(object())


# 6 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["action", "quadratic"])
def test_free_field_is_sampled_exactly(init):
    """κ = 0.2, λ = 0 on 8×8: log w = −S − log q is the same for every sample and equals ln Z."""
    shape, kappa = (8, 8), 0.2
    action = Phi4(shape, kappa=kappa, lam=0.0)
    layer = FourierScaling.from_action(action, init=init, dtype=F64)
    kernel = torch.from_numpy(free_field_kernel(shape, kappa))
    assert maxabs(layer.log_scale + 0.5 * torch.log(kernel)) < 1e-14
    flow = Flow(StandardNormal(shape), [layer]).double()
    x, log_q = flow.sample(64, generator=torch.Generator().manual_seed(14))
    log_w = (-action.action(x) - log_q).detach()
    log_z = free_field_log_z(shape, kappa)
    assert float(log_w.max() - log_w.min()) < 1e-9 * abs(log_z)
    assert abs(float(log_w.mean()) - log_z) < 1e-9 * abs(log_z)
    w = torch.exp(log_w - log_w.max())
    assert abs(float(w.sum() ** 2 / (w * w).sum() / len(w)) - 1.0) < 1e-12  # reverse ESS = 1
    loss = reverse_kl(flow, action, flow.base.sample((16,)), "standard")
    assert abs(float(loss.detach()) + log_z) < 1e-9 * abs(log_z)  # KL = loss + ln Z = 0


def _analytic_reverse_kl(layer: FourierScaling, action: Phi4) -> torch.Tensor:
    """E_{z~N(0,1)}[log q(x) + S(x)] for x = T z in closed form from the real-space covariance
    C = J Jᵀ (J from pushing the unit fields through the layer) and Wick's theorem, ⟨φ⁴⟩ = 3C_xx²."""
    shape, nd = action.shape, action.ndim
    vol = int(np.prod(shape))
    basis = torch.eye(vol, dtype=F64).view(vol, *shape)
    cols, _ = layer(basis)  # cols[i] = J e_i
    c = cols.flatten(1).T @ cols.flatten(1)  # C = J Jᵀ (V, V)
    idx = torch.arange(vol).view(shape)
    hop = sum(c[idx.flatten(), shift(idx.unsqueeze(0), mu, 1, nd).flatten()].sum() for mu in range(nd))
    diag = torch.diagonal(c)
    e_s = -2 * action.kappa * hop + (1 - 2 * action.lam) * diag.sum() + 3 * action.lam * (diag * diag).sum()
    e_log_q = -0.5 * vol * (1 + math.log(2 * math.pi)) - layer.log_scale.sum()
    return e_log_q + e_s


@pytest.mark.parametrize("kappa,lam", [(0.3, 0.022), (0.25, 0.5), (0.2, 0.02)])
def test_action_init_minimises_the_reverse_kl_over_gaussians(kappa, lam):
    """init="action" (Gaussian variational / Hartree) is a stationary point of the exact reverse KL of
    the one-layer flow, also in the broken phase (A(0) < 0); the clipped quadratic init is not."""
    shape = (4, 4)
    action = Phi4(shape, kappa=kappa, lam=lam)
    layer = FourierScaling.from_action(action, dtype=F64)
    assert torch.isfinite(layer.log_scale).all()
    (grad,) = torch.autograd.grad(_analytic_reverse_kl(layer, action), layer.raw)
    assert maxabs(grad) < 1e-10
    quad = FourierScaling.from_action(action, init="quadratic", dtype=F64)
    (grad_q,) = torch.autograd.grad(_analytic_reverse_kl(quad, action), quad.raw)
    assert maxabs(grad_q) > 1e-3


def test_quadratic_init_clips_at_the_floor_and_identity_init_is_zero():
    action = Phi4((4, 4), kappa=0.25, lam=0.5)  # A(p) = −Σ_μ cos p_μ: A(0) = −2 … A(π, π) = 2
    layer = FourierScaling.from_action(action, init="quadratic", dtype=F64)
    n = torch.arange(4)
    cos_sum = torch.cos(2 * math.pi * n / 4).view(4, 1) + torch.cos(2 * math.pi * n / 4).view(1, 4)
    expected = -0.5 * torch.log(torch.clamp(-cos_sum.to(F64), min=0.1))
    assert maxabs(layer.log_scale - expected) < 1e-14
    assert abs(float(layer.log_scale.detach()[0, 0]) - 0.5 * math.log(10)) < 1e-14
    custom = FourierScaling.from_action(action, init="quadratic", floor=0.5, dtype=F64)
    assert abs(float(custom.log_scale.detach()[0, 0]) - 0.5 * math.log(2)) < 1e-14
    assert maxabs(FourierScaling.from_action(action, init="identity", dtype=F64).log_scale) == 0
    with pytest.raises(FlowError):
        FourierScaling.from_action(action, init="nonsense")
    with pytest.raises(FlowError):
        FourierScaling((4, 4))(torch.zeros(2, 4, 5))


# 7 -----------------------------------------------------------------------------------------------
def _grads(flow):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in flow.parameters()]


def _assert_same_grads(flow, loss_a, loss_b):
    flow.zero_grad()
    loss_a.backward()
    ga = _grads(flow)
    flow.zero_grad()
    loss_b.backward()
    gb = _grads(flow)
    scale = max(maxabs(g) for g in ga)
    assert scale > 1e-3
    for a, b in zip(ga, gb):
        assert maxabs(a - b) < 1e-10 * scale
    assert maxabs(ga[0]) > 1e-3  # the Fourier layer's parameter gets a gradient


def test_fast_path_equals_path_inverse_and_gdreg():
    shape = (4, 4)
    flow = _mixed_flow(shape, seed=1)
    action = Phi4(shape, kappa=0.3, lam=0.02)
    z = randn(shape, n=8, seed=15)
    fast, slow = reverse_kl(flow, action, z, "fast_path"), reverse_kl(flow, action, z, "path_inverse")
    assert abs(float((fast - slow).detach())) < 1e-10 * max(1.0, abs(float(fast.detach())))
    _assert_same_grads(flow, fast, slow)
    x = flow.sample(8, generator=torch.Generator().manual_seed(16))[0].detach()
    fast, slow = forward_kl(flow, action, x, "fast_path"), forward_kl(flow, action, x, "gdreg")
    assert abs(float((fast - slow).detach())) < 1e-10 * max(1.0, abs(float(fast.detach())))
    _assert_same_grads(flow, fast, slow)


# 8 -----------------------------------------------------------------------------------------------
def _float32_lane(device):
    shape = (8, 8)
    action = Phi4(shape, kappa=0.3, lam=0.022)
    l64 = FourierScaling.from_action(action, dtype=F64)
    with torch.no_grad():
        l64.raw.add_(0.2 * torch.randn(shape, generator=torch.Generator().manual_seed(17), dtype=F64))
    l32 = FourierScaling(shape, l64.raw.detach(), dtype=torch.float32, device=device)
    assert l32.raw.dtype == torch.float32 and l32.raw.device.type == torch.device(device).type
    x64 = randn(shape, n=4, seed=18)
    x32 = x64.to(device=device, dtype=torch.float32)
    y32, ld32, g32 = l32.forward_with_score(x32, -x32)
    y64, ld64, g64 = l64.forward_with_score(x64, -x64)
    assert y32.dtype == ld32.dtype == g32.dtype == torch.float32
    assert y32.device.type == torch.device(device).type
    for a, b in ((y32, y64), (g32, g64), (l32.inverse(x32)[0], l64.inverse(x64)[0])):
        assert maxabs(a.cpu().double() - b) < 1e-5 * max(1.0, maxabs(b))
    assert abs(float(ld32[0].detach()) - float(ld64[0].detach())) < 1e-5 * max(1.0, abs(float(ld64[0].detach())))
    x_back, _ = l32.inverse(y32)
    assert maxabs(x_back - x32) < 1e-5
    # module-level dtype conversion works as usual
    assert l64.float().raw.dtype == torch.float32


def test_float32_matches_float64():
    _float32_lane("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float32_on_cuda_matches_float64():
    _float32_lane("cuda")
