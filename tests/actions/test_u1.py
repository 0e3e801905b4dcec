"""2D U(1) gauge theory: force against autograd, gauge and translation invariance, topology."""
import math

import pytest
import torch

from actions import U1Gauge
from actions.u1 import wrap

F64 = torch.float64


def random_links(n, shape=(8, 8), scale=math.pi):
    return wrap((torch.rand(n, 2, *shape, dtype=F64) * 2 - 1) * scale)


@pytest.mark.parametrize("shape", [(8, 8), (4, 6), (16, 16)])
def test_force_equals_autograd(shape):
    u1 = U1Gauge(shape, beta=2.3)
    theta = random_links(4, shape).requires_grad_()
    (grad,) = torch.autograd.grad(u1.action(theta).sum(), theta)
    assert torch.allclose(u1.force(theta), grad, rtol=0, atol=1e-10)


def test_plaquette_definition():
    u1 = U1Gauge((3, 4), beta=1.0)
    theta = random_links(1, (3, 4))
    p = u1.plaquettes(theta)
    for x0 in range(3):
        for x1 in range(4):
            want = theta[0, 0, x0, x1] + theta[0, 1, (x0 + 1) % 3, x1] - theta[0, 0, x0, (x1 + 1) % 4] - theta[0, 1, x0, x1]
            assert abs(float(p[0, x0, x1] - want)) < 1e-14


def test_gauge_invariance_of_action_and_observables():
    u1 = U1Gauge((8, 8), beta=2.0)
    theta = random_links(6)
    g = torch.Generator().manual_seed(3)
    theta_g = u1.symmetry(theta, generator=g)
    assert not torch.allclose(theta_g, theta)
    assert torch.allclose(u1.action(theta_g), u1.action(theta), atol=1e-11)
    assert torch.equal(u1.topological_charge(theta_g), u1.topological_charge(theta))
    for name, value in u1.observables(theta).items():
        assert torch.allclose(u1.observables(theta_g)[name], value, atol=1e-11), name


def test_translation_invariance():
    u1 = U1Gauge((8, 8), beta=2.0)
    theta = random_links(3)
    shifted = torch.roll(theta, shifts=(2, 5), dims=(2, 3))
    assert torch.allclose(u1.action(shifted), u1.action(theta), atol=1e-11)
    assert torch.equal(u1.topological_charge(shifted), u1.topological_charge(theta))


def test_topological_charge_is_integer_and_detects_an_instanton():
    u1 = U1Gauge((8, 8), beta=2.0)
    theta = random_links(50)
    q_raw = wrap(u1.plaquettes(theta)).flatten(1).sum(-1) / (2 * math.pi)
    assert torch.allclose(q_raw, torch.round(q_raw), atol=1e-9)
    # a smooth charge-one configuration: constant field strength 2π/V (Smit & Vink construction)
    L = 8
    x0 = torch.arange(L, dtype=F64).view(L, 1).expand(L, L)
    x1 = torch.arange(L, dtype=F64).view(1, L).expand(L, L)
    f = 2 * math.pi / L**2
    t0 = -f * L * x1 * (x0 == L - 1)          # transition function on the last time slice
    t1 = f * x0
    inst = wrap(torch.stack([t0, t1])[None])
    q = u1.topological_charge(inst)
    assert abs(float(q[0])) == 1.0
    assert torch.allclose(wrap(u1.plaquettes(inst)).abs(), torch.full((1, L, L), f, dtype=F64), atol=1e-12)


def test_wilson_loop_1x1_is_the_plaquette_and_wrap_range():
    u1 = U1Gauge((8, 8), beta=2.0)
    theta = random_links(4)
    assert torch.allclose(u1.wilson_loop(theta, 1, 1), u1.mean_plaquette(theta), atol=1e-14)
    w = wrap(torch.tensor([-math.pi, math.pi, 3 * math.pi, -3.5 * math.pi, 0.0], dtype=F64))
    assert bool(((w > -math.pi) & (w <= math.pi)).all())
    assert math.isclose(float(w[0]), math.pi) and math.isclose(float(w[3]), 0.5 * math.pi, abs_tol=1e-12)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_bad_beta_is_named(beta):
    with pytest.raises(ValueError, match="beta"):
        U1Gauge((8, 8), beta=beta)
