"""Self-normalizing flows: exact log-dets and inverses, the SNF gradient against exact gradients, Z2."""
from __future__ import annotations

import pytest
import torch

from actions import Phi4
from latticeflow.config import ConfigError, config_from_dict
from latticeflow.flows import (FlowError, OddPower, SelfNormConv, SelfNormDense, build_flow, collect_reconstruction,
                               self_normalized_training)

DT = torch.float64


def _perturb(layer, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.add_(scale * torch.randn(layer.weight.shape, generator=g, dtype=DT))
    return layer


def _dense_matrix(layer, R=None) -> torch.Tensor:
    """The D × D matrix M of h ↦ W h (or of y ↦ R y, given inverse weights R), M[out, in], field layout."""
    shape = layer.field_shape
    d = int(torch.Size(shape).numel())
    eye = torch.eye(d, dtype=DT).view(d, *shape)
    op = layer._to_op(eye)
    y = layer._op(op, layer.weight) if R is None else layer._op_r(op, R)
    return layer._from_op(y, eye).reshape(d, d).T


CONV_CASES = [dict(field_shape=(4, 4), kernel_size=3), dict(field_shape=(2, 4, 6), kernel_size=3),
              dict(field_shape=(8, 8), kernel_size=3, block=2), dict(field_shape=(6, 6), kernel_size=5)]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_fft_logdet_equals_dense_slogdet(case):
    layer = _perturb(SelfNormConv(**case).to(DT))
    M = _dense_matrix(layer)
    assert torch.allclose(layer.exact_logdet(), torch.linalg.slogdet(M).logabsdet, atol=1e-10)


@pytest.mark.parametrize("make", [lambda: SelfNormDense((4, 4)), lambda: SelfNormConv((4, 4)),
                                  lambda: SelfNormConv((8, 8), block=2)])
@pytest.mark.parametrize("inverted", [False, True])
def test_layer_inverse_and_logdet(make, inverted):
    layer = _perturb(make().to(DT))
    layer.inverted = inverted
    x = torch.randn(5, *layer.field_shape, dtype=DT)
    y, ld = layer(x)
    xb, ld_inv = layer.inverse(y)
    assert torch.allclose(xb, x, atol=1e-12)
    assert torch.allclose(ld, -ld_inv, atol=1e-12)
    J = torch.autograd.functional.jacobian(lambda t: layer(t.unsqueeze(0))[0].flatten(), x[0]).reshape(x[0].numel(), -1)
    assert torch.allclose(ld[0], torch.linalg.slogdet(J).logabsdet, atol=1e-10)


def _set_exact_inverse(layer):
    """R = W⁻¹ (dense); for a conv whose kernel covers the whole lattice, the kernel of the inverse circulant."""
    with torch.no_grad():
        if isinstance(layer, SelfNormDense):
            layer.inverse_weight.copy_(torch.linalg.inv(_dense_matrix(layer)))
            return
        minv = torch.linalg.inv(_dense_matrix(layer))
        c, (l0, l1), k = layer.channels, layer.lattice, layer.weight.shape[-1]
        idx = layer._to_op(torch.arange(minv.shape[0], dtype=DT).view(1, *layer.field_shape)).long()[0]
        for i in range(c):
            for o in range(c):
                for a in range(k):
                    for b in range(k):
                        layer.inverse_weight[i, o, a, b] = minv[idx[i, 0, 0], idx[o, (a - k // 2) % l0, (b - k // 2) % l1]]


def _r_dense(layer, r):
    """The dense matrix of the inverse weights r (maps y-space to h-space)."""
    return _dense_matrix(layer, r)


@pytest.mark.parametrize("make", [lambda: SelfNormDense((3, 4)), lambda: SelfNormConv((3, 3)),
                                  lambda: SelfNormConv((2, 5, 5), kernel_size=5), lambda: SelfNormConv((6, 6), block=2)])
def test_snf_gradient_equals_exact_gradient_when_r_is_the_inverse(make):
    """With R = W⁻¹: ∂L/∂W (self-normalized) = ∂L/∂W (exact), and ∂L/∂R = the exact gradient of L(W = R⁻¹)."""
    layer = _perturb(make().to(DT), seed=3)
    _set_exact_inverse(layer)
    x = torch.randn(6, *layer.field_shape, dtype=DT)
    assert layer.reconstruction_error(x) < 1e-24

    def loss(grad_mode):
        layer.gradient = grad_mode
        with self_normalized_training():
            y, ld = layer(x)
        return 0.1 * (y ** 3).sum() + (y ** 2).sum() - 1.7 * ld.sum()

    layer.zero_grad()
    loss("self_normalized").backward()
    rec = collect_reconstruction(layer)
    assert rec is not None and float(rec.detach()) < 1e-24
    g_w_snf, g_r_snf = layer.weight.grad.clone(), layer.inverse_weight.grad.clone()
    layer.zero_grad()
    loss("exact").backward()
    assert torch.allclose(g_w_snf, layer.weight.grad, rtol=1e-10, atol=1e-10 * layer.weight.grad.abs().max())

    # the mirrored gradient: L as a function of R through W = R⁻¹ (dense matrices, autograd)
    r = layer.inverse_weight.detach().clone().requires_grad_()
    W = torch.linalg.inv(_r_dense(layer, r))  # field layout, so y = W h acts on x.flatten(1)
    y = x.flatten(1) @ W.T
    L = 0.1 * (y ** 3).sum() + (y ** 2).sum() - 1.7 * x.shape[0] * torch.linalg.slogdet(W).logabsdet
    (g_r,) = torch.autograd.grad(L, r)
    assert torch.allclose(g_r_snf, g_r, rtol=1e-9, atol=1e-9 * g_r.abs().max())


def test_snf_gradient_differs_when_r_is_not_the_inverse():
    """The test above can fail: a wrong R changes the W-gradient."""
    layer = _perturb(SelfNormDense((3, 3)).to(DT))
    x = torch.randn(4, 3, 3, dtype=DT)
    grads = []
    for mode in ("self_normalized", "exact"):
        layer.gradient = mode
        layer.zero_grad()
        with self_normalized_training():
            y, ld = layer(x)
        (y.pow(2).sum() - ld.sum()).backward()
        grads.append(layer.weight.grad.clone())
    assert (grads[0] - grads[1]).abs().max() > 1e-3


def test_evaluation_never_uses_r():
    """log q, sampling and inverses are exact whatever R holds."""
    action = Phi4((4, 4), kappa=0.2, lam=0.02)
    flow = build_flow({"family": "snf", "layer": "dense", "n_layers": 2}, action).to(DT)
    for m in flow.modules():
        if isinstance(m, SelfNormDense):
            _perturb(m)
    x = torch.randn(5, 4, 4, dtype=DT)
    with torch.no_grad():
        before = flow.log_prob(x)
        for m in flow.modules():
            if isinstance(m, SelfNormDense):
                m.inverse_weight.normal_()
        assert torch.equal(before, flow.log_prob(x))
    # the same log q with gradients enabled (exact autograd path), also after training steps moved W
    assert torch.allclose(flow.log_prob(x), before, atol=1e-12)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2, fused=False)
    for _ in range(3):
        with self_normalized_training():
            loss = -flow.log_prob(x).mean()
        opt.zero_grad()
        (loss + collect_reconstruction(flow)).backward()
        opt.step()
    with torch.no_grad():
        exact_now = flow.log_prob(x)
    assert not torch.allclose(exact_now, before)
    assert torch.allclose(flow.log_prob(x), exact_now, atol=1e-12)
    with torch.no_grad():  # W changed behind autograd's back: the cached log-det and LU follow
        for m in flow.modules():
            if isinstance(m, SelfNormDense):
                m.weight.data.mul_(1.1)
        z, ld = flow.inverse(x)
        assert torch.allclose(flow.forward(z)[0], x, atol=1e-10)
        fresh = build_flow({"family": "snf", "layer": "dense", "n_layers": 2}, action).to(DT)
        fresh.load_state_dict(flow.state_dict())
        assert torch.allclose(flow.log_prob(x), fresh.log_prob(x), atol=1e-10)
        assert not torch.allclose(flow.log_prob(x), exact_now)


@pytest.mark.parametrize("flow_cfg", [
    {"family": "snf", "layer": "dense", "n_layers": 2},
    {"family": "snf", "layer": "conv", "n_layers": 2, "block": 2, "kernel_size": 1},
    {"family": "snf", "layer": "dense", "n_layers": 2, "couplings": 2, "conditioner": "fc", "hidden": [16]},
    {"family": "snf", "layer": "conv", "n_layers": 1, "couplings": 2, "direction": "forward"},
])
def test_snf_flow_logdet_inverse_and_z2(flow_cfg):
    action = Phi4((4, 4), kappa=0.2, lam=0.02)
    flow = build_flow(flow_cfg, action).to(DT)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=DT))
    z = torch.randn(4, 4, 4, dtype=DT, generator=g)
    x, logdet = flow(z)
    zb, logdet_inv = flow.inverse(x)
    assert torch.allclose(zb, z, atol=1e-10) and torch.allclose(logdet, -logdet_inv, atol=1e-10)
    J = torch.autograd.functional.jacobian(lambda t: flow(t.unsqueeze(0))[0].flatten(), z[0]).reshape(16, 16)
    assert torch.allclose(logdet[0], torch.linalg.slogdet(J).logabsdet, atol=1e-9)
    assert torch.allclose(flow.log_prob(-x), flow.log_prob(x), atol=1e-10)  # odd map, symmetric base


def test_odd_power_is_odd_and_invertible():
    layer = OddPower().to(DT)
    with torch.no_grad():
        layer.log_power.fill_(0.5)
    x = 3 * torch.randn(7, 5, dtype=DT)
    y, ld = layer(x)
    assert torch.allclose(layer(-x)[0], -y) and torch.allclose(layer.inverse(y)[0], x, atol=1e-12)
    J = torch.autograd.functional.jacobian(lambda t: layer(t.unsqueeze(0))[0].flatten(), x[0])
    assert torch.allclose(ld[0], torch.linalg.slogdet(J).logabsdet, atol=1e-12)


def test_tracked_logdet_follows_w_and_refreshes():
    """During self-normalized training the dense log-det value is ℓ + tr(R ΔW); exact every ``refresh`` updates.

    (Its accuracy is that of R ≈ W⁻¹; it only enters reported training metrics, never log q of samples.)"""
    layer = SelfNormDense((4, 4), refresh=3).to(DT)
    x = torch.randn(8, 4, 4, dtype=DT)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    stale = None
    for step in range(7):
        with self_normalized_training():
            y, ld = layer(x)
        exact = torch.linalg.slogdet(layer.weight).logabsdet.detach()
        if step % 3 == 0:  # a refresh (after 0, 3, 6 updates) gives the exact value
            assert torch.allclose(ld[0], exact, atol=1e-12)
            stale = exact
        else:  # first-order tracking is much closer than the value at the last refresh
            assert abs(float(ld[0].detach() - exact)) < 0.1 * abs(float(stale - exact))
        opt.zero_grad()
        ((y ** 2).sum() - ld.sum() + collect_reconstruction(layer)).backward()
        opt.step()
        with torch.no_grad():  # a perfect learned inverse: the tracking error is second order in ΔW
            layer.inverse_weight.copy_(torch.linalg.inv(layer.weight.T))  # weight holds Wᵀ


def test_snf_config_errors_and_defaults():
    action = Phi4((4, 4), kappa=0.2, lam=0.02)
    for bad, word in [({"layer": "sparse"}, "flow.layer"), ({"gradient": "approx"}, "flow.gradient"),
                      ({"direction": "up"}, "flow.direction"), ({"layer": "conv", "block": 3}, "flow.block"),
                      ({"refresh": 0}, "flow.refresh"), ({"layer": "conv", "block": 2}, "flow.kernel_size")]:
        with pytest.raises(FlowError, match=word.replace(".", r"\.")):
            build_flow({"family": "snf", **bad}, action)
    base = {"action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.2, "lam": 0.02}, "flow": {"family": "snf"}}
    cfg = config_from_dict(base)
    assert cfg.train.estimator == "standard" and cfg.flow["direction"] == "forward"
    cfg = config_from_dict({**base, "flow": {"family": "snf"}, "train": {"objective": "forward_kl", "data": "x.h5"}})
    assert cfg.flow["direction"] == "inverse"
    with pytest.raises(ConfigError, match="train.estimator 'fast_path'"):
        config_from_dict({**base, "flow": {"family": "snf"}, "train": {"estimator": "fast_path"}})
