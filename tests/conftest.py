"""Shared test setup: Triton's interpreter on GPU-less machines, the tolerance table, case generators."""
import os

import torch

# Triton reads TRITON_INTERPRET when it is imported, so this must run before any test module imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from jafr_kernels import backends  # noqa: E402

# Relative (normwise: max|a - b| / max|b|) tolerance against the float64 reference, by compute dtype.
# fp32 spectral sums of <= 1e5 terms carry ~1e-7 relative error (double accumulation on the CPU path);
# 1e-5 leaves two orders of margin while any formula slip (a wrong weight, a missing bin) is >= 1e-3.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}

CPU = torch.device("cpu")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Normwise relative error max|actual - expected| / max|expected|, in float64."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    scale = expected.abs().max().clamp_min(1e-300)
    return float((actual - expected).abs().max() / scale)


def cpu_backends():
    """Backends that can serve CPU tensors here, Triton excluded (it has its own, slower, interpreter tests)."""
    return [b for b in ("cpu", "reference") if backends.unavailable_reason(b, CPU) is None]


@pytest.fixture(params=["partial", "full", "auto"])
def cpp_path(request, monkeypatch):
    """Force each transform path of the C++ backend."""
    monkeypatch.setenv("JAFR_CPP_PATH", request.param)
    return request.param
