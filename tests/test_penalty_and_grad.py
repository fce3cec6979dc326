"""``freq_penalty_and_grad``: the ratio penalty's value and gradient in one op, on every backend that runs here,
against the float64 reference's value and ``torch.autograd.grad``.

Backends: the reference, the C++ CPU op on each of its paths (``JAFR_CPP_PATH``: ``fused`` runs the CUDA
kernel's routine on the CPU), and Triton under the interpreter (small shapes: it is slow there). Tolerance:
``conftest.TOLERANCE`` of the compute dtype (normwise relative error).
"""
import math

import pytest
import torch

import jafr_kernels as jk
from jafr_kernels import backends, ops, reference
from jafr_kernels.reference import RadialBand

from conftest import CPU, TOLERANCE, rel_err

# (backend, JAFR_CPP_PATH) pairs that run here.
ROUTES = [r for r in (("reference", None), ("cpu", "partial"), ("cpu", "full"), ("cpu", "fused"), ("triton", None))
          if backends.unavailable_reason(r[0], CPU) is None]
ROUTE_IDS = [b if p is None else f"{b}-{p}" for b, p in ROUTES]
# Odd, prime and non-square planes; kept small for the Triton interpreter.
SHAPES = [(3, 2, 9, 7), (2, 3, 16, 16), (2, 1, 5, 12), (2, 3, 13, 13)]
MASKS = ["low", "high", "between", "weight"]


@pytest.fixture(params=ROUTES, ids=ROUTE_IDS)
def route(request, monkeypatch):
    backend, path = request.param
    if path is not None:
        monkeypatch.setenv("JAFR_CPP_PATH", path)
    return backend


