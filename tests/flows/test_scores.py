"""Score hooks of the fast path gradient, checked against autograd and dense Jacobians, and the
implicit (bisection) inverse of the NCP coupling against finite differences (gradcheck)."""
import math

import pytest
import torch
from torch.autograd import gradcheck

from latticeflow.flows import NCPCoupling, ncp_inverse, ncp_mixture

from .helpers import ALL, F64, base_sample, dense_jacobian, field_distance, is_u1, make_flow, maxabs


def _score_tol(name):
    # the dilated colour flow's random start has scores of ~10⁵ in steep spline tails, where rounding is amplified:
    # its relative score error is 10⁻¹¹–2·10⁻¹⁰ depending on the convolution kernel's summation order
    return 1e-9 if is_u1(name) or name.endswith("colours-dil-cnn") else 1e-10


@pytest.mark.parametrize("name", ALL)
def test_forward_with_score_is_the_autograd_score_of_log_q(name):
    """forward_with_score(z) = (x, log q(x), ∇ₓ log q(x)), ∇ₓ log q by autograd through the inverse."""
    flow, _ = make_flow(name)
    z = base_sample(flow, 3)
    x, log_q, score = flow.forward_with_score(z)
    x_ref, logdet = flow(z)
    assert field_distance(name, x, x_ref) < 1e-12
    assert maxabs(log_q - (flow.base.log_prob(z) - logdet)) < 1e-10
    x = x.detach().requires_grad_()
    lp = flow.log_prob(x)
    (grad,) = torch.autograd.grad(lp.sum(), x)
    assert maxabs(log_q - lp) < 1e-10
    assert maxabs(grad) > 1e-2  # a non-trivial score
    assert maxabs(score - grad) < _score_tol(name) * max(1.0, maxabs(grad))


@pytest.mark.parametrize("name", ALL)
def test_inverse_with_score_is_the_score_of_the_pulled_back_target(name):
    """inverse_with_score(x, −∇S(x)) returns r_z = ∇_z[−S(T z) + log|det J_T(z)|] at z = T⁻¹(x)."""
    flow, action = make_flow(name)
    x, _ = flow.sample(3, generator=torch.Generator().manual_seed(12))
    x = x.detach()
    z, logdet_inv, r_z = flow.inverse_with_score(x, -action.force(x))
    z_ref, logdet_inv_ref = flow.inverse(x)
    assert field_distance(name, z, z_ref) < 1e-10
    assert maxabs(logdet_inv - logdet_inv_ref) < 1e-10
    z0 = z.detach().requires_grad_()
    x_of_z, logdet = flow(z0)
    (grad,) = torch.autograd.grad((-action.action(x_of_z) + logdet).sum(), z0)
    assert maxabs(grad) > 1e-2
    assert maxabs(r_z - grad) < _score_tol(name) * max(1.0, maxabs(grad))


@pytest.mark.parametrize("name", ALL)
def test_each_layer_score_hooks_solve_the_jacobian_equations(name):
    """Per layer T_l: forward g' = J^{−T}(g − ∇logdet) and inverse r' = Jᵀ r + ∇logdet, with an
    arbitrary g / r, against a dense Jacobian of one sample. U(1): 8 layers (every stripe offset)."""
    flow, _ = make_flow(name, **({"n_layers": 8} if is_u1(name) else {}))
    gen = torch.Generator().manual_seed(13)
    x = base_sample(flow, 1, seed=14)
    for layer in flow.layers:
        g = torch.randn(x.shape, generator=gen, dtype=F64)
        jac = dense_jacobian(lambda v: layer(v)[0], x)
        xr = x.detach().requires_grad_()
        _, ld = layer(xr)
        # volume-preserving (additive) couplings and the global scaling have an x-independent logdet
        grad_ld = torch.autograd.grad(ld.sum(), xr, allow_unused=True)[0] if ld.requires_grad else None
        grad_ld = torch.zeros_like(x) if grad_ld is None else grad_ld

        y, logdet, g_new = layer.forward_with_score(x.detach(), g)
        expected = torch.linalg.solve(jac.T, (g - grad_ld).flatten())
        assert maxabs(g_new.flatten() - expected) < 1e-10 * max(1.0, maxabs(expected))
        assert maxabs(logdet - ld) < 1e-12

        r = torch.randn(x.shape, generator=gen, dtype=F64)
        x_back, logdet_inv, r_new = layer.inverse_with_score(y.detach(), r)
        assert field_distance(name, x_back, x) < 1e-10
        assert maxabs(logdet_inv + ld) < 1e-10
        expected_r = jac.T @ r.flatten() + grad_ld.flatten()
        assert maxabs(r_new.flatten() - expected_r) < 1e-10 * max(1.0, maxabs(expected_r))
        x = y.detach()


