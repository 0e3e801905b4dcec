"""Starts in a topological sector of 2D U(1): the charge configuration has the requested geometric charge and
every plaquette at 2πQ/V; the allocation of chains to sectors follows the exact P(Q) and is symmetric in ±Q."""
import math

import pytest
import torch

from actions import U1Gauge
from actions.exact import u1_charge_allocation, u1_charge_distribution
from actions.u1 import charge_configuration


@pytest.mark.parametrize("shape, q", [((8, 8), 0), ((8, 8), 3), ((8, 8), -2), ((6, 10), 4), ((4, 4), 1)])
def test_charge_configuration_has_charge_q_and_uniform_plaquettes(shape, q):
    u1 = U1Gauge(shape, beta=1.0)
    theta = charge_configuration(shape, q)[None]
    assert theta.shape == (1, 2, *shape) and theta.dtype == torch.float64
    assert float(u1.topological_charge(theta)) == q
    volume = shape[0] * shape[1]
    p = torch.remainder(u1.plaquettes(theta) - 2 * math.pi * q / volume + math.pi, 2 * math.pi) - math.pi
    assert p.abs().max() < 1e-12
    assert float(theta.min()) >= -math.pi and float(theta.max()) < math.pi


@pytest.mark.parametrize("beta, n_chains", [(2.0, 16), (6.0, 16), (2.0, 8), (1.0, 64), (6.0, 3)])
def test_charge_allocation_follows_exact_distribution(beta, n_chains):
    charges = u1_charge_allocation(beta, 64, n_chains)
    assert len(charges) == n_chains
    assert sorted(charges) == sorted(-q for q in charges)  # symmetric in ±Q
    qs, p = u1_charge_distribution(beta, 64)
    prob = dict(zip(qs.tolist(), p.tolist()))
    for q in set(charges) - {0}:  # every sector holds round(n P(Q)) chains, or fewer for the largest |Q|
        assert charges.count(q) <= round(n_chains * prob[q])
    for q in range(1, max(charges) if max(charges) > 0 else 1):
        assert charges.count(q) == round(n_chains * prob[q])
