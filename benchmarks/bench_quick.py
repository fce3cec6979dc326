"""Quick GPU benchmark (``python -m benchmarks --gpu --quick``): the headline freq_penalty cases only.

Each case times ``CALLS`` forward+backward calls issued back to back and one synchronisation, so the
per-call time is what a training loop sees (host and device overlapping); it also records the host time to
issue one call, the device launches per call (``torch.profiler``, kernels + memcpy + memset), and whether a
call synchronises with the host (``torch.cuda.set_sync_debug_mode("error")``), the device's busy time per call
(the profiler's kernel and copy durations) and the per-call time of the same work replayed from a CUDA graph
(the host's per-op cost removed). ``report`` turns the rows into ratios against the hand-written eager penalty
and the copy floor of the same run.
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
    busy_us = sum(e.time_range.elapsed_us() for e in device_events)
    return {"launches_per_call": len(device_events) / calls,
            "device_s_per_call": busy_us / calls / 1e6,
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


def graph_replay(fn, calls: int = CALLS) -> dict:
    """Per-call time of ``fn`` captured once in a CUDA graph and replayed ``calls`` times (CUDA events): the
    device time with the host's per-op cost removed, as CUDA graphs or ``torch.compile(mode="reduce-overhead")``
    give it. ``graph_s_per_call`` is None (with the reason) where the call cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(ROUNDS):
            start.record()
            for _ in range(calls):
                graph.replay()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / calls)
        return {"graph_s_per_call": best, "graph_note": ""}
    except Exception as exc:  # noqa: BLE001 - a capture failure is a result, not an error of the benchmark
        torch.cuda.synchronize()
        return {"graph_s_per_call": None, "graph_note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


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

    sync_result = host_sync(fn) if quick_case.impl not in ("copy",) else "none"
    # graph capture only where it cannot disturb the next cases: no host syncs, no compiled code (which has
    # its own graph mode)
    capturable = sync_result == "none" and quick_case.impl != "eager_compiled"
    graph = graph_replay(fn) if capturable else {"graph_s_per_call": None, "graph_note": "not captured"}
    benchmark.extra_info.update(quick_case.as_dict())
    benchmark.extra_info.update(kind="quick", calls_per_round=CALLS, host_s_per_call=host,
                                **profile_calls(fn), host_sync=sync_result, **graph)
    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=1)
