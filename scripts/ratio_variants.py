"""Device time of the fused ratio's kernels under other launch settings, on a GPU, each checked for accuracy.

``python scripts/ratio_variants.py`` launches the Triton DFT-path kernels (``_ratio_dft_kernel``,
``_ratio_bwd_dft_kernel``) directly at the benchmark shapes with every combination of ``tl.dot`` precision
(``tf32x3``, ``ieee``, ``tf32``), warps per program and pipelining of the channel loop, then the C++/CUDA
backend's fused forward and backward with each thread count of ``--cuda-threads`` (``JAFR_CUDA_THREADS``, one
process each); the packed small-plane path (``triton_packed``) with 1, 2 and 4 samples per program and 2, 4 and
8 warps. Each kernel is timed alone (``triton.testing.do_bench``, median) and its value and gradient are
compared with the float64 reference (normwise relative error; fp32 maths stays far under 1e-5, one-pass
``tf32`` does not). Prints one table per backend, the current settings marked; exit status 2 without a GPU.
This is how the launch settings of both fused ratios are chosen.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

SHAPES = ((4096, 3, 32, 32), (256, 1, 28, 28), (256, 3, 64, 64))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def reference(x: torch.Tensor, band, grad: torch.Tensor):
    from jafr_kernels import reference as ref

    xr = x.detach().double().requires_grad_(True)
    value = 1.0 - ref.low_freq_ratio(xr, band)  # the complement: the "low" target's penalty
    (dx,) = torch.autograd.grad((value * grad.double()).sum(), xr)
    return value.detach(), dx


def inputs(shape, band):
    """A fresh random J of ``shape`` on the GPU, a per-sample cotangent, the reference value and gradient, and
    the band's squared-radius limits."""
    b, _, h, w = shape
    gen = torch.Generator(device="cuda").manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen, device="cuda")
    grad = torch.randn(b, generator=gen, device="cuda")
    return (x, grad, *reference(x, band, grad), *band.q_limits(h, w))


