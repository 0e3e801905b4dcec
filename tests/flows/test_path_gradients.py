"""fast_path == path_inverse (reverse KL) and fast_path == gdreg (forward KL) for every flow configuration of
tests/flows/helpers.py (the φ⁴ ones in d = 1, 2, 3, 4 included): same z or x, float64, loss values and every
parameter gradient to a relative 1e-10 (Vaitl et al., ICLR 2024; the estimators of `latticeflow.gradients`)."""
import pytest
import torch

from latticeflow.gradients import forward_kl, reverse_kl

from .helpers import ALL, base_sample, make_flow, maxabs

TOL = 1e-10


def _grads(flow, loss):
    flow.zero_grad()
    loss.backward()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in flow.parameters()]


def _assert_same(flow, fast, slow, what):
    assert abs(float((fast - slow).detach())) < TOL * max(1.0, abs(float(fast.detach()))), what
    g_fast, g_slow = _grads(flow, fast), _grads(flow, slow)
    scale = max(maxabs(g) for g in g_fast)
    assert scale > 1e-3, what  # a non-trivial gradient
    assert max(maxabs(a - b) for a, b in zip(g_fast, g_slow)) < TOL * scale, what


@pytest.mark.parametrize("name", ALL)
def test_fast_path_equals_path_inverse_and_gdreg(name):
    flow, action = make_flow(name)
    z = base_sample(flow, 4, seed=21)
    _assert_same(flow, reverse_kl(flow, action, z, "fast_path"), reverse_kl(flow, action, z, "path_inverse"),
                 f"{name}: reverse KL fast_path vs path_inverse")
    x = flow.sample(4, generator=torch.Generator().manual_seed(22))[0].detach()
    _assert_same(flow, forward_kl(flow, action, x, "fast_path"), forward_kl(flow, action, x, "gdreg"),
                 f"{name}: forward KL fast_path vs gdreg")
