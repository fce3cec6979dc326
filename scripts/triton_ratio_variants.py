"""Device time of the fused ratio's DFT kernels under other launch settings, on a GPU, each checked for accuracy.

``python scripts/triton_ratio_variants.py`` launches ``_ratio_dft_kernel`` and ``_ratio_bwd_dft_kernel``
directly at the benchmark shapes with every combination of ``tl.dot`` precision (``tf32x3``, ``ieee``,
``tf32``) and warps per program (and without pipelining the channel loop), times each kernel alone (``triton.testing.do_bench``, median), and compares
value and gradient with the float64 reference (normwise relative error; fp32 maths stays far under 1e-5,
one-pass ``tf32`` does not). Prints one table, the current setting marked; exit status 2 without a GPU.
This is how the DFT path's precision and warp count are chosen.
"""
from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=150.0, help="stop starting variants after this many seconds")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("triton_ratio_variants: needs a CUDA device", file=sys.stderr)
        return 2
    import triton

    from jafr_kernels.kernels import triton_ratio as tr
    from jafr_kernels.reference import RadialBand

    start = time.perf_counter()
    band = RadialBand.low(0.25)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    print("| shape | precision | warps | stages | fwd us | bwd us | fwd+bwd us | value rel err | grad rel err | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        b, c, h, w = shape
        gen = torch.Generator(device="cuda").manual_seed(sum(shape))
        x = torch.randn(shape, generator=gen, device="cuda")
        grad = torch.randn(b, generator=gen, device="cuda")
        value_ref, dx_ref = reference(x, band, grad)
        q_lo, q_hi = band.q_limits(h, w)
        (ch, sh, cw, sw, lo, hi), current = tr._plan_for(x, None, q_lo, q_hi, "dft")
        if max(h, w) <= 32:
            variants = [(p, nw, 3) for p in ("tf32x3", "ieee", "tf32") for nw in (2, 4, 8)]
            variants += [("tf32x3", 4, 1), ("ieee", 4, 1)]  # no software pipelining of the channel loop
        else:  # 64x64 IEEE blocks take minutes to compile
            variants = [("tf32x3", nw, 3) for nw in (4, 8)] + [("tf32x3", 8, 1)]
        for prec, nw, stages in variants:
            if time.perf_counter() - start > args.time_limit:
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
                t_fwd = triton.testing.do_bench(fwd, warmup=10, rep=50, return_mode="median") * 1e3
                t_bwd = triton.testing.do_bench(bwd, warmup=10, rep=50, return_mode="median") * 1e3
                mark = "current" if (prec, nw, stages) == (current["PREC"], current["num_warps"], 3) else ""
                print(f"| {'x'.join(map(str, shape))} | {prec} | {nw} | {stages} | {t_fwd:.1f} | {t_bwd:.1f} | "
                      f"{t_fwd + t_bwd:.1f} | {errs[0]:.1e} | {errs[1]:.1e} | {mark} |", flush=True)
            except Exception as exc:  # noqa: BLE001 - a failing variant is a result; a CUDA fault ends the run
                print(f"| {'x'.join(map(str, shape))} | {prec} | {nw} | {stages} | - | - | - | - | - | "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]} |", flush=True)
                if "CUDA" in str(exc) or "illegal" in str(exc):
                    return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
