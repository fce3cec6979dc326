"""Kernel benchmarks: the spectral functions per backend against the eager and compiled reference.

``test_kernel`` times one :class:`~benchmarks.configs.KernelCase` (the grid is in ``configs``);
``test_profile`` records, at the headline shape, where a forward+backward spends its time (FFT vs the
rest, from ``torch.profiler`` self times).
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.calls import build_call, run_timed

# Profiler op names that are (part of) a Fourier transform, and dense matrix products (partial DFTs).
_FFT_MARKERS = ("fft",)
_MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::baddbmm")
_PROFILE_ITERATIONS = 5


def test_kernel(benchmark, kernel_case, bench_rounds, compiled_cache):
    fn = build_call(kernel_case, compiled_cache)
    run_timed(benchmark, fn, bench_rounds, "kernel", kernel_case.as_dict())


def profile_breakdown(fn, device: str, iterations: int = _PROFILE_ITERATIONS) -> dict:
    """Self time per op of ``iterations`` calls, split into FFT, matrix products and the rest (ms per call).

    Self times exclude children, so an op implemented in one C++ function (e.g. a fused extension kernel)
    counts under its own name; the sum over ops is the profiled time of the whole call.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(iterations):
            fn()
    use_device = device.startswith("cuda")
    per_op = {}
    for evt in prof.key_averages():
        self_us = evt.self_device_time_total if use_device else evt.self_cpu_time_total
        if self_us > 0:
            per_op[evt.key] = self_us / 1e3 / iterations
    # Inclusive time inside the backend ops (jafr::*, jafr_cpp::*): the kernels proper, without the API's own
    # passes over J (scaling, Parseval norm, checks) and their autograd, which the rest of the total is.
    backend_ms = 0.0
    for evt in prof.key_averages():
        if evt.key.startswith(("jafr::", "jafr_cpp::")):
            backend_ms += (evt.device_time_total if use_device else evt.cpu_time_total) / 1e3 / iterations
    total = sum(per_op.values())
    fft = sum(v for k, v in per_op.items() if any(m in k.lower() for m in _FFT_MARKERS))
    matmul = sum(v for k, v in per_op.items() if k in _MATMUL_OPS)
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
    return {
        "clock": "device" if use_device else "cpu",
        "total_self_ms": total,
        "fft_ms": fft,
        "fft_share": fft / total if total > 0 else 0.0,
        "matmul_ms": matmul,
        "backend_ops_ms": backend_ms,
        "top_ops_ms": [[k, v] for k, v in top],
    }


def test_profile(benchmark, profile_case, bench_rounds):
    fn = build_call(profile_case)
    for _ in range(bench_rounds.warmup_calls):
        fn()
    benchmark.extra_info["kind"] = "profile"
    benchmark.extra_info.update(profile_case.as_dict())
    benchmark.extra_info["profile"] = profile_breakdown(fn, profile_case.device)
    benchmark.pedantic(fn, rounds=1 if bench_rounds.min_rounds <= 1 else 3, iterations=1)


def test_official_matches_authors(suite):
    """The timed official penalty and the authors' port compute the same value (not a timing)."""
    from benchmarks.authors_port import official_penalty
    import jafr_kernels as jk

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 3, 32, 32, generator=gen, dtype=torch.float64) * 1e-3).to(suite.device)
    ours = jk.freq_penalty(x, formulation="official", backend="reference")
    torch.testing.assert_close(ours, official_penalty(x), rtol=1e-12, atol=1e-12)
