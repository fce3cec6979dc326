"""Host cost of launching the fused ratio's Triton kernel, on a GPU: where the microseconds of a call go.

``python scripts/triton_launch_probe.py`` times, per call and without synchronising (so it is the host's
time to issue the work): the forward kernel launched through Triton's JIT (``kernel[grid](...)``: argument
binding, specialisation key, cache lookup, launch), the same compiled kernel launched through
``CompiledKernel[grid](...)`` (the launch alone), ``triton_ratio.ratio`` (our launcher: plan lookup, two
allocations, JIT launch), one ATen elementwise op and one allocation. It checks that both launch routes write
identical results. Prints a table; no GPU, exit status 2.
"""
from __future__ import annotations

import sys
import time

import torch


def per_call_us(fn, calls: int = 300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def main() -> int:
    if not torch.cuda.is_available():
        print("triton_launch_probe: needs a CUDA device", file=sys.stderr)
        return 2
    from jafr_kernels.kernels import triton_ratio as tr
    from jafr_kernels.reference import RadialBand

    x = torch.randn(4096, 3, 32, 32, device="cuda")
    b, c, h, w = x.shape
    q_lo, q_hi = RadialBand.low(0.25).q_limits(h, w)
    (ch, sh, cw, sw, lo, hi), consts = tr._plan_for(x, None, q_lo, q_hi, "auto")
    value = torch.empty(b, device="cuda")
    stats = torch.empty(b, 2, device="cuda")
    runtime = dict(x_ptr=x, w_ptr=value, value_ptr=value, stats_ptr=stats, ch_ptr=ch, sh_ptr=sh, cw_ptr=cw,
                   sw_ptr=sw, q_lo=lo, q_hi=hi, C=c)
    launch_consts = {k: v for k, v in consts.items() if k not in ("C", "num_warps")}
    kernel = tr._ratio_dft_kernel
    args = [runtime[n] for n in kernel.arg_names if n in runtime]

    def jit_launch():
        return kernel[(b,)](*args, **launch_consts, COMPLEMENT=True, num_warps=consts["num_warps"])

    rows = [("forward kernel, Triton JIT launch", per_call_us(jit_launch))]
    jit_value = value.clone()
    compiled = jit_launch()
    try:
        every = dict(runtime, **launch_consts, COMPLEMENT=True)
        ordered = [every[n] for n in kernel.arg_names]
        runner = compiled[(b, 1, 1)]
        value.fill_(float("nan"))
        runner(*ordered)
        torch.cuda.synchronize()
        same = torch.equal(value, jit_value)
        rows.append((f"forward kernel, CompiledKernel launch (same result: {same})", per_call_us(lambda: runner(*ordered))))
    except Exception as exc:  # noqa: BLE001 - an API difference of this Triton version is a result here
        rows.append((f"forward kernel, CompiledKernel launch: {type(exc).__name__}: {exc}"[:150], float("nan")))
    rows.append(("triton_ratio.ratio (plan, 2 allocations, JIT launch)",
                 per_call_us(lambda: tr.ratio(x, None, q_lo, q_hi, True))))
    v, s = tr.ratio(x, None, q_lo, q_hi, True)
    g = torch.full((b,), 1.0 / b, device="cuda")
    rows.append(("triton_ratio.ratio_backward (plan, 1 allocation, JIT launch)",
                 per_call_us(lambda: tr.ratio_backward(g, x, None, q_lo, q_hi, True, v, s))))
    y = torch.randn(4096, device="cuda")
    rows.append(("one ATen op (y.mul_(1.0))", per_call_us(lambda: y.mul_(1.0))))
    rows.append(("one allocation (torch.empty(4096))", per_call_us(lambda: torch.empty(4096, device="cuda"))))
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {__import__('triton').__version__}")
    print("| what | host us/call |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
