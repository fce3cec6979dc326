"""Peak extra memory of one ``jk.freq_penalty`` forward+backward, per backend, against the size of J.

"Extra" is what the call allocates on top of what exists before it (J itself), at its highest point;
it includes the J-sized gradient it returns, so the least possible value is 1x the size of J.

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory
  allocated before the call (caching-allocator level: every tensor the call creates).
* CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free made through
  PyTorch's CPU allocator (tensors of ATen ops and of the C++ extension alike) with its size and time;
  the running sum of those sizes in time order, maximised, is the peak extra memory. Scratch memory that
  an FFT library allocates for itself, outside PyTorch's allocator, is not seen (on either device).
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import jafr_kernels as jk
from benchmarks.calls import make_input


def _penalty_step(jac: torch.Tensor, case):
    kwargs = {"formulation": case.formulation, "backend": case.impl}
    if case.formulation == "ratio":
        kwargs["cutoff"] = case.cutoff
    out = jk.freq_penalty(jac, **kwargs)
    (grad,) = torch.autograd.grad(out, jac)
    return grad


def cpu_peak_extra_bytes(fn) -> int:
    """Peak of the running sum of CPU-allocator allocations minus frees made while ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    cpu = torch.autograd.DeviceType.CPU
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == cpu]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def cuda_peak_extra_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


def test_memory(benchmark, memory_case, suite):
    jac = make_input(memory_case.shape, memory_case.dtype, memory_case.device).requires_grad_(True)

    def step():
        return _penalty_step(jac, memory_case)

    step()  # warm-up: caches, lazy initialisation
    if memory_case.device.startswith("cuda"):
        peak, method = cuda_peak_extra_bytes(step), "torch.cuda.max_memory_allocated"
    else:
        peak, method = cpu_peak_extra_bytes(step), "torch.profiler profile_memory (CPU allocator events)"
    benchmark.extra_info["kind"] = "memory"
    benchmark.extra_info.update(memory_case.as_dict())
    benchmark.extra_info.update(peak_extra_bytes=peak, jac_bytes=jac.numel() * jac.element_size(), method=method)
    benchmark.pedantic(step, rounds=1, iterations=1)