def _jac(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _mask(name, h, w):
    """(the API's cutoff argument, the reference's mask)."""
    if name == "weight":  # not symmetric in u: exercises the gradient's edge columns
        weight = torch.rand(h, w // 2 + 1, generator=torch.Generator().manual_seed(h * w), dtype=torch.float64)
        return weight, weight
    band = {"low": RadialBand.low(0.3), "high": RadialBand.high(0.3), "between": RadialBand.between(0.2, 0.6)}[name]
    return band, band


def _expected(jac, mask, target, reduction):
    """The reference penalty of float64 ``jac`` and its autograd gradient (of the sum, for reduction 'none')."""
    leaf = jac.detach().double().requires_grad_(True)
    penalty = reference.freq_penalty(leaf, mask, target=target, reduction=reduction)
    (grad,) = torch.autograd.grad(penalty.sum(), leaf)
    return penalty.detach(), grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", MASKS)
def test_value_and_grad_match_autograd_float64(route, shape, mask):
    jac = _jac(shape, seed=sum(shape))
    cutoff, ref_mask = _mask(mask, *shape[-2:])
    for target in ("low", "high"):
        for reduction in ("mean", "sum", "none"):
            penalty, grad = jk.freq_penalty_and_grad(jac, cutoff, target=target, reduction=reduction, backend=route)
            want_p, want_g = _expected(jac, ref_mask, target, reduction)
            assert penalty.dtype == torch.float64 and penalty.shape == want_p.shape
            assert grad.dtype == torch.float64 and grad.shape == jac.shape and grad.is_contiguous()
            assert rel_err(penalty, want_p) <= TOLERANCE[torch.float64], (target, reduction)
            assert rel_err(grad, want_g) <= TOLERANCE[torch.float64], (target, reduction)


def test_equals_freq_penalty_and_its_gradient_float32(route):
    """Same value as ``freq_penalty`` and the gradient autograd takes of it, in fp32 (the default dtype)."""
    jac = _jac((3, 3, 12, 10), torch.float32, seed=5).requires_grad_(True)
    penalty, grad = jk.freq_penalty_and_grad(jac, 0.25, backend=route)
    want = jk.freq_penalty(jac, 0.25, backend=route)
    (want_grad,) = torch.autograd.grad(want, jac)
    assert not penalty.requires_grad and not grad.requires_grad  # plain tensors: no graph is recorded
    assert penalty.dtype == torch.float32 and grad.dtype == torch.float32
    assert rel_err(penalty, want) <= TOLERANCE[torch.float32]
    assert rel_err(grad, want_grad) <= TOLERANCE[torch.float32]
    exact_p, exact_g = _expected(jac, RadialBand.low(0.25), "low", "mean")
    assert rel_err(penalty, exact_p) <= TOLERANCE[torch.float32] and rel_err(grad, exact_g) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("target", ["low", "high"])
def test_zero_sample_gives_zero_value_and_zero_grad(route, target):
    jac = _jac((3, 2, 9, 8), seed=6)
    jac[1] = 0.0
    penalty, grad = jk.freq_penalty_and_grad(jac, 0.3, target=target, reduction="none", backend=route)
    want_p, want_g = _expected(jac, RadialBand.low(0.3), target, "none")
    assert float(penalty[1]) == 0.0 and float(grad[1].abs().max()) == 0.0
    assert rel_err(penalty, want_p) <= TOLERANCE[torch.float64] and rel_err(grad, want_g) <= TOLERANCE[torch.float64]
    penalty, grad = jk.freq_penalty_and_grad(torch.zeros(2, 1, 6, 6), backend=route)
    assert float(penalty) == 0.0 and float(grad.abs().max()) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_samples(route, bad):
    """propagate: NaN value and gradient for the bad sample only; ignore: 0 and 0; raise: a ValueError."""
    jac = _jac((3, 2, 9, 8), seed=7)
    clean = jac.clone()
    clean[2] = 0.0
    jac[2, 1, 3, 4] = bad
    want_p, want_g = _expected(clean, RadialBand.low(0.3), "low", "none")

    penalty, grad = jk.freq_penalty_and_grad(jac, 0.3, reduction="none", backend=route)
    assert torch.isnan(penalty[2]) and torch.isnan(grad[2]).all()
    assert rel_err(penalty[:2], want_p[:2]) <= TOLERANCE[torch.float64]
    assert rel_err(grad[:2], want_g[:2]) <= TOLERANCE[torch.float64]
    mean, _ = jk.freq_penalty_and_grad(jac, 0.3, backend=route)
    assert torch.isnan(mean)

    penalty, grad = jk.freq_penalty_and_grad(jac, 0.3, reduction="none", nonfinite="ignore", backend=route)
    assert float(penalty[2]) == 0.0 and float(grad[2].abs().max()) == 0.0
    assert rel_err(penalty, want_p) <= TOLERANCE[torch.float64] and rel_err(grad, want_g) <= TOLERANCE[torch.float64]

    with pytest.raises(ValueError, match="1 non-finite .* in 1 of 3 samples"):
        jk.freq_penalty_and_grad(jac, 0.3, nonfinite="raise", backend=route)


def test_half_precision_input_gives_a_half_gradient(route):
    jac = _jac((2, 3, 8, 8), torch.float16, seed=8)
    penalty, grad = jk.freq_penalty_and_grad(jac, 0.25, backend=route)
    want_p, want_g = _expected(jac, RadialBand.low(0.25), "low", "mean")  # fp16 input is exact once upcast
    assert penalty.dtype == torch.float32 and grad.dtype == torch.float16
    assert rel_err(penalty, want_p) <= TOLERANCE[torch.float32]
    assert rel_err(grad, want_g) <= 2.0**-10  # rounded to fp16 on the store


def test_non_contiguous_jacobian_is_read_in_place(route):
    wide = _jac((2, 2, 9, 14), seed=9)
    jac = wide[..., ::2]
    before = wide.clone()
    penalty, grad = jk.freq_penalty_and_grad(jac, 0.4, target="high", backend=route)
    want_p, want_g = _expected(jac, RadialBand.low(0.4), "high", "mean")
    assert torch.equal(wide, before) and grad.is_contiguous()
    assert rel_err(penalty, want_p) <= TOLERANCE[torch.float64] and rel_err(grad, want_g) <= TOLERANCE[torch.float64]


# --------------------------------------------------------------------------- the op itself
def test_op_is_not_differentiable():
    x = _jac((2, 1, 8, 8), torch.float32).requires_grad_(True)
    value, _ = ops.band_ratio_and_grad_op(x, None, *RadialBand.low(0.3).q_limits(8, 8), True, 1.0, "cpu")
    with pytest.raises(RuntimeError, match="no autograd formula"):
        value.sum().backward()


@pytest.mark.skipif(backends.unavailable_reason("cpu", CPU) is not None, reason="the C++ extension is not built")
def test_opcheck_and_compile():
    x = _jac((3, 2, 9, 7), torch.float32, seed=10)
    q_lo, q_hi = RadialBand.high(0.3).q_limits(9, 7)
    weight = torch.rand(9, 4)
    for args in ((x, None, q_lo, q_hi, True, 0.5, "cpu"), (x, weight, 0, reference.Q_MAX, False, 1.0, "cpu")):
        torch.library.opcheck(ops.band_ratio_and_grad_op, args)
        for path in (0, 3):  # the extension's own op, auto and fused
            torch.library.opcheck(torch.ops.jafr_cpp.band_ratio_and_grad, (*args[:-1], path))
    torch._dynamo.reset()
    fn = torch.compile(lambda j: jk.freq_penalty_and_grad(j, 0.25, backend="cpu"), fullgraph=True)
    penalty, grad = fn(x)
    want_p, want_g = jk.freq_penalty_and_grad(x, 0.25, backend="cpu")
    torch.testing.assert_close(penalty, want_p, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, want_g, rtol=1e-6, atol=1e-9)


def test_bad_arguments_are_named():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="reduction must be"):
        jk.freq_penalty_and_grad(x, reduction="max")
    with pytest.raises(ValueError, match="target must be"):
        jk.freq_penalty_and_grad(x, target="mid")
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        jk.freq_penalty_and_grad(x, nonfinite="skip")
    with pytest.raises(ValueError, match=r"\(0, sqrt\(2\)\]"):
        jk.freq_penalty_and_grad(x, 2.0)
