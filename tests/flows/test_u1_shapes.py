"""Gauge-equivariant U(1) couplings on every even lattice with extents ≥ 4, not only multiples of 4.

The period-4 link stripes are checked against the plaquette incidence matrix of `U1Gauge.plaquettes` on
every even L0, L1 in 4 … 14 (no plaquette holds two active links, the frozen plaquettes are exactly those
without one, each active link's plaquette index is where it enters with +1, layers 0 … 7 update every link
once); then, at 6×6, 10×10, 12×8, 6×8 and 8×8 (float64, randomised parameters as in helpers.py): frozen
plaquettes and conditioner outputs unchanged by each layer, exact inverses, log-det = log|det J| (dense
autograd Jacobian), both score hooks against autograd, gauge invariance of log q; the default flows build on
10×10; shapes the stripes cannot serve raise one line naming the shape.
"""
import math

import pytest
import torch

from actions import U1Gauge
from latticeflow.flows import FlowError, NCPCoupling, build_flow
from latticeflow.flows.u1 import GaugeCoupling, u1_link_masks
from latticeflow.flows.u1_plaquette import PlaquetteMarginal
from latticeflow.flows.u1_spline import CircularSplineCoupling

from .helpers import F64, U1, base_sample, dense_jacobian, field_distance, make_flow, maxabs, random_alpha

TOL = 1e-10
SHAPES = [(6, 6), (10, 10), (12, 8), (6, 8), (8, 8)]
SHAPE_IDS = [f"{a}x{b}" for a, b in SHAPES]
EVEN = range(4, 16, 2)
COUPLINGS = {"ncp": NCPCoupling, "spline": CircularSplineCoupling}


def _incidence(shape) -> torch.Tensor:
    """∂P/∂θ of `U1Gauge.plaquettes`: (V, 2V), entries 0, ±1 (independent of the mask code)."""
    theta = torch.zeros(1, 2, *shape, dtype=F64)
    return dense_jacobian(U1Gauge.plaquettes, theta).round().to(torch.int64)


# ---------------------------------------------------------------------------------------------------
# The masks, against the incidence matrix
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L1", EVEN)
@pytest.mark.parametrize("L0", EVEN)
def test_stripes_touch_each_plaquette_at_most_once_and_cover_every_link(L0, L1):
    shape = (L0, L1)
    inc = _incidence(shape)
    cover = torch.zeros(2 * L0 * L1, dtype=torch.int64)
    for layer in range(16):
        coupling = NCPCoupling(shape, layer, hidden=[1])
        masks = u1_link_masks(shape, layer)
        active = coupling.mask.flatten()
        assert bool((active == masks["links"].flatten()).all())
        per_plaquette = (inc[:, active] != 0).sum(1)
        assert int(per_plaquette.max()) == 1, (shape, layer)  # the two plaquettes of an active link hold no other
        assert bool((masks["frozen_plaquettes"].flatten() == (per_plaquette == 0)).all())
        assert bool(coupling.frozen_plaquettes.any())  # the conditioner sees something
        # each active link enters its plaquette_index plaquette with +1, and that plaquette is 'active'
        signs = inc[coupling.plaquette_index, coupling.idx_b]
        assert bool((signs == 1).all())
        assert bool(masks["active_plaquettes"].flatten()[coupling.plaquette_index].all())
        assert int(masks["active_plaquettes"].sum()) == coupling.idx_b.numel()
        cover += active.to(torch.int64)
        if layer == 7:
            assert bool((cover == 1).all()), shape  # every link exactly once per 8 layers
    assert bool((cover == 2).all())  # and twice in the default 16


