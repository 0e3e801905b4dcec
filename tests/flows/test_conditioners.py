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


@pytest.mark.parametrize("pad,shape,ndim", [(1, (2, 3, 5), 1), (2, (1, 2, 4), 1), (1, (2, 2, 4, 3, 2), 3),
                                            (2, (1, 1, 4, 2, 6), 3)])
def test_circular_pad_in_1d_and_3d_equals_torch_and_passes_gradcheck(pad, shape, ndim):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    if pad > min(shape[-ndim:]):
        with pytest.raises(ValueError, match="exceeds the lattice extent"):
            circular_pad(x, pad, ndim)
        return
    assert torch.equal(circular_pad(x, pad, ndim), F.pad(x, (pad,) * 2 * ndim, mode="circular"))
    assert torch.autograd.gradcheck(lambda t: circular_pad(t, pad, ndim), (x,))