# ---------------------------------------------------------------------------------------------------
# The implicit inverse of the NCP mixture
# ---------------------------------------------------------------------------------------------------


def _tau_s(n=6, k=3, seed=15):
    gen = torch.Generator().manual_seed(seed)
    tau = (torch.rand(n, generator=gen, dtype=F64) * 2 - 1) * (math.pi - 0.2)
    s = torch.randn(n, k, generator=gen, dtype=F64)
    return tau, s


def test_ncp_inverse_solves_the_mixture_equation():
    tau, s = _tau_s(8)
    tau = torch.cat([tau, torch.tensor([0.0, math.pi - 1e-9, -(math.pi - 1e-9), math.pi], dtype=F64)])
    s = torch.cat([s, torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(16)) * 2])
    p = ncp_inverse(tau, s)
    assert float(p.abs().max()) <= math.pi
    assert maxabs(ncp_mixture(p, s)[0] - tau) < 1e-12


def test_ncp_inverse_passes_gradcheck():
    tau, s = _tau_s()
    tau.requires_grad_()
    s.requires_grad_()
    assert gradcheck(ncp_inverse, (tau, s), eps=1e-6, atol=1e-7, rtol=1e-6)


def _ncp_layer(layer_index=1, seed=17):
    flow, _ = make_flow("u1_ncp", seed=seed)
    layer = flow.layers[layer_index]
    assert isinstance(layer, NCPCoupling)
    y, _ = layer(base_sample(flow, 1, seed=18))
    return layer, y.detach()


def test_ncp_coupling_inverse_passes_gradcheck_in_its_input():
    layer, y = _ncp_layer()
    # keep clear of the ±π branch cut of the output angles (finite differences would jump by 2π)
    assert math.pi - maxabs(layer.inverse(y)[0]) > 1e-3
    assert gradcheck(lambda v: layer.inverse(v), (y.requires_grad_(),), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_ncp_coupling_inverse_passes_gradcheck_in_its_parameters():
    layer, y = _ncp_layer()
    names = ["net.net.0.bias", "net.net.4.bias"]  # first hidden layer and output (s, t) biases
    params = dict(layer.named_parameters())
    assert all(n in params for n in names), sorted(params)

    def inverse_of(*values):
        return _call_inverse(layer, dict(zip(names, values)), y)

    values = tuple(params[n].detach().clone().requires_grad_() for n in names)
    assert gradcheck(inverse_of, values, eps=1e-6, atol=1e-7, rtol=1e-6)


def _call_inverse(layer, overrides, y):
    class _Inverse(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, v):
            return self.inner.inverse(v)

    return torch.func.functional_call(_Inverse(layer), {f"inner.{k}": v for k, v in overrides.items()}, (y,),
                                      strict=False)


def test_log_prob_parameter_gradient_through_the_implicit_inverse_matches_finite_differences():
    """The training signal of reverse/forward KL: d/dθ Σ log q(x) with x fixed goes through bisection."""
    flow, _ = make_flow("u1_ncp", n_layers=2)
    x, _ = flow.sample(2, generator=torch.Generator().manual_seed(19))
    x = x.detach()
    p = flow.layers[0].net.net[-1].bias
    (grad,) = torch.autograd.grad(flow.log_prob(x).sum(), p)
    eps = 1e-6
    fd = torch.empty_like(p)
    with torch.no_grad():
        for i in range(p.numel()):
            p[i] += eps
            up = flow.log_prob(x).sum()
            p[i] -= 2 * eps
            down = flow.log_prob(x).sum()
            p[i] += eps
            fd[i] = (up - down) / (2 * eps)
    assert maxabs(grad) > 1e-3
    assert maxabs(grad - fd) < 1e-6 * max(1.0, maxabs(grad))