def time_us(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3


def cuda_rows(threads: int) -> int:
    """Table rows of the C++/CUDA fused ratio at every shape (run in a process whose JAFR_CUDA_THREADS is set)."""
    from jafr_kernels import backends
    from jafr_kernels.reference import RadialBand

    kernels = backends.get("cuda")
    band = RadialBand.low(0.25)
    for shape in SHAPES:
        x, grad, value_ref, dx_ref, q_lo, q_hi = inputs(shape, band)
        value, stats = kernels.ratio(x, None, q_lo, q_hi, True)
        dx = kernels.ratio_backward(grad, x, None, q_lo, q_hi, True, value, stats)
        errs = (rel_err(value, value_ref), rel_err(dx, dx_ref))
        t_fwd = time_us(lambda: kernels.ratio(x, None, q_lo, q_hi, True))
        t_bwd = time_us(lambda: kernels.ratio_backward(grad, x, None, q_lo, q_hi, True, value, stats))
        print(f"| {'x'.join(map(str, shape))} | {threads} | {t_fwd:.1f} | {t_bwd:.1f} | {t_fwd + t_bwd:.1f} | "
              f"{errs[0]:.1e} | {errs[1]:.1e} | {'current' if threads == 256 else ''} |", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=150.0, help="stop starting variants after this many seconds")
    parser.add_argument("--cuda-threads", default="64,128,256",
                        help="thread counts per block for the C++/CUDA fused ratio, comma separated ('' skips it)")
    parser.add_argument("--no-triton", action="store_true", help="only the C++/CUDA thread counts")
    parser.add_argument("--cuda-rows", type=int, default=0, help=argparse.SUPPRESS)  # the child process's mode
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("ratio_variants: needs a CUDA device", file=sys.stderr)
        return 2
    if args.cuda_rows:
        return cuda_rows(args.cuda_rows)
    import triton

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    status = 0 if args.no_triton else triton_table(args.time_limit)
    threads = [int(t) for t in args.cuda_threads.split(",") if t.strip()]
    if threads:
        print()
        print("| shape | CUDA threads per block | fwd us | bwd us | fwd+bwd us | value rel err | grad rel err | note |")
        print("|---|---|---|---|---|---|---|---|")
        for t in threads:
            env = dict(os.environ, JAFR_CUDA_THREADS=str(t))
            proc = subprocess.run([sys.executable, __file__, "--cuda-rows", str(t)], env=env, capture_output=True,
                                  text=True, timeout=120)
            print(proc.stdout, end="")
            if proc.returncode:
                print(f"| - | {t} | - | - | - | - | - | exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]} |")
                status = 1
    return status


def triton_table(time_limit: float) -> int:
    from jafr_kernels.kernels import triton_ratio as tr
    from jafr_kernels.reference import RadialBand

    start = time.perf_counter()
    band = RadialBand.low(0.25)
    print("| shape | precision | warps | stages | fwd us | bwd us | fwd+bwd us | value rel err | grad rel err | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        b, c = shape[:2]
        x, grad, value_ref, dx_ref, q_lo, q_hi = inputs(shape, band)
        (ch, sh, cw, sw, lo, hi), current = tr._plan_for(x, None, q_lo, q_hi, "dft")
        if shape == SHAPES[0]:  # the headline: every setting (stages 1: the channel loop is not pipelined)
            variants = [(p, nw, 3) for p in ("tf32x3", "ieee", "tf32") for nw in (2, 4, 8)]
            variants += [(p, nw, 1) for p in ("tf32x3", "ieee") for nw in (1, 2, 4)] + [("tf32x3", 1, 3)]
        else:  # tf32x3 only (64x64 IEEE blocks take minutes to compile)
            variants = [("tf32x3", nw, st) for nw in (2, 4, 8) for st in (3, 1) if (nw, st) != (8, 1)]
        for prec, nw, stages in variants:
            if time.perf_counter() - start > time_limit:
                print(f"| {'x'.join(map(str, shape))} | {prec} | {nw} | {stages} | - | - | - | - | - | time limit |")
                continue
            consts = {k: v for k, v in current.items() if k not in ("C", "num_warps")}
            consts["PREC"] = prec
            value = torch.empty(b, device="cuda")
            stats = torch.empty(b, 2, device="cuda")
            dx = torch.empty_like(x)

            def fwd():
                tr._ratio_dft_kernel[(b,)](x, value, value, stats, ch, sh, cw, sw, lo, hi, c, COMPLEMENT=True,
                                           num_warps=nw, num_stages=stages, **consts)

            def bwd():
                tr._ratio_bwd_dft_kernel[(b,)](grad, 1, x, value, value, stats, dx, ch, sh, cw, sw, lo, hi, c,
                                               COMPLEMENT=True, num_warps=nw, num_stages=stages, **consts)

            try:
                fwd()
                bwd()
                torch.cuda.synchronize()
                errs = (rel_err(value, value_ref), rel_err(dx, dx_ref))
                t_fwd = time_us(fwd)
                t_bwd = time_us(bwd)
                mark = "current" if (prec, nw, stages) == (current["PREC"], current["num_warps"], 3) else ""
                print(f"| {'x'.join(map(str, shape))} | {prec} | {nw} | {stages} | {t_fwd:.1f} | {t_bwd:.1f} | "
                      f"{t_fwd + t_bwd:.1f} | {errs[0]:.1e} | {errs[1]:.1e} | {mark} |", flush=True)
            except Exception as exc:  # noqa: BLE001 - a failing variant is a result; a CUDA fault ends the run
                print(f"| {'x'.join(map(str, shape))} | {prec} | {nw} | {stages} | - | - | - | - | - | "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]} |", flush=True)
                if "CUDA" in str(exc) or "illegal" in str(exc):
                    return 1
        if not packed_rows(shape, x, grad, value_ref, dx_ref, q_lo, q_hi, lambda: time.perf_counter() - start > time_limit):
            return 1
    return 0


def packed_rows(shape, x, grad, value_ref, dx_ref, q_lo, q_hi, out_of_time, timer=None) -> bool:
    """Table rows of the packed small-plane path (``triton_packed``) at one shape: each samples-per-program and
    warp count (tf32x3, the current precision). False after a CUDA fault."""
    import triton

    from jafr_kernels.kernels import triton_packed as tp

    timer = timer or time_us
    b, c = shape[:2]
    name = "x".join(map(str, shape))
    for samples in (1, 2, 4):
        (rows, cols, lo, hi), consts = tp.plan_for(x, None, q_lo, q_hi, samples)
        consts = dict(consts)  # the plan is cached: pop from a copy
        default_warps = consts.pop("num_warps")
        grid = (triton.cdiv(b, samples),)
        for nw in (2, 4, 8):
            note = f"packed, {samples} per program" + (", its default" if nw == default_warps and samples ==
                                                        tp.default_samples(*shape[-2:]) else "")
            if out_of_time():
                print(f"| {name} | {consts['PREC']} | {nw} | 3 | - | - | - | - | - | {note}: time limit |")
                continue
            value = torch.empty(b, device=x.device)
            stats = torch.empty(b, 2, device=x.device)
            dx = torch.empty_like(x)

            def fwd():
                tp._ratio_packed_kernel[grid](x, value, value, stats, rows, cols, lo, hi, b, c, COMPLEMENT=True,
                                              num_warps=nw, **consts)

            def bwd():
                tp._ratio_bwd_packed_kernel[grid](grad, 1, x, value, value, stats, dx, rows, cols, lo, hi, b, c,
                                                  COMPLEMENT=True, num_warps=nw, **consts)

            try:
                fwd()
                bwd()
                errs = (rel_err(value, value_ref), rel_err(dx, dx_ref))
                t_fwd, t_bwd = timer(fwd), timer(bwd)
                print(f"| {name} | {consts['PREC']} | {nw} | 3 | {t_fwd:.1f} | {t_bwd:.1f} | {t_fwd + t_bwd:.1f} | "
                      f"{errs[0]:.1e} | {errs[1]:.1e} | {note} |", flush=True)
            except Exception as exc:  # noqa: BLE001 - as in triton_table
                print(f"| {name} | {consts['PREC']} | {nw} | 3 | - | - | - | - | - | {note}: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]} |", flush=True)
                if "CUDA" in str(exc) or "illegal" in str(exc):
                    return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
