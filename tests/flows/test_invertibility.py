"""Bijectivity and exact densities of every flow family (float64, small lattices, random parameters)."""
import math

import pytest
import torch

from .helpers import ALL, F64, base_sample, dense_jacobian, field_distance, is_u1, make_flow, maxabs

TOL = 1e-10


@pytest.mark.parametrize("name", ALL)
def test_randomised_flow_is_not_the_identity(name):
    """Guard for every other test: after randomisation T moves the field and has a non-zero log-det."""
    flow, _ = make_flow(name)
    z = base_sample(flow, 4)
    x, logdet = flow(z)
    assert field_distance(name, x, z) > 0.1
    # (Z2Nice: volume-preserving couplings, logdet = Σ log_scale of the final global scaling)
    assert float(logdet.detach().abs().max()) > 0.1


@pytest.mark.parametrize("name", ALL)
def test_inverse_undoes_forward(name):
    flow, _ = make_flow(name)
    z = base_sample(flow, 8)
    x, _ = flow(z)
    z_back, _ = flow.inverse(x)
    assert field_distance(name, z_back, z) < TOL
    x_again, _ = flow(z_back)
    assert field_distance(name, x_again, x) < TOL


@pytest.mark.parametrize("name", ALL)
def test_forward_and_inverse_logdets_cancel(name):
    flow, _ = make_flow(name)
    z = base_sample(flow, 8)
    x, logdet = flow(z)
    _, logdet_inv = flow.inverse(x)
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ALL)
def test_logdet_is_log_abs_det_of_the_jacobian(name):
    flow, _ = make_flow(name)
    z = base_sample(flow, 1, seed=3)
    jac = dense_jacobian(lambda v: flow(v)[0], z)
    sign, logabsdet = torch.linalg.slogdet(jac)
    _, logdet = flow(z)
    assert float(sign) != 0.0
    assert abs(float(logabsdet) - float(logdet[0].detach())) < TOL


@pytest.mark.parametrize("name", ALL)
def test_inverse_logdet_is_log_abs_det_of_the_inverse_jacobian(name):
    """The inverse (for U(1): the implicit, bisection-based one) has the right Jacobian, too."""
    flow, _ = make_flow(name)
    x, _ = flow(base_sample(flow, 1, seed=4))
    x = x.detach()
    jac = dense_jacobian(lambda v: flow.inverse(v)[0], x)
    _, logabsdet = torch.linalg.slogdet(jac)
    _, logdet_inv = flow.inverse(x)
    assert abs(float(logabsdet) - float(logdet_inv[0].detach())) < TOL


@pytest.mark.parametrize("name", ALL)
def test_log_prob_of_a_sample_is_its_sampled_log_q(name):
    flow, _ = make_flow(name)
    x, log_q = flow.sample(8, generator=torch.Generator().manual_seed(5))
    assert x.dtype == torch.float64 and log_q.shape == (8,)
    assert torch.allclose(flow.log_prob(x), log_q, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ALL)
def test_every_layer_inverts_and_its_logdets_cancel(name):
    # U(1): 8 layers = both link directions × all 4 stripe offsets
    flow, _ = make_flow(name, **({"n_layers": 8} if is_u1(name) else {}))
    x = base_sample(flow, 4)
    for layer in flow.layers:
        y, ld = layer(x)
        x_back, ld_inv = layer.inverse(y)
        assert field_distance(name, x_back, x) < TOL
        assert torch.allclose(ld + ld_inv, torch.zeros_like(ld), rtol=0, atol=TOL)
        x = y.detach()


@pytest.mark.parametrize("name", [n for n in ALL if is_u1(n)])
def test_u1_flow_output_stays_in_the_principal_interval(name):
    """Links are angles in (−π, π]: the flow and its inverse keep them there."""
    flow, _ = make_flow(name)
    z = base_sample(flow, 8)
    x, _ = flow(z)
    z_back, _ = flow.inverse(x.detach())
    for t in (x.detach(), z_back.detach()):
        assert float(t.max()) <= math.pi and float(t.min()) > -math.pi


RECTANGULAR = [("realnvp-cnn", (6, 4)), ("realnvp-fc", (4, 6)), ("z2nice-cnn", (6, 4)), ("z2nice-fc", (4, 6)),
               ("u1_ncp", (8, 4)), ("u1_ncp", (4, 8))]


@pytest.mark.parametrize("name,shape", RECTANGULAR, ids=[f"{n}-{s[0]}x{s[1]}" for n, s in RECTANGULAR])
def test_flow_is_exact_on_a_rectangular_lattice(name, shape):
    """L0 ≠ L1 catches mixed-up lattice axes (masks, shifts, the plaquette→link roll of NCP)."""
    flow, _ = make_flow(name, shape=shape)
    z = base_sample(flow, 1, seed=6)
    x, logdet = flow(z)
    z_back, logdet_inv = flow.inverse(x.detach())
    assert field_distance(name, x, z) > 0.1
    assert field_distance(name, z_back, z) < TOL
    assert abs(float((logdet + logdet_inv).detach())) < TOL
    _, logabsdet = torch.linalg.slogdet(dense_jacobian(lambda v: flow(v)[0], z))
    assert abs(float(logabsdet) - float(logdet[0].detach())) < TOL


def test_u1_flow_is_periodic_in_every_link_angle():
    """θ and θ + 2πk are the same gauge field: same T(θ) (mod 2π), logdet, log q and score."""
    flow, _ = make_flow("u1_ncp")
    k = 2 * math.pi * torch.randint(-2, 3, (4, 2, 4, 4), generator=torch.Generator().manual_seed(7)).to(F64)
    z = base_sample(flow, 4)
    x, logdet = flow(z)
    x_k, logdet_k = flow(z + k)
    assert field_distance("u1_ncp", x_k, x) < TOL and maxabs(logdet_k - logdet) < TOL
    x = x.detach()
    assert maxabs(flow.log_prob(x + k) - flow.log_prob(x)) < TOL
    assert field_distance("u1_ncp", flow.inverse(x + k)[0], flow.inverse(x)[0]) < TOL
    _, _, score = flow.forward_with_score(z)
    _, _, score_k = flow.forward_with_score(z + k)
    assert maxabs(score_k - score) < 1e-9 * max(1.0, maxabs(score))
