"""``torch.func`` transforms of the penalty on every backend that runs here: ``grad`` equals
``torch.autograd.grad``, and ``vmap``, ``jacrev`` and ``vmap(grad)`` equal their loops (float64).

The eager route of the fused ratio is an ``autograd.Function`` with ``setup_context`` and ``vmap`` rules
(the mapped dimension folded into the batch, forward and backward); the reference is plain PyTorch.
"""
import pytest
import torch

import jafr_kernels as jk
from jafr_kernels import backends
from jafr_kernels.reference import RadialBand

from conftest import CPU, TOLERANCE

BACKENDS = [b for b in ("cpu", "reference", "triton") if backends.unavailable_reason(b, CPU) is None]
TOL = dict(rtol=TOLERANCE[torch.float64], atol=1e-14)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _fns(backend):
    return {
        "freq_penalty": lambda j: jk.freq_penalty(j, 0.3, backend=backend),
        "freq_penalty_high_band": lambda j: jk.freq_penalty(j, RadialBand.between(0.2, 0.7), target="high",
                                                            reduction="sum", backend=backend),
        "low_freq_ratio": lambda j: jk.low_freq_ratio(j, 0.3, backend=backend).sum(),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_grad_equals_autograd(backend):
    x = _x(3, 2, 9, 7)
    for name, fn in _fns(backend).items():
        leaf = x.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(fn(leaf), leaf)
        torch.testing.assert_close(torch.func.grad(fn)(x), want, **TOL, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_equals_a_loop(backend):
    xs = _x(4, 2, 2, 9, 7, seed=1)
    for name, fn in _fns(backend).items():
        want = torch.stack([fn(t) for t in xs])
        torch.testing.assert_close(torch.func.vmap(fn)(xs), want, **TOL, msg=name)
        torch.testing.assert_close(torch.func.vmap(fn, in_dims=2)(xs.movedim(0, 2)), want, **TOL, msg=name)
        grads = torch.stack([torch.func.grad(fn)(t) for t in xs])
        torch.testing.assert_close(torch.func.vmap(torch.func.grad(fn))(xs), grads, **TOL, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jacrev_equals_autograd_jacobian(backend):
    x = _x(3, 2, 8, 5, seed=2)

    def ratio(j):
        return jk.low_freq_ratio(j, 0.4, backend=backend)

    want = torch.autograd.functional.jacobian(ratio, x)
    torch.testing.assert_close(torch.func.jacrev(ratio)(x), want, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_over_the_weight_map_is_refused_clearly(backend):
    x = _x(2, 1, 8, 8, seed=3)
    weights = torch.rand(3, 8, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="over the weight map are not supported"):
        torch.func.vmap(lambda w: jk.low_freq_ratio(x, w, backend=backend))(weights)
    weight = weights[0]  # a weight map held constant while the Jacobian is mapped is fine
    xs = _x(3, 2, 1, 8, 8, seed=4)
    want = torch.stack([jk.low_freq_ratio(t, weight, backend=backend) for t in xs])
    torch.testing.assert_close(torch.func.vmap(lambda j: jk.low_freq_ratio(j, weight, backend=backend))(xs), want, **TOL)