def test_multiple_of_4_masks_are_the_period_4_stripes():
    """On multiples of 4 the masks are those of before (checkpoints keep their meaning): θ_μ on x_ν ≡ off mod 4."""
    for shape in [(8, 8), (12, 8), (4, 16)]:
        for layer in range(8):
            mu, off = layer % 2, (layer // 2) % 4
            x = torch.stack(torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij"))
            want = torch.zeros(2, *shape, dtype=torch.bool)
            want[mu] = x[1 - mu] % 4 == off
            assert bool((u1_link_masks(shape, layer)["links"] == want).all())


# ---------------------------------------------------------------------------------------------------
# Each layer: frozen plaquettes and the conditioner are untouched
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ["u1_ncp_loops", "u1_spline"])
def test_each_layer_keeps_its_frozen_plaquettes_and_conditioner_output(name, shape):
    flow, _ = make_flow(name, shape=shape, n_layers=8)
    theta = base_sample(flow, 2)
    gen = torch.Generator().manual_seed(3)
    for layer in flow.layers:
        assert isinstance(layer, GaugeCoupling)
        y, _ = layer(theta)
        p_x, p_y = U1Gauge.plaquettes(theta), U1Gauge.plaquettes(y.detach())
        fz = layer.frozen_plaquettes
        assert float(torch.cos(p_y - p_x)[:, fz].min()) > 1 - 1e-12  # frozen plaquettes unchanged (mod 2π)
        assert field_distance(name, y.masked_fill(layer.mask, 0), theta.masked_fill(layer.mask, 0)) == 0.0
        out_x = layer.gauge_features(layer._frozen(theta))[1]
        out_y = layer.gauge_features(layer._frozen(y))[1]
        assert maxabs(out_y - out_x) < 1e-12
        # the active links alone do not reach the conditioner
        noise = torch.rand(theta.shape, generator=gen, dtype=F64) * 2 * math.pi
        out_n = layer.gauge_features(layer._frozen(theta + noise * layer.mask))[1]
        assert maxabs(out_n - out_x) < 1e-12
        assert maxabs(y - theta) > 0.05  # the layer does move its active links
        theta = y.detach()


# ---------------------------------------------------------------------------------------------------
# Whole flows: inverse, log-det, scores, gauge invariance
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", U1)
def test_flow_inverts_exactly(name, shape):
    flow, _ = make_flow(name, shape=shape)
    z = base_sample(flow, 4)
    x, logdet = flow(z)
    assert field_distance(name, x, z) > 0.1
    z_back, logdet_inv = flow.inverse(x.detach())
    assert field_distance(name, z_back, z) < TOL
    assert maxabs(logdet + logdet_inv) < TOL
    x, log_q = flow.sample(4, generator=torch.Generator().manual_seed(5))
    assert maxabs(flow.log_prob(x.detach()) - log_q) < TOL


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", U1)
def test_logdet_is_log_abs_det_of_the_jacobian(name, shape):
    flow, _ = make_flow(name, shape=shape)
    z = base_sample(flow, 1, seed=3)
    sign, logabsdet = torch.linalg.slogdet(dense_jacobian(lambda v: flow(v)[0], z))
    logdet = float(flow(z)[1][0].detach())
    assert float(sign) != 0.0 and abs(logdet) > 0.1
    assert abs(float(logabsdet) - logdet) < TOL


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", U1)
def test_both_score_hooks_match_autograd(name, shape):
    """forward_with_score gives ∇ₓ log q(x); inverse_with_score(x, −∇S) gives ∇_z[−S(Tz) + log|det J_T|]."""
    flow, action = make_flow(name, shape=shape)
    z = base_sample(flow, 2)
    x, log_q, score = flow.forward_with_score(z)
    xr = x.detach().requires_grad_()
    lp = flow.log_prob(xr)
    (grad,) = torch.autograd.grad(lp.sum(), xr)
    assert maxabs(log_q - lp) < TOL and maxabs(grad) > 1e-2
    assert maxabs(score - grad) < 1e-9 * max(1.0, maxabs(grad))

    x = x.detach()
    z_back, _, r_z = flow.inverse_with_score(x, -action.force(x))
    z0 = z_back.detach().requires_grad_()
    x_of_z, logdet = flow(z0)
    (grad,) = torch.autograd.grad((-action.action(x_of_z) + logdet).sum(), z0)
    assert maxabs(grad) > 1e-2
    assert maxabs(r_z - grad) < 1e-9 * max(1.0, maxabs(grad))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", U1)
def test_log_q_is_gauge_invariant(name, shape):
    flow, action = make_flow(name, shape=shape)
    theta, log_q = flow.sample(4, generator=torch.Generator().manual_seed(9))
    theta_g = U1Gauge.gauge_transform(theta.detach(), random_alpha(4, action.shape))
    assert field_distance(name, theta_g, theta) > 0.5
    assert maxabs(flow.log_prob(theta_g) - log_q) < TOL


def test_12x8_flow_is_translation_equivariant_by_4():
    """On multiples of 4 the stripes repeat every 4 sites: shifts by 4 commute with T."""
    flow, _ = make_flow("u1_ncp", shape=(12, 8))
    z = base_sample(flow, 2)
    x, logdet = flow(z)
    x_s, logdet_s = flow(torch.roll(z, shifts=(4, 4), dims=(-2, -1)))
    assert field_distance("u1_ncp", x_s, torch.roll(x, shifts=(4, 4), dims=(-2, -1))) < 1e-12
    assert maxabs(logdet_s - logdet) < TOL


# ---------------------------------------------------------------------------------------------------
# Building on 10×10, and the shapes that cannot be served
# ---------------------------------------------------------------------------------------------------

U1_10 = U1Gauge((10, 10), beta=4.0)


@pytest.mark.parametrize("family", ["u1", "u1_ncp"])
def test_build_flow_builds_the_default_flow_on_10x10_covering_every_link_twice(family):
    """16 couplings (after the plaquette-marginal layer for u1); exact log q of its own samples."""
    flow = build_flow({"family": family}, U1_10).double()
    couplings = [layer for layer in flow.layers if isinstance(layer, GaugeCoupling)]
    assert flow.field_shape == (2, 10, 10) and len(couplings) == 16
    assert isinstance(flow.layers[0], PlaquetteMarginal) == (family == "u1")
    assert bool((sum(layer.mask.to(torch.int64) for layer in couplings) == 2).all())
    x, log_q = flow.sample(2, generator=torch.Generator().manual_seed(0))
    assert maxabs(flow.log_prob(x.detach()) - log_q) < TOL


BAD = {(7, 8): "extent 7 is odd", (2, 8): "extent 2 < 4", (8, 7): "extent 7 is odd", (8, 2): "extent 2 < 4"}


@pytest.mark.parametrize("coupling", list(COUPLINGS))
@pytest.mark.parametrize("shape", list(BAD), ids=[f"{a}x{b}" for a, b in BAD])
def test_coupling_rejects_a_lattice_the_stripes_cannot_serve_in_one_line(shape, coupling):
    for layer in (0, 1):
        with pytest.raises(FlowError) as err:
            COUPLINGS[coupling](shape, layer)
        msg = str(err.value)
        assert "\n" not in msg and str(list(shape)) in msg and BAD[shape] in msg, msg
        assert "even and >= 4" in msg


@pytest.mark.parametrize("family", ["u1", "u1_ncp"])
@pytest.mark.parametrize("shape", [(7, 8), (2, 8)], ids=["7x8", "2x8"])
def test_build_flow_rejects_a_lattice_the_stripes_cannot_serve_in_one_line(shape, family):
    with pytest.raises(FlowError) as err:
        build_flow({"family": family}, U1Gauge(shape, beta=1.0))
    msg = str(err.value)
    assert "\n" not in msg and str(list(shape)) in msg and BAD[shape] in msg, msg
