"""Quick GPU benchmark (``python -m benchmarks --gpu --quick``): the headline freq_penalty cases only.

Each case times ``CALLS`` forward+backward calls issued back to back and one synchronisation, so the
per-call time is what a training loop sees (host and device overlapping); it also records the host time to
issue one call, the device launches per call (``torch.profiler``, kernels + memcpy + memset), and whether a
call synchronises with the host (``torch.cuda.set_sync_debug_mode("error")``). ``report`` turns the rows into
ratios against the hand-written eager penalty and the copy floor of the same run.
"""
from __future__ import annotations

import time

import torch

from benchmarks.calls import build_quick_call

CALLS = 20
ROUNDS = 7
PROFILED_CALLS = 5


def profile_calls(fn, calls: int = PROFILED_CALLS) -> dict:
    """Device activities (kernels, memcpy, memset) per call and the host's costliest ops (self us per call),
    from torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    host = sorted(((e.key, e.self_cpu_time_total / calls) for e in prof.key_averages() if e.self_cpu_time_total > 0),
                  key=lambda kv: -kv[1])[:6]
    return {"launches_per_call": len(device_events) / calls,
            "device_kernels": sorted({e.name for e in device_events})[:8],
            "host_top_us": [[k, round(v, 1)] for k, v in host]}


def host_sync(fn) -> str:
    """"none" if a call makes no device-to-host synchronisation, else the error it raised."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "none"
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:200]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def test_quick(benchmark, quick_case, quick_compiled):
    fn = build_quick_call(quick_case, quick_compiled)
    sync = torch.cuda.synchronize
    for _ in range(3):  # compilation, autotuning and caches stay outside the timing
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    host = (time.perf_counter() - start) / CALLS
    sync()

    def timed():
        for _ in range(CALLS):
            fn()
        sync()

    benchmark.extra_info.update(quick_case.as_dict())
    benchmark.extra_info.update(kind="quick", calls_per_round=CALLS, host_s_per_call=host,
                                **profile_calls(fn),
                                host_sync=host_sync(fn) if quick_case.impl not in ("copy",) else "none")
    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=1)
