"""Turn a :class:`~benchmarks.configs.KernelCase` into a zero-argument callable that does the timed work.

Every implementation goes through the public API (``jk.freq_penalty(..., backend=...)`` etc.), so the
timings include what a user pays: validation, backend choice and the op dispatch. ``"compiled"`` is
``torch.compile`` of that same call with ``backend="reference"``; ``"authors"`` is
:mod:`benchmarks.authors_port`; ``"copy"`` is ``dst.copy_(x)``, one read of J and one write of a
J-sized output, the memory-traffic floor of any forward+backward.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from typing import Callable

import torch

import jafr_kernels as jk
from benchmarks import authors_port
from benchmarks.configs import DTYPES, KernelCase


def make_input(shape, dtype: str, device: str, seed: int = 0) -> torch.Tensor:
    """A standard-normal (B, C, H, W) tensor; spectral costs do not depend on the values."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=DTYPES[dtype])


def op_function(op: str, impl: str, cutoff) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> output`` for one op and implementation (``"compiled"`` returns the uncompiled reference call)."""
    backend = "reference" if impl in ("compiled", "reference") else impl
    if op == "freq_penalty":
        return functools.partial(jk.freq_penalty, cutoff=cutoff, backend=backend)
    if op == "freq_penalty_official":
        if impl == "authors":
            return authors_port.official_penalty
        return functools.partial(jk.freq_penalty, formulation="official", backend=backend)
    if op == "low_freq_ratio":
        return functools.partial(jk.low_freq_ratio, cutoff=cutoff, backend=backend)
    if op == "spectral_energy":
        return functools.partial(jk.spectral_energy, mask=cutoff, backend=backend)
    raise ValueError(f"unknown op {op!r}")


class CompiledCache:
    """``torch.compile`` objects, one per (op, mode, cutoff, plane size, dtype), dynamic in batch/channels.

    Compiling with ``dynamic=True`` lets one compiled graph serve every batch and channel count of a plane
    size, which keeps the number of compilations (seconds each on CPU) small enough for the full suite.
    """

    def __init__(self):
        self._fns = {}

    def get(self, case: KernelCase) -> Callable:
        key = (case.op, case.mode, case.cutoff, case.shape[2:], case.dtype, case.device)
        if key not in self._fns:
            self._fns[key] = torch.compile(op_function(case.op, "reference", case.cutoff), dynamic=True)
        return self._fns[key]


def _sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def build_call(case: KernelCase, compiled: CompiledCache | None = None, seed: int = 0) -> Callable[[], object]:
    """The zero-argument callable to time for ``case`` (it synchronises CUDA before returning)."""
    x = make_input(case.shape, case.dtype, case.device, seed)
    sync = _sync(case.device)
    if case.op == "copy":
        dst = torch.empty_like(x)

        def copy():
            dst.copy_(x)
            sync()

        return copy
    if case.impl == "compiled":
        if compiled is None:
            raise ValueError("a CompiledCache is needed for impl='compiled'")
        fn = compiled.get(case)
    else:
        fn = op_function(case.op, case.impl, case.cutoff)
    if case.mode == "fwd":

        def forward():
            with torch.no_grad():
                out = fn(x)
            sync()
            return out

        return forward
    if case.mode != "fwd+bwd":
        raise ValueError(f"unknown mode {case.mode!r}")
    x.requires_grad_(True)

    def forward_backward():
        out = fn(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        sync()
        return grad

    return forward_backward


def run_timed(benchmark, fn, rounds, kind: str, info: dict):
    """Warm ``fn`` up (outside the timing), tag the result with ``kind`` and ``info``, and time it."""
    for _ in range(rounds.warmup_calls):
        fn()
    benchmark.extra_info["kind"] = kind
    benchmark.extra_info.update(info)
    return benchmark(fn)


def run_paired(benchmark, fn, baseline, rounds, kind: str, info: dict, per_call: int = 1,
               budget_s: float = 1.5, block_s: float = 0.1):
    """Time ``fn`` in blocks of ``k`` back-to-back calls, each block right after a block of ``k`` calls of
    ``baseline`` (timed here, in the round's setup, outside pytest-benchmark's clock), and record the median
    of the per-block ratios as ``x_baseline`` and the baseline's median as ``baseline_median_s``.

    Two medians taken minutes apart move with the machine's load in between (on a shared 2-core machine by
    10-20 % between runs); blocks timed back to back share it. ``k`` fills about ``block_s`` seconds, so that
    a call rarely follows the other kind (which costs it its caches); ``per_call``: steps per call of ``fn``
    (``baseline`` does one); rounds fill about ``budget_s`` seconds, at least ``rounds.min_rounds``."""
    for _ in range(rounds.warmup_calls):
        baseline()
        fn()
    start = time.perf_counter()
    baseline()
    fn()
    pair_s = time.perf_counter() - start
    full = rounds.max_time > 0
    k = max(1, round(block_s / pair_s)) if full else 1
    n = max(rounds.min_rounds, math.ceil(budget_s / (k * pair_s))) if full else rounds.min_rounds
    base_s = []

    def setup():
        t = time.perf_counter()
        for _ in range(k):
            baseline()
        base_s.append((time.perf_counter() - t) / k)

    def block():
        for _ in range(k):
            out = fn()
        return out

    benchmark.extra_info["kind"] = kind
    benchmark.extra_info.update(info)
    benchmark.extra_info["steps_per_call"] = per_call * k  # pytest-benchmark's times are per block
    out = benchmark.pedantic(block, setup=setup, rounds=n, iterations=1)
    times = benchmark.stats.stats.data
    benchmark.extra_info["baseline_median_s"] = statistics.median(base_s)
    benchmark.extra_info["x_baseline"] = statistics.median(t / (per_call * k) / b for t, b in zip(times, base_s))
    return out


def quiet_compile_warnings() -> None:
    """Inductor warns that it leaves complex (FFT) ops to eager; that is expected here."""
    warnings.filterwarnings("ignore", message=".*does not support code generation for complex.*")


def eager_penalty(h: int, w: int, cutoff: float, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ratio penalty as a user writes it in eager PyTorch, with the band and Hermitian weights precomputed."""
    from jafr_kernels import reference

    hw = reference.hermitian_weight(w, device=device, dtype=torch.float32)
    low_w = reference.radial_mask(h, w, cutoff, device=device) * hw
    all_w = hw.expand(h, -1)

    def penalty(jac: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft2(jac.float()).abs().square()  # (B, C, H, W//2+1)
        low = (power * low_w).sum(dim=(1, 2, 3))
        total = (power * all_w).sum(dim=(1, 2, 3))
        return (1 - low / total).mean()

    return penalty


class _EmptyRatio(torch.autograd.Function):
    """Per-sample output and input gradient allocated but never computed: the autograd cost alone."""

    @staticmethod
    def forward(ctx, x):
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return x.new_empty(x.shape[:1], dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad):
        return grad.new_empty(ctx.x_shape, dtype=ctx.x_dtype)


def fused_kernels_call(backend: str, x: torch.Tensor, cutoff: float) -> Callable[[], object]:
    """The backend's fused ratio forward and backward called directly: the kernels and their launch cost."""
    from jafr_kernels import backends
    from jafr_kernels.reference import RadialBand

    kernels = backends.get(backend)
    q_lo, q_hi = RadialBand.low(cutoff).q_limits(*x.shape[-2:])
    grad = torch.full((x.shape[0],), 1.0 / x.shape[0], device=x.device)

    def forward_backward():
        value, stats = kernels.ratio(x, None, q_lo, q_hi, True)
        return kernels.ratio_backward(grad, x, None, q_lo, q_hi, True, value, stats)

    return forward_backward


def forced_path_call(backend: str, path: str, x: torch.Tensor, cutoff: float) -> Callable[[], object]:
    """The backend's ratio forward and backward called directly on one transform path (``configs.QUICK_PATH_CASES``):
    Triton ``dft`` / ``packed`` / ``gemm`` / ``fft``, the C++ backend ``fused`` / ``partial`` / ``full``."""
    from jafr_kernels.reference import RadialBand

    q_lo, q_hi = RadialBand.low(cutoff).q_limits(*x.shape[-2:])
    grad = torch.full((x.shape[0],), 1.0 / x.shape[0], device=x.device)
    if backend == "triton":
        from jafr_kernels.kernels import triton_ratio as tr

        forward = functools.partial(tr.ratio, x, None, q_lo, q_hi, True, path=path)
        backward = functools.partial(tr.ratio_backward, grad, x, None, q_lo, q_hi, True, path=path)
    else:
        from jafr_kernels.kernels import cpp

        code = cpp._PATHS[path]
        forward = functools.partial(torch.ops.jafr_cpp.band_ratio, x, None, q_lo, q_hi, True, code)
        backward = lambda value, stats: torch.ops.jafr_cpp.band_ratio_backward(  # noqa: E731
            grad, x, None, q_lo, q_hi, True, value, stats, code)

    def forward_backward():
        value, stats = forward()
        return backward(value, stats)

    return forward_backward


def build_quick_call(case: KernelCase, compiled: dict, seed: int = 0) -> Callable[[], object]:
    """One forward+backward of ``case`` with no synchronisation (the quick benchmark times many back to back)."""
    x = make_input(case.shape, case.dtype, case.device, seed)
    if case.impl == "copy":
        dst = torch.empty_like(x)
        return lambda: dst.copy_(x)
    h, w = case.shape[-2:]
    if "@" in case.impl:
        backend, path = case.impl.split("@")
        return forced_path_call(backend.removesuffix("_kernels"), path, x, case.cutoff)
    if case.impl.endswith("_kernels"):
        return fused_kernels_call(case.impl.removesuffix("_kernels"), x, case.cutoff)
    if case.impl == "autograd_floor":
        fn = lambda t: _EmptyRatio.apply(t).mean()  # noqa: E731
    elif case.impl in ("eager", "eager_compiled"):
        fn = eager_penalty(h, w, case.cutoff, case.device)
        if case.impl == "eager_compiled":
            key = (h, w, case.dtype)
            if key not in compiled:
                compiled[key] = torch.compile(fn, dynamic=True)
            fn = compiled[key]
    else:
        fn = functools.partial(jk.freq_penalty, cutoff=case.cutoff, backend=case.impl)
    x.requires_grad_(True)

    def forward_backward():
        (grad,) = torch.autograd.grad(fn(x), x)
        return grad

    return forward_backward
