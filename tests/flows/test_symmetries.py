"""Symmetries built into the flows: Z2 (Z2Nice), gauge invariance (U(1)), lattice translations (CNN)."""
import pytest
import torch

from actions import U1Gauge

from .helpers import (CNN, PHI4, REALNVP, U1, U1_TRANSLATION, Z2, base_sample, field_distance, lattice, make_flow, maxabs,
                      random_alpha)

# ---------------------------------------------------------------------------------------------------
# Z2: φ → −φ
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", Z2)
def test_z2_equivariant_flow_is_odd(name):
    """T(−z) = −T(z) with the same logdet, for the whole flow and for every layer (−z: the theory's symmetry)."""
    flow, action = make_flow(name)
    z = base_sample(flow, 6)
    x, logdet = flow(z)
    x_neg, logdet_neg = flow(action.symmetry(z))
    assert maxabs(x_neg - action.symmetry(x)) < 1e-12
    assert maxabs(logdet_neg - logdet) < 1e-12
    for layer in flow.layers:
        y, _ = layer(z)
        assert maxabs(layer(action.symmetry(z))[0] - action.symmetry(y)) < 1e-12
        z = y.detach()


@pytest.mark.parametrize("name", Z2)
def test_z2_equivariant_flow_log_q_is_z2_symmetric(name):
    flow, action = make_flow(name)
    phi, log_q = flow.sample(6, generator=torch.Generator().manual_seed(7))
    # sample's forward path against log_prob's inverse: round-off of a sum over the sites, relative to |log q|
    # (a broken Z2 shows at 1e-3 and above); the dilated colour flow on 16 x 16 (|log q| ~ 240) has forward against
    # inverse round-off of 1-2e-11 without the symmetry, depending on the convolution kernel's summation order
    assert maxabs(flow.log_prob(action.symmetry(phi)) - log_q) < max(1e-12, 2e-13 * maxabs(log_q))
    # also off the flow's samples: arbitrary fields, incl. a broken-phase-like one
    phi = 1.5 + torch.randn(4, *phi.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    # the zero-mode spline is steep (g' up to 1e4) between its vacua, where these fields' M lies: round-off
    # in M is amplified there, so its tolerance is relative (|log q| ~ 100)
    tol = 1e-12 if "zm" not in name else 1e-12 * max(1.0, maxabs(flow.log_prob(phi)))
    assert maxabs(flow.log_prob(action.symmetry(phi)) - flow.log_prob(phi)) < tol


@pytest.mark.parametrize("name", REALNVP + ["spline_plain-cnn"])
def test_randomised_realnvp_is_not_z2_equivariant(name):
    """Sanity check of the Z2 tests: a generic RealNVP (biases, no odd constraint) breaks φ → −φ."""
    flow, _ = make_flow(name)
    z = base_sample(flow, 6)
    x, _ = flow(z)
    assert maxabs(flow(-z)[0] + x) > 1e-3
    phi = x.detach()
    assert maxabs(flow.log_prob(-phi) - flow.log_prob(phi)) > 1e-3


# ---------------------------------------------------------------------------------------------------
# U(1) gauge symmetry
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", U1)
def test_log_q_is_gauge_invariant(name):
    flow, action = make_flow(name)
    theta, log_q = flow.sample(6, generator=torch.Generator().manual_seed(9))
    theta = theta.detach()
    alpha = random_alpha(6, action.shape)
    theta_g = U1Gauge.gauge_transform(theta, alpha)
    assert field_distance("u1_ncp", theta_g, theta) > 0.5  # the transformation does move the links
    log_q_g = flow.log_prob(theta_g)
    assert maxabs(log_q_g - log_q) < 1e-10


@pytest.mark.parametrize("name", U1)
def test_u1_flow_is_gauge_equivariant(name):
    """T(g·z) = g·T(z) (mod 2π) for the same gauge transformation g, with equal logdets."""
    flow, action = make_flow(name)
    z = base_sample(flow, 6)
    alpha = random_alpha(6, action.shape, seed=10)
    x, logdet = flow(z)
    x_g, logdet_g = flow(U1Gauge.gauge_transform(z, alpha))
    assert field_distance("u1_ncp", x_g, U1Gauge.gauge_transform(x, alpha)) < 1e-10
    assert maxabs(logdet_g - logdet) < 1e-10
    # and the inverse commutes with gauge transformations, too
    x = x.detach()
    z_back_g, _ = flow.inverse(U1Gauge.gauge_transform(x, alpha))
    assert field_distance("u1_ncp", z_back_g, U1Gauge.gauge_transform(z, alpha)) < 1e-10


@pytest.mark.parametrize("name", U1)
def test_every_gauge_layer_is_gauge_equivariant(name):
    flow, action = make_flow(name, n_layers=8)  # both directions × all 4 stripe offsets
    z = base_sample(flow, 4)
    alpha = random_alpha(4, action.shape, seed=11)
    for layer in flow.layers:
        y, ld = layer(z)
        y_g, ld_g = layer(U1Gauge.gauge_transform(z, alpha))
        assert field_distance("u1_ncp", y_g, U1Gauge.gauge_transform(y, alpha)) < 1e-10
        assert maxabs(ld_g - ld) < 1e-10
        z = y.detach()


# ---------------------------------------------------------------------------------------------------
# Translations (CNN conditioners)
# ---------------------------------------------------------------------------------------------------


def _roll(field, shift, u1):
    """Translate a field by ``shift`` lattice sites (the last len(shift) axes; for U(1) both link channels)."""
    return torch.roll(field, shifts=shift, dims=tuple(range(-len(shift), 0)))


# shifts with an even Σ_μ shift_μ: they map each checkerboard parity onto itself
EVEN_SHIFTS = {1: [(2,), (-2,)], 2: [(2, 0), (0, 2), (1, 1), (-1, 1)],
               3: [(2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, -1), (0, 1, 1)]}
# a decimated flow splits the even sites by the parity of x₀ as well: (1, 1) swaps its two classes
SUBLATTICE_SHIFTS = {2: [(2, 0), (0, 2), (2, 2), (-2, 2)], 3: [(2, 0, 0), (0, 2, 0), (0, 0, 2), (0, 1, 1), (0, 1, -1)]}
# two-level decimation splits the (2i, 2j) sites by the parity of i + j: (2, 0) swaps A1e and A1o
TWO_LEVEL_SHIFTS = {2: [(4, 0), (0, 4), (2, 2), (-2, 2)]}
# colour couplings split A2 by (i mod 2, j mod 2) and A1e by its rotated coordinates: shifts by (4, ±4)
COLOUR_SHIFTS = {2: [(4, 4), (-4, 4)]}
CNN_SHIFTS = [(name, shift) for name in CNN if name in PHI4
              for shift in (COLOUR_SHIFTS if "colours" in name else TWO_LEVEL_SHIFTS if "decimated2" in name else SUBLATTICE_SHIFTS if "decimated" in name
                            else EVEN_SHIFTS)[len(lattice(name))]]


@pytest.mark.parametrize("name,shift", CNN_SHIFTS, ids=[f"{n}-{s}" for n, s in CNN_SHIFTS])
def test_cnn_flow_is_translation_equivariant(name, shift):
    """A shift that preserves the checkerboard (even Σ shift) commutes with T; the logdet is unchanged."""
    flow, _ = make_flow(name)
    z = base_sample(flow, 4)
    x, logdet = flow(z)
    x_s, logdet_s = flow(_roll(z, shift, False))
    assert maxabs(x_s - _roll(x, shift, False)) < 1e-12 * max(1.0, maxabs(x))
    assert maxabs(logdet_s - logdet) < 1e-10


@pytest.mark.parametrize("shift", [(2, 0), (1, 1)])
def test_z2nice_cnn_couplings_are_translation_equivariant(shift):
    """The Z2Nice CNN couplings alone (no final scaling layer) commute with mask-preserving shifts."""
    flow, _ = make_flow("z2nice-cnn", scaling=False)
    z = base_sample(flow, 4)
    x, logdet = flow(z)
    assert maxabs(x - z) > 0.1
    x_s, logdet_s = flow(_roll(z, shift, False))
    assert maxabs(x_s - _roll(x, shift, False)) < 1e-12 * max(1.0, maxabs(x))  # round-off of |x| ~ 30
    assert maxabs(logdet_s - logdet) < 1e-10


@pytest.mark.parametrize("name", [n for n in CNN if n in PHI4])
def test_odd_shift_breaks_phi4_translation_equivariance(name):
    """Sanity check: a shift by one site swaps the checkerboard parities, so T no longer commutes."""
    flow, _ = make_flow(name)
    z = base_sample(flow, 4)
    x, _ = flow(z)
    odd = (1,) + (0,) * (len(lattice(name)) - 1)
    assert maxabs(flow(_roll(z, odd, False))[0] - _roll(x, odd, False)) > 1e-3


@pytest.mark.parametrize("name", U1_TRANSLATION)
@pytest.mark.parametrize("shift", [(4, 0), (0, 4), (4, 4)])
def test_u1_flow_is_translation_equivariant(shift, name):
    """Shifts by multiples of the stripe period 4 along both axes commute with T (8×8 lattice)."""
    flow, _ = make_flow(name, shape=(8, 8))
    z = base_sample(flow, 3)
    x, logdet = flow(z)
    x_s, logdet_s = flow(_roll(z, shift, True))
    assert field_distance("u1_ncp", x_s, _roll(x, shift, True)) < 1e-12
    assert maxabs(logdet_s - logdet) < 1e-10


@pytest.mark.parametrize("shift", [(1, 0), (0, 1)])
def test_off_period_shift_breaks_u1_translation_equivariance(shift):
    """Sanity check: a one-site shift moves the active stripes of half the layers."""
    flow, _ = make_flow("u1_ncp", shape=(8, 8))
    z = base_sample(flow, 3)
    x, _ = flow(z)
    assert field_distance("u1_ncp", flow(_roll(z, shift, True))[0], _roll(x, shift, True)) > 1e-3
