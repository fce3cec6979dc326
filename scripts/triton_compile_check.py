"""Compile every Triton kernel of the backend for a CUDA target without a GPU, and report its resources.

``python scripts/triton_compile_check.py [--arch 90] [--sizes 28x28,32x32,31x17,224x224]`` runs Triton's full
pipeline (TTIR -> PTX -> cubin with the bundled ptxas) for the DFT-path kernels at the given plane sizes in
fp32 / fp16 / bf16 / fp64 input, the large-plane GEMM path's kernels at sizes above 64, and the FFT-path
spectrum kernels, over the autotune configurations, and prints registers and stack (spill) bytes per thread
from ``cuobjdump``, shared memory, and the share of matrix (tensor-core) instructions in the SASS. Exit status 1
if any kernel fails to compile. This is how the 32 x 32 limit of the automatic DFT path was chosen (64 x 64 IEEE blocks
spill tens of KB and take minutes to compile); run it after changing a kernel, GPU or not.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import torch

from jafr_kernels.kernels import triton_large as tl_large
from jafr_kernels.kernels import triton_packed as tp
from jafr_kernels.kernels import triton_ratio as tr
from jafr_kernels.kernels import triton_spectral as ts
from jafr_kernels.reference import RadialBand

PACKED_SAMPLES = (1, 2, 4)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_kernel(kernel, types: dict, consts: dict, num_warps: int, arch: int) -> str:
    """Compile one specialisation (``consts`` may carry the launch's ``num_stages``); return a one-line report."""
    options = {"num_warps": num_warps}
    if "num_stages" in consts:
        consts = dict(consts)
        options["num_stages"] = consts.pop("num_stages")
    signature = {name: ("constexpr" if name in consts else types[name]) for name in kernel.arg_names}
    constexprs = {(kernel.arg_names.index(k),): v for k, v in consts.items()}
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", arch, 32),
                              options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([CUOBJDUMP, "--dump-sass", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+).*STACK:(\d+)", usage)
    regs, stack = found.groups() if found else ("?", "?")
    keys = ("C", "H", "W", "NU", "VB", "SAMPLES", "BR", "HAS_WEIGHT", "BAND_CMP", "POWER", "ACC", "PREC", "PLANES", "BLOCK",
            "IS_MAG")
    shown = " ".join(f"{k}={v}" for k, v in consts.items() if k in keys)
    stages = f" stages={options['num_stages']}" if "num_stages" in options else ""
    return (f"{kernel.fn.__name__:27s} {shown:70s} warps={num_warps}{stages} regs={regs:>3s} stack={stack:>5s}B "
            f"smem={compiled.metadata.shared}B mma={mma_share(sass)} {time.perf_counter() - start:.1f}s")


def mma_share(sass: str) -> str:
    """Matrix (tensor-core) instructions among all SASS instructions: ``count/total (percent)``; HMMA
    (fp16/bf16/TF32 mma.sync), HGMMA (wgmma), DMMA (fp64) and IMMA all count."""
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
    mma = sum(1 for op in ops if re.match(r"(H|HG|D|I)MMA", op))
    return f"{mma}/{len(ops)} ({100.0 * mma / max(len(ops), 1):.1f}%)"


def cases(sizes):
    """(kernel, arg types, constexprs, num_warps) for every kernel the automatic paths launch."""
    for h, w in sizes:
        if max(h, w) > ts.MAX_DFT_SIZE:
            continue
        blocks = dict(H=h, W=w, BH=ts._block(h), BW=ts._block(w), BV=ts._block(w // 2 + 1))
        for x_type, acc in (("*fp32", tl.float32), ("*fp16", tl.float32), ("*bf16", tl.float32), ("*fp64", tl.float64)):
            p = "*fp64" if acc is tl.float64 else "*fp32"
            prec = "ieee" if acc is tl.float64 else ("tf32x3" if max(blocks["BH"], blocks["BW"]) > ts.AUTO_DFT_SIZE else "ieee")
            types = dict(x_ptr=x_type, dx_ptr=x_type, w_ptr=p, out_ptr=p, grad_ptr=p, partial_ptr=p, ch_ptr=p, sh_ptr=p,
                         cw_ptr=p, sw_ptr=p, n_planes="i32", q_lo="i64", q_hi="i64")
            common = dict(blocks, ACC=acc, PREC=prec)
            for cfg in ts._DFT_CONFIGS:
                planes, warps = cfg.kwargs["PLANES"], cfg.num_warps
                yield ts._energy_dft_kernel, types, dict(common, POWER=1, HAS_WEIGHT=False, PLANES=planes), warps
            for cfg in ts._DFT_BWD_CONFIGS:
                planes, warps = cfg.kwargs["PLANES"], cfg.num_warps
                yield ts._energy_bwd_dft_kernel, types, dict(common, POWER=2, HAS_WEIGHT=True, PLANES=planes), warps
                yield ts._magnitude_bwd_dft_kernel, types, dict(common, PLANES=planes), warps
            yield ts._magnitude_dft_kernel, types, common, 4
    yield from ratio_cases(sizes)
    for acc, p in ((tl.float32, "*fp32"), (tl.float64, "*fp64")):
        types = dict(spec_ptr=p, w_ptr=p, out_ptr=p, grad_ptr=p, q_lo="i64", q_hi="i64", n_planes="i32")
        for cfg in ts._SPECTRUM_CONFIGS:
            block, warps = cfg.kwargs["BLOCK"], cfg.num_warps
            yield ts._energy_spectrum_kernel, types, dict(H=224, W=224, POWER=1, HAS_WEIGHT=True, ACC=acc, BLOCK=block), warps
            for is_mag in (False, True):
                consts = dict(H=224, W=224, IS_MAG=is_mag, POWER=2, HAS_WEIGHT=not is_mag, ACC=acc, BLOCK=block)
                yield ts._grad_spectrum_kernel, types, consts, warps
        yield ts._magnitude_spectrum_kernel, types, dict(HV=224 * 113, ACC=acc, BLOCK=256), 4


def ratio_cases(sizes):
    """The fused ratio's DFT kernels (the default path of every penalty call): forward, backward, value and gradient."""
    for h, w in sizes:
        if max(h, w) > tr.MAX_RATIO_DFT_SIZE:
            continue
        for x_type, dtype in (("*fp32", torch.float32), ("*bf16", torch.bfloat16), ("*fp64", torch.float64)):
            p = "*fp64" if dtype == torch.float64 else "*fp32"
            types = dict(x_ptr=x_type, dx_ptr=x_type, w_ptr=p, value_ptr=p, stats_ptr=p, grad_ptr=p, syn_ptr=p,
                         ch_ptr=p, sh_ptr=p, cw_ptr=p, sw_ptr=p, q_lo="i64", q_hi="i64", grad_stride="i64", C="i32",
                         scale=p[1:])
            masks = [("low 0.25", False, RadialBand.low(0.25)), ("high 0.25", False, RadialBand.high(0.25)),
                     ("weight", True, RadialBand.all())]
            for _, has_weight, band in masks:
                meta = tr.dft_meta(3, h, w, dtype, *band.q_limits(h, w), has_weight)
                consts = dict(meta["consts"])
                warps = consts.pop("num_warps")
                consts.pop("C")  # a run-time argument of the DFT kernels
                for kernel in (tr._ratio_dft_kernel, tr._ratio_bwd_dft_kernel, tr._ratio_and_grad_dft_kernel):
                    yield kernel, types, dict(consts, COMPLEMENT=True), warps
                for samples in PACKED_SAMPLES:  # the packed path (triton_packed), several samples per program
                    meta = tp.packed_meta(h, w, dtype, *band.q_limits(h, w), has_weight, samples)
                    consts = dict(meta["consts"])
                    warps = consts.pop("num_warps")
                    packed_types = dict(types, rows_ptr=p, cols_ptr=p, B="i32")
                    for kernel in (tp._ratio_packed_kernel, tp._ratio_bwd_packed_kernel, tp._ratio_and_grad_packed_kernel):
                        yield kernel, packed_types, dict(consts, COMPLEMENT=True), warps
    yield from large_cases(sizes)
    for acc, p in ((tl.float32, "*fp32"), (tl.float64, "*fp64")):  # the FFT path's two kernels
        types = dict(spec_ptr=p, w_ptr=p, value_ptr=p, stats_ptr=p, grad_ptr=p, out_ptr=p, q_lo="i64", q_hi="i64",
                     grad_stride="i64")
        for has_weight in (False, True):
            consts = dict(C=3, H=224, W=224, HAS_WEIGHT=has_weight, COMPLEMENT=True, ACC=acc, BLOCK=1024)
            yield tr._ratio_spectrum_kernel, types, consts, 4
            yield tr._ratio_grad_spectrum_kernel, types, consts, 4


def large_cases(sizes):
    """The large-plane GEMM path's kernels (triton_large) at each size above the DFT path's, low and high band."""
    for h, w in sizes:
        if max(h, w) <= tr.MAX_RATIO_DFT_SIZE:
            continue
        for x_type, dtype in (("*fp32", torch.float32), ("*bf16", torch.bfloat16), ("*fp64", torch.float64)):
            p = "*fp64" if dtype == torch.float64 else "*fp32"
            types = dict(x_ptr=x_type, dx_ptr=x_type, w_ptr=p, part_ptr=p, value_ptr=p, stats_ptr=p, grad_ptr=p,
                         g_ptr=p, ch_ptr=p, sh_ptr=p, cw_ptr=p, sw_ptr=p, q_lo="i64", q_hi="i64", grad_stride="i64",
                         C="i32")
            for band in (RadialBand.low(0.25), RadialBand.high(0.25)):
                q = band.q_limits(h, w)
                if not tl_large.gemm_fits(tr.band_rect(h, w, *q, False)[1:3]):
                    continue
                meta = tl_large.gemm_meta(h, w, dtype, *q, False)
                kernels, warps = meta["kernels"], meta["num_warps"]
                yield tl_large._large_ratio_kernel, types, kernels["forward"], warps
                yield tl_large._large_grad_spectrum_kernel, types, kernels["spectrum"], warps
                synthesis = dict(kernels["synthesis"], COMPLEMENT=True, num_stages=tl_large.SYNTHESIS_STAGES)
                yield tl_large._large_synthesis_kernel, types, synthesis, warps
            if dtype != torch.bfloat16:
                acc = tl.float64 if dtype == torch.float64 else tl.float32
                consts = dict(N=h * w, BAND_CMP=False, COMPLEMENT=True, ACC=acc)
                yield tl_large._large_finish_kernel, types, consts, 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability as an integer (90 = H100)")
    parser.add_argument("--sizes", default="28x28,32x32,31x17,224x224,67x65",
                        help="plane sizes HxW, comma separated (DFT path up to 64, the large-plane GEMM path above)")
    parser.add_argument("--only-ratio", action="store_true", help="only the fused ratio kernels (the default path)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    failures = 0
    for kernel, types, consts, warps in (ratio_cases(sizes) if args.only_ratio else cases(sizes)):
        try:
            print(compile_kernel(kernel, types, consts, warps, args.arch), flush=True)
        except Exception as exc:  # report every failing specialisation, then fail
            failures += 1
            print(f"FAILED {kernel.fn.__name__} {consts} warps={warps}: {type(exc).__name__}: {exc}", flush=True)
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
