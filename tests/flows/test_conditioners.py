"""Periodic padding: same values as torch's circular padding, exact gradient."""
import pytest
import torch
import torch.nn.functional as F

from latticeflow.flows.conditioners import circular_pad


@pytest.mark.parametrize("pad,shape", [(1, (3, 2, 8, 4)), (2, (2, 3, 4, 6)), (3, (1, 1, 3, 5)), (1, (2, 1, 1, 4))])
def test_circular_pad_equals_torch_and_passes_gradcheck(pad, shape):
    if pad > min(shape[-2:]):
        with pytest.raises(ValueError, match="exceeds the lattice extent"):
            circular_pad(torch.zeros(shape), pad)
        return
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.equal(circular_pad(x, pad), F.pad(x, (pad,) * 4, mode="circular"))
    assert torch.autograd.gradcheck(lambda t: circular_pad(t, pad), (x,))
