"""Triton backend, large planes: the fused power-2 band ratio as a band-limited DFT in ``tl.dot`` tiles.

For planes above the register-resident DFT kernels of :mod:`.triton_ratio` (64 x 64), a low band still touches
few rows and columns of the spectrum: at 224 x 224 and cutoff 0.25, 57 of 224 rows and 29 of 113 columns. The
``"gemm"`` path transforms only that rectangle, as two chained products per plane streamed in tiles of BR rows
by BK columns, so a plane never has to fit in registers and no spectrum is written to memory:

    Y_r = x'[r, :] (C_V - i S_V)            (BR, VB): the rows r of the plane, column DFT over v < VB
    X  += (C_U - i S_U)[:, r] Y_r           (NU, VB): accumulated over the row tiles r

with C_U, S_U (NU x H) the rows u of the rectangle (``band_rect``) and C_V, S_V (W x VB), the same factors as
the DFT path (``_row_factors``, ``_dft_matrices``). A forward+backward runs three such transforms (the backward
recomputes the band spectrum, then synthesises), 6 (2 VB H W + 4 NU VB H) flops per plane: 2.5 GFLOP at
(32, 3, 224, 224) and cutoff 0.25, instead of two full FFTs.

Kernels:

* ``_large_ratio_kernel`` (one program per plane, B C programs): pass 1 reads the plane for its max, giving the plane's power-of-two scale s_p
  (s_p max|x_p| in [1, 4)); pass 2 streams it again (from L2) through the transform and writes
  ``[s_p, E_rect(s_p x_p), sum (s_p x_p)^2]``.
* ``_large_finish_kernel`` (one program per sample): the sample's scale s_b = min_p s_p over its non-zero
  planes, the planes' sums rescaled by the exact powers of two (s_b / s_p)^2, and the value and stats of the
  ratio contract (``stats = [s_b, E_all(s_b x_b)]``, as :func:`.triton_ratio.ratio`).
* ``_large_grad_spectrum_kernel`` (one program per plane): recomputes X of s_b x_p (one pass over the plane) and
  writes the band gradient spectrum G = +-coef X (2 BU BV numbers per plane, 16 KB at 224 x 224).
* ``_large_synthesis_kernel`` (one program per plane and tile of BR rows): ``dx = s_b k_b (Re (C_U + i S_U)^T G
  (C_V + i S_V)^T + x_coef x')`` on its rows, reading G from L2 and the rows of x for the ``x`` term, writing dx
  once. Splitting the backward keeps each kernel's live operands small (no spills) and gives the synthesis
  B C H / BR programs.

A band with no upper limit (the high band) is computed as its complement, as on the DFT path (``band_rect``).
The path serves rectangles of up to ``MAX_BU`` x ``MAX_BV`` padded bins (the two (BU, BV) accumulators stay in
registers; ``scripts/triton_compile_check.py``); wider bands (a cutoff above about 0.28 at 224 x 224, weight
maps) go to cuFFT, where the FFT's N log N beats the rectangle's cost.

Precision: ``tl.dot`` in the package's precision (``JAFR_TRITON_DOT``; default the 3-pass TF32 split,
``tf32x3``, ~5e-7 per product). Errors of each choice on this transform at 224 x 224 (fp32 operands rounded as
each mode rounds them, ``scripts/large_plane_precision.py``): see that script's docstring.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from jafr_kernels.kernels.triton_common import (
    _block,
    _dft_matrices,
    _planes,
    _pow2_scale,
    _ratio_grad_scalars,
    _rect_coef,
    _row_factors,
    _sample_value,
    _tl_acc,
    dot_precision,
    forced_path,
)
from jafr_kernels.kernels.triton_ratio import band_rect, ratio_path

__all__ = ["gemm_fits", "plan_for", "ratio", "ratio_backward", "MAX_BU", "MAX_BV"]

# Largest padded rectangle (rows x columns of the band) the path keeps in registers.
MAX_BU = 64
MAX_BV = 32
# Tile of the plane streamed per step: BR rows x BK columns; 16 rows where the (BU, BV) spectrum accumulates (32
# spill there on sm_90), 32 in the synthesis, whose programs each own one row tile.
BR_SPECTRUM = 16
BR_SYNTHESIS = 32
BK = 32
# Band rows per step of the synthesis's first product (Z = (C_U + i S_U)^T G): with all 64 at once, the 3-pass
# TF32 split of G and of the row factors spilled ~2 KB per thread on sm_90; 16 at a time, none.
BUK = 16
NUM_WARPS = 4
# Software-pipelining stages of the synthesis loop: 1 (Triton's default of 3 spilled 8 bytes per thread on sm_90).
SYNTHESIS_STAGES = 1


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _plane_tile(xp, r0, k0, H: tl.constexpr, W: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
                ACC: tl.constexpr):
    """Rows r0.. and columns k0.. of a plane as a zero-padded (BR, BK) tile in ACC."""
    rr = r0 + tl.arange(0, BR)[:, None]
    rk = k0 + tl.arange(0, BK)[None, :]
    return tl.load(xp + rr * W + rk, mask=(rr < H) & (rk < W), other=0.0).to(ACC)


@triton.jit
def _column_factors(cw_ptr, sw_ptr, k0, W: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    TRANSPOSED: tl.constexpr):
    """cos/sin of columns k0.. of the (W, BV) column factors: (BK, BV), or (BV, BK) transposed."""
    rk = k0 + tl.arange(0, BK)
    rv = tl.arange(0, BV)
    if TRANSPOSED:
        offs = rk[None, :] * BV + rv[:, None]
        ok = rk[None, :] < W
    else:
        offs = rk[:, None] * BV + rv[None, :]
        ok = rk[:, None] < W
    return tl.load(cw_ptr + offs, mask=ok, other=0.0), tl.load(sw_ptr + offs, mask=ok, other=0.0)


@triton.jit
def _row_factor_tile(ch_ptr, sh_ptr, r0, H: tl.constexpr, BH: tl.constexpr, BU: tl.constexpr, BR: tl.constexpr,
                     TRANSPOSED: tl.constexpr):
    """cos/sin of the band rows at plane rows r0..: (BU, BR), or (BR, BU) transposed."""
    ru = tl.arange(0, BU)
    rr = r0 + tl.arange(0, BR)
    if TRANSPOSED:
        offs = ru[None, :] * BH + rr[:, None]
        ok = rr[:, None] < H
    else:
        offs = ru[:, None] * BH + rr[None, :]
        ok = rr[None, :] < H
    return tl.load(ch_ptr + offs, mask=ok, other=0.0), tl.load(sh_ptr + offs, mask=ok, other=0.0)


@triton.jit
def _plane_max(xp, H: tl.constexpr, W: tl.constexpr, BR: tl.constexpr, BWF: tl.constexpr, ACC: tl.constexpr):
    """max |x| over a plane, read in full-width tiles of BR rows (NaN is skipped: it shows in the sums)."""
    peak = tl.zeros((BR, BWF), dtype=ACC)
    for r0 in range(0, H, BR):
        peak = tl.maximum(peak, tl.abs(_plane_tile(xp, r0, 0, H, W, BR, BWF, ACC)))
    return tl.max(tl.max(peak, axis=1), axis=0)


@triton.jit
def _rect_spectrum(xp, s, ch_ptr, sh_ptr, cw_ptr, sw_ptr, H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr,
                   BU: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr,
                   PREC: tl.constexpr):
    """(Re X, Im X) (BU, BV) of x' = s x on the band rectangle, and sum x'^2; x streamed in (BR, BK) tiles."""
    xr = tl.zeros((BU, BV), dtype=ACC)
    xi = tl.zeros((BU, BV), dtype=ACC)
    sumsq = tl.zeros((BR, BK), dtype=ACC)
    for r0 in range(0, H, BR):
        yr = tl.zeros((BR, BV), dtype=ACC)  # Re(x' (C_V - i S_V)) over the tile's rows
        ys = tl.zeros((BR, BV), dtype=ACC)  # -Im(...)
        for k0 in range(0, W, BK):
            xt = _plane_tile(xp, r0, k0, H, W, BR, BK, ACC) * s
            cw, sw = _column_factors(cw_ptr, sw_ptr, k0, W, BK, BV, False)
            yr = tl.dot(xt, cw, yr, input_precision=PREC)
            ys = tl.dot(xt, sw, ys, input_precision=PREC)
            sumsq += xt * xt
        ch, sh = _row_factor_tile(ch_ptr, sh_ptr, r0, H, BH, BU, BR, False)
        xr = tl.dot(ch, yr, xr, input_precision=PREC)
        xr = tl.dot(-sh, ys, xr, input_precision=PREC)
        xi = tl.dot(-ch, ys, xi, input_precision=PREC)
        xi = tl.dot(-sh, yr, xi, input_precision=PREC)
    return xr, xi, tl.sum(tl.sum(sumsq, axis=1), axis=0)


# --------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=["q_lo", "q_hi"])
def _large_ratio_kernel(
    x_ptr, w_ptr, part_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, q_lo, q_hi,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BWF: tl.constexpr, BU: tl.constexpr, BV: tl.constexpr,
    UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """part[p] = [s_p, E_rect(s_p x_p), sum (s_p x_p)^2] for one plane p per program.

    Memory: reads the plane twice (the second time mostly from L2) and the DFT factors; writes three numbers.
    """
    p = tl.program_id(0).to(tl.int64)
    xp = x_ptr + p * (H * W)
    s = _pow2_scale(_plane_max(xp, H, W, BR, BWF, ACC), ACC)
    xr, xi, sumsq = _rect_spectrum(xp, s, ch_ptr, sh_ptr, cw_ptr, sw_ptr, H, W, BH, BU, BV, BR, BK, ACC, PREC)
    coef = _rect_coef(w_ptr, q_lo, q_hi, H, W, BU, BV, UR, NU, VB, HAS_WEIGHT, ACC)
    e_rect = tl.sum(tl.sum(coef * (xr * xr + xi * xi), axis=1), axis=0)
    tl.store(part_ptr + 3 * p, s)
    tl.store(part_ptr + 3 * p + 1, e_rect)
    tl.store(part_ptr + 3 * p + 2, sumsq)


@triton.jit(do_not_specialize=["C"])
def _large_finish_kernel(part_ptr, value_ptr, stats_ptr, C, N: tl.constexpr, BAND_CMP: tl.constexpr,
                         COMPLEMENT: tl.constexpr, ACC: tl.constexpr):
    """value[b], stats[b] = [s_b, E_all(s_b x_b)] from the sample's C plane results, one sample per program.

    s_b = min s_p over the planes that are not all zero (s_p = 0 marks a plane holding Inf/NaN, whose sums are
    NaN, so the sample's value is NaN); each plane's sums are rescaled by (s_b / s_p)^2, an exact power of two.
    """
    b = tl.program_id(0).to(tl.int64)
    base = part_ptr + 3 * C * b
    s_b = tl.full((), float("inf"), ACC)
    for c in range(C):
        s_p = tl.load(base + 3 * c)
        nonzero = tl.load(base + 3 * c + 2) != 0  # True for NaN
        s_b = tl.where(nonzero, tl.minimum(s_b, s_p), s_b)
    s_b = tl.where(s_b == float("inf"), 1.0, s_b)  # an all-zero sample
    e_rect = tl.zeros((), dtype=ACC)
    sumsq = tl.zeros((), dtype=ACC)
    for c in range(C):
        s_p = tl.load(base + 3 * c)
        r = tl.where(s_p > 0, s_b / tl.where(s_p > 0, s_p, 1.0), 0.0)
        e_rect += r * r * tl.load(base + 3 * c + 1)
        sumsq += r * r * tl.load(base + 3 * c + 2)
    e_all = N * sumsq
    tl.store(value_ptr + b, _sample_value(e_rect, e_all, BAND_CMP, COMPLEMENT))
    tl.store(stats_ptr + 2 * b, s_b)
    tl.store(stats_ptr + 2 * b + 1, e_all)


@triton.jit(do_not_specialize=["q_lo", "q_hi", "C"])
def _large_grad_spectrum_kernel(
    x_ptr, w_ptr, stats_ptr, g_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, q_lo, q_hi, C,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BU: tl.constexpr, BV: tl.constexpr, UR: tl.constexpr,
    NU: tl.constexpr, VB: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BAND_CMP: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """G_p = +-coef X'_p (BU, BV), re then im, into g[p] for x' = s_b x_p (b the plane's sample), one plane per
    program; the sign is - for a complement rectangle (S(m X) = N x - S(m_rect X)).

    Memory: reads the plane once and the DFT factors; writes 2 BU BV numbers (read back from L2 by the synthesis).
    """
    p = tl.program_id(0).to(tl.int64)
    s = tl.load(stats_ptr + 2 * (p // C))
    xr, xi, _ = _rect_spectrum(x_ptr + p * (H * W), s, ch_ptr, sh_ptr, cw_ptr, sw_ptr, H, W, BH, BU, BV, BR, BK, ACC,
                               PREC)
    coef = _rect_coef(w_ptr, q_lo, q_hi, H, W, BU, BV, UR, NU, VB, HAS_WEIGHT, ACC)
    if BAND_CMP:
        coef = -coef
    offs = tl.arange(0, BU)[:, None] * BV + tl.arange(0, BV)[None, :]
    tl.store(g_ptr + p * (2 * BU * BV) + offs, xr * coef)
    tl.store(g_ptr + p * (2 * BU * BV) + BU * BV + offs, xi * coef)


@triton.jit(do_not_specialize=["grad_stride", "C"])
def _large_synthesis_kernel(
    grad_ptr, grad_stride, x_ptr, value_ptr, stats_ptr, g_ptr, dx_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, C,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BU: tl.constexpr, BV: tl.constexpr, BR: tl.constexpr,
    BK: tl.constexpr, BUK: tl.constexpr, BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """dx_p = s_b k_b (S(m X'_p) - N rho_b x'_p) on rows r0 .. r0 + BR of plane p (grid: planes x row tiles),
    S(m X') = Re (C_U + i S_U)^T G (C_V + i S_V)^T (+ N x' for a complement rectangle).

    Memory: reads G (L2), the tile's rows of x and the DFT factors; writes the tile's rows of dx once.
    """
    p = tl.program_id(0).to(tl.int64)
    r0 = tl.program_id(1) * BR
    s, k, rho, rest = _ratio_grad_scalars(grad_ptr, grad_stride, value_ptr, stats_ptr, p // C, COMPLEMENT, ACC)
    if BAND_CMP:
        x_coef = rest * (H * W)
    else:
        x_coef = -rho * (H * W)
    # Z = (C_U + i S_U)^T G over the tile's rows, accumulated over slices of BUK band rows (smaller live operands)
    zr = tl.zeros((BR, BV), dtype=ACC)
    zi = tl.zeros((BR, BV), dtype=ACC)
    ru = tl.arange(0, BUK)
    rv = tl.arange(0, BV)
    rr = r0 + tl.arange(0, BR)[:, None]
    for u0 in range(0, BU, BUK):
        offs = (u0 + ru)[:, None] * BV + rv[None, :]
        gr = tl.load(g_ptr + p * (2 * BU * BV) + offs)
        gi = tl.load(g_ptr + p * (2 * BU * BV) + BU * BV + offs)
        tab = (u0 + ru)[None, :] * BH + rr
        cht = tl.load(ch_ptr + tab, mask=rr < H, other=0.0)
        sht = tl.load(sh_ptr + tab, mask=rr < H, other=0.0)
        zr = tl.dot(cht, gr, zr, input_precision=PREC)
        zr = tl.dot(-sht, gi, zr, input_precision=PREC)
        zi = tl.dot(cht, gi, zi, input_precision=PREC)
        zi = tl.dot(sht, gr, zi, input_precision=PREC)
    xp = x_ptr + p * (H * W)
    dp = dx_ptr + p * (H * W)
    for k0 in range(0, W, BK):
        cwt, swt = _column_factors(cw_ptr, sw_ptr, k0, W, BK, BV, True)
        synth = tl.dot(zr, cwt, input_precision=PREC)  # Re(Z (C_V + i S_V)^T)
        synth = tl.dot(-zi, swt, synth, input_precision=PREC)
        xt = _plane_tile(xp, r0, k0, H, W, BR, BK, ACC) * s
        dx = (k * (synth + x_coef * xt)) * s
        rk = k0 + tl.arange(0, BK)[None, :]
        tl.store(dp + rr * W + rk, dx.to(dx_ptr.dtype.element_ty), mask=(rr < H) & (rk < W))


# --------------------------------------------------------------------------- host side
def gemm_fits(rect: tuple[int, int]) -> bool:
    """Whether a band rectangle of ``rect`` = (NU rows, VB columns) fits the path's register accumulators."""
    return _block(rect[0]) <= MAX_BU and _block(rect[1]) <= MAX_BV


def gemm_meta(h: int, w: int, dtype: torch.dtype, q_lo: int, q_hi: int, has_weight: bool,
              prec: Optional[str] = None) -> dict:
    """Compile-time parameters of the path's kernels for H x W planes in ``dtype`` (also used by
    ``scripts/triton_compile_check.py``), and the mask limits."""
    ur, nu, vb, band_cmp, mask_lo, mask_hi = band_rect(h, w, q_lo, q_hi, has_weight)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    consts = dict(H=h, W=w, BH=_block(h), BU=_block(nu), BV=_block(vb), UR=ur, NU=nu, VB=vb, BR=BR_SPECTRUM, BK=BK,
                  HAS_WEIGHT=has_weight, BAND_CMP=band_cmp, ACC=_tl_acc(acc), PREC=prec or dot_precision(acc, "tf32x3"))
    names = dict(
        forward=("H", "W", "BH", "BU", "BV", "UR", "NU", "VB", "BR", "BK", "HAS_WEIGHT", "ACC", "PREC"),
        spectrum=("H", "W", "BH", "BU", "BV", "UR", "NU", "VB", "BR", "BK", "HAS_WEIGHT", "BAND_CMP", "ACC", "PREC"),
        synthesis=("H", "W", "BH", "BU", "BV", "BR", "BK", "BAND_CMP", "ACC", "PREC"))
    kernels = {kind: {n: consts[n] for n in keys} for kind, keys in names.items()}
    kernels["forward"]["BWF"] = _block(w)
    kernels["synthesis"].update(BR=BR_SYNTHESIS, BUK=BUK)
    return dict(consts=consts, kernels=kernels, limits=(mask_lo, mask_hi), bw=_block(w), num_warps=NUM_WARPS)


@functools.lru_cache(maxsize=256)
def _plan(h: int, w: int, dtype: torch.dtype, device: torch.device, q_lo: int, q_hi: int, has_weight: bool,
          path: str, prec: str):
    """``(factors, mask limits, meta)`` of the path for this geometry, or None when another path serves it."""
    rect = band_rect(h, w, q_lo, q_hi, has_weight)
    if ratio_path(h, w, rect[1:3], path) != "gemm":
        return None
    meta = gemm_meta(h, w, dtype, q_lo, q_hi, has_weight, prec)
    k = meta["consts"]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    ch, sh = _row_factors(h, k["UR"], k["NU"], k["BU"], k["BH"], device, acc)
    cw, sw = _dft_matrices(w, k["VB"], meta["bw"], k["BV"], device, acc)
    return (ch, sh, cw, sw), meta


def plan_for(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, path: str = "auto"):
    """The path's plan for this call (see :func:`_plan`), or None when the DFT or FFT path serves it."""
    _, _, h, w = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return _plan(h, w, x.dtype, x.device, int(q_lo), int(q_hi), weight is not None, forced_path(path),
                 dot_precision(acc, "tf32x3"))


def ratio(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, plan) -> tuple[Tensor, Tensor]:
    """Fused power-2 band ratio on the band-limited GEMM path (contract of :func:`.triton_ratio.ratio`);
    ``weight`` already in the accumulation dtype, ``plan`` from :func:`plan_for`."""
    x = _planes(x)
    b, c, h, w = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    (ch, sh, cw, sw), meta = plan
    k = meta["consts"]
    lo, hi = meta["limits"]
    part = torch.empty((b * c, 3), device=x.device, dtype=acc)
    value = torch.empty((b,), device=x.device, dtype=acc)
    stats = torch.empty((b, 2), device=x.device, dtype=acc)
    w_arg = weight if weight is not None else part  # never read without a weight map
    _large_ratio_kernel[(b * c,)](x, w_arg, part, ch, sh, cw, sw, lo, hi, **meta["kernels"]["forward"],
                                  num_warps=meta["num_warps"])
    _large_finish_kernel[(b,)](part, value, stats, c, N=h * w, BAND_CMP=k["BAND_CMP"], COMPLEMENT=bool(complement),
                               ACC=k["ACC"], num_warps=1)
    return value, stats


def ratio_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool,
                   value: Tensor, stats: Tensor, plan) -> Tensor:
    """Gradient of ``sum(grad * value)`` on the GEMM path (contract of :func:`.triton_ratio.ratio_backward`);
    ``grad`` (B,) in the accumulation dtype, any stride."""
    x = _planes(x)
    b, c, h, w = x.shape
    (ch, sh, cw, sw), meta = plan
    lo, hi = meta["limits"]
    k = meta["consts"]
    g = torch.empty((b * c, 2, k["BU"], k["BV"]), device=x.device, dtype=value.dtype)
    dx = torch.empty_like(x)
    w_arg = weight if weight is not None else value
    _large_grad_spectrum_kernel[(b * c,)](x, w_arg, stats, g, ch, sh, cw, sw, lo, hi, c, **meta["kernels"]["spectrum"],
                                          num_warps=meta["num_warps"])
    _large_synthesis_kernel[(b * c, triton.cdiv(h, BR_SYNTHESIS))](
        grad, grad.stride(0), x, value, stats, g, dx, ch, sh, cw, sw, c, COMPLEMENT=bool(complement),
        **meta["kernels"]["synthesis"], num_warps=meta["num_warps"], num_stages=SYNTHESIS_STAGES)
    return dx
