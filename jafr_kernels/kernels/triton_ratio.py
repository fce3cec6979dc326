"""Triton backend: the fused power-2 band ratio, one kernel forward and one kernel backward.

For one sample b (C planes of H x W, N = H W) with band mask m and Hermitian weights h_v:

    rho_b = E_band(x_b) / E_all(x_b),   E_band = sum_c sum_uv h_v m_uv |X_cuv|^2,   E_all = N sum x_b^2 (Parseval)
    value_b = rho_b, or 1 - rho_b with ``complement`` (0 for an all-zero sample either way; NaN if x_b holds NaN/Inf)
    d rho_b / d x_b = 2 (S(m X_b) - N rho_b x_b) / E_all,   S(G) = Re sum_uv h_v G_uv e^{+2 pi i (u h/H + v w/W)}

Scale: each sample is multiplied in registers by an exact power of two s_b with s_b max|x_b| in [1, 4), so
E_all stays representable in fp32 for |x| from subnormal to 3e38; the forward stores ``stats = [s_b, E_all(s_b
x_b)]`` and the backward reuses them (no host read, no second pass on the host).

Band-limited transform (planes up to 64 x 64, ``"dft"`` path): a low band ``q <= q_hi`` only touches the rows
with min(u, H-u) <= UR and the columns v < VB; the kernel transforms only those (NU rows, VB columns), as two
small products per axis with ``tl.dot``: ``X = (C_U - i S_U) x (C_V - i S_V)`` with C_U, S_U (NU x H) and
C_V, S_V (W x VB). At 32 x 32 and cutoff 0.25 that is 9 of 32 rows and 5 of 17 columns. A band with no upper
limit (a high band ``q >= q_lo``) is computed as its complement: E_band = E_all - E_low(q_lo - 1) and
S(m X) = N x - S(m_low X), so it costs the same small transform. Weight maps use every row and column. The
backward recomputes the band spectrum (it costs less than storing and re-reading it) and writes dx once.
Larger planes: the same band-limited transform streamed in tiles (``"gemm"`` path, :mod:`.triton_large`) while
the band's rectangle fits its accumulators; else (``"fft"`` path) ``torch.fft.rfft2`` (cuFFT) and one fused
kernel each way; the backward's gradient is one c2r inverse, ``dx = 2 s / E' irfft2((m - rho) s X, norm="forward")``.

Precision: x is upcast after the load; energies accumulate in fp32 (fp64 for fp64 input). For fp32 the
products use the 3-pass TF32 split (``tf32x3``): each operand is split into a TF32 head and tail and the
three significant cross products are accumulated in fp32, so every product carries a relative error of about
2^-21 (~5e-7) instead of IEEE's 2^-24; a spectral coefficient, two chained products deep, is accurate to
~1e-6 of the plane's largest coefficient and the ratio to ~1e-6 absolute. ``JAFR_TRITON_DOT=ieee`` (FMA, exact
fp32) or ``tf32`` (one pass, ~1e-3) override it.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from jafr_kernels.kernels import triton_packed
from jafr_kernels.kernels.triton_common import (
    _band,
    _block,
    _dft_matrices,
    _edge_column,
    _grad_coefs,
    _hermitian_weight,
    _plane_spectrum,
    _plane_synthesis,
    _planes,
    _pow2_scale,
    _ratio_grad_scalars,
    _rect_coef,
    _row_factors,
    _sample_value,
    _tl_acc,
    _weight,
    dot_precision,
    forced_path,
)
from jafr_kernels.reference import Q_MAX, accumulate_dtype

__all__ = ["ratio", "ratio_backward", "ratio_and_grad", "ratio_path", "band_rect", "MAX_RATIO_DFT_SIZE"]

MAX_RATIO_DFT_SIZE = 64


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _load_rect_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BU: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                        BV: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Row factors (BU, BH) and column factors (BW, BV), or their transposes (BH, BU) and (BV, BW)."""
    ru = tl.arange(0, BU)
    rh = tl.arange(0, BH)
    rw = tl.arange(0, BW)
    rv = tl.arange(0, BV)
    if TRANSPOSED:
        rows = rh[:, None] + ru[None, :] * BH
        cols = rw[None, :] * BV + rv[:, None]
    else:
        rows = ru[:, None] * BH + rh[None, :]
        cols = rw[:, None] * BV + rv[None, :]
    return tl.load(ch_ptr + rows), tl.load(sh_ptr + rows), tl.load(cw_ptr + cols), tl.load(sw_ptr + cols)


@triton.jit
def _load_sample_plane(x_ptr, c, H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                       ACC: tl.constexpr):
    rh = tl.arange(0, BH)[:, None]
    rw = tl.arange(0, BW)[None, :]
    x = tl.load(x_ptr + c * (H * W) + rh * W + rw, mask=(rh < H) & (rw < W), other=0.0)
    return x.to(ACC)


@triton.jit
def _sample_scale(xb, C, H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, ACC: tl.constexpr):
    """The sample's power-of-two scale s_b (:func:`_pow2_scale` of its max |x|), from one read of its C planes."""
    m = tl.zeros((), dtype=ACC)
    for c in range(C):
        m = tl.maximum(m, tl.max(tl.max(tl.abs(_load_sample_plane(xb, c, H, W, BH, BW, ACC)), axis=1), axis=0))
    return _pow2_scale(m, ACC)


@triton.jit
def _sample_band_energy(xb, C, s, coef, ch, sh, cw, sw, syn, cht, sht, cwt, swt, H: tl.constexpr, W: tl.constexpr,
                        BH: tl.constexpr, BW: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, SYNTH: tl.constexpr):
    """(E_rect, E_all) of x' = s x_b: sum_c sum coef |X'_c|^2 over the rectangle and N sum x'^2, each plane transformed
    once. With SYNTH, also each plane's synthesis S(coef X'_c) into ``syn`` (x's layout), while its spectrum is live."""
    e_rect = tl.zeros((), dtype=ACC)
    sumsq = tl.zeros((), dtype=ACC)
    for c in range(C):
        x = _load_sample_plane(xb, c, H, W, BH, BW, ACC) * s
        re, im = _plane_spectrum(x, ch, sh, cw, sw, PREC)
        e_rect += tl.sum(tl.sum(coef * (re * re + im * im), axis=1), axis=0)
        sumsq += tl.sum(tl.sum(x * x, axis=1), axis=0)
        if SYNTH:
            rh = tl.arange(0, BH)[:, None]
            rw = tl.arange(0, BW)[None, :]
            synth = _plane_synthesis(re * coef, im * coef, cht, sht, cwt, swt, PREC)
            tl.store(syn + c * (H * W) + rh * W + rw, synth.to(syn.dtype.element_ty), mask=(rh < H) & (rw < W))
    return e_rect, (H * W) * sumsq


# --------------------------------------------------------------------------- band-limited DFT path
@triton.jit(do_not_specialize=["q_lo", "q_hi", "C"])
def _ratio_dft_kernel(
    x_ptr, w_ptr, value_ptr, stats_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, q_lo, q_hi, C,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BU: tl.constexpr,
    BV: tl.constexpr, UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """value[b], stats[b] = [s_b, E_all(s_b x_b)] for one sample b per program.

    Memory: reads the sample once (twice from L2 when C > 1: once for its max, once to transform) and the
    small DFT factors; writes three numbers.
    """
    b = tl.program_id(0).to(tl.int64)
    xb = x_ptr + b * (C * H * W)
    ch, sh, cw, sw = _load_rect_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BU, BH, BW, BV, False)
    coef = _rect_coef(w_ptr, q_lo, q_hi, H, W, BU, BV, UR, NU, VB, HAS_WEIGHT, ACC)
    s = _sample_scale(xb, C, H, W, BH, BW, ACC)
    # no synthesis: syn and the transposed factors are placeholders, never touched
    e_rect, e_all = _sample_band_energy(xb, C, s, coef, ch, sh, cw, sw, value_ptr, ch, sh, cw, sw, H, W, BH, BW, ACC,
                                        PREC, False)
    value = _sample_value(e_rect, e_all, BAND_CMP, COMPLEMENT)
    tl.store(value_ptr + b, value)
    tl.store(stats_ptr + 2 * b, s)
    tl.store(stats_ptr + 2 * b + 1, e_all)


@triton.jit(do_not_specialize=["q_lo", "q_hi", "grad_stride", "C"])
def _ratio_bwd_dft_kernel(
    grad_ptr, grad_stride, x_ptr, w_ptr, value_ptr, stats_ptr, dx_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, q_lo, q_hi, C,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BU: tl.constexpr,
    BV: tl.constexpr, UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """dx_b = s_b k_b (S(m X'_b) - N rho_b x'_b) with x' = s_b x_b, k_b = +-2 grad_b / E_all(x'_b), one sample per program.

    Memory: reads the sample once, grad/value/stats (three numbers) and the DFT factors; writes dx once.
    """
    b = tl.program_id(0).to(tl.int64)
    s, k, rho, rest = _ratio_grad_scalars(grad_ptr, grad_stride, value_ptr, stats_ptr, b, COMPLEMENT, ACC)
    if BAND_CMP:  # band = all - rectangle: S(m X) = N x - S(m_rect X)
        band_sign = -1.0
        x_coef = rest * (H * W)
    else:
        band_sign = 1.0
        x_coef = -rho * (H * W)
    ch, sh, cw, sw = _load_rect_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BU, BH, BW, BV, False)
    cht, sht, cwt, swt = _load_rect_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BU, BH, BW, BV, True)
    coef = _rect_coef(w_ptr, q_lo, q_hi, H, W, BU, BV, UR, NU, VB, HAS_WEIGHT, ACC) * band_sign
    rh = tl.arange(0, BH)[:, None]
    rw = tl.arange(0, BW)[None, :]
    inside = (rh < H) & (rw < W)
    xb = x_ptr + b * (C * H * W)
    db = dx_ptr + b * (C * H * W)
    for c in range(C):
        x = _load_sample_plane(xb, c, H, W, BH, BW, ACC) * s
        re, im = _plane_spectrum(x, ch, sh, cw, sw, PREC)
        synth = _plane_synthesis(re * coef, im * coef, cht, sht, cwt, swt, PREC)
        dx = (k * (synth + x_coef * x)) * s
        tl.store(db + c * (H * W) + rh * W + rw, dx.to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit(do_not_specialize=["q_lo", "q_hi", "C"])
def _ratio_and_grad_dft_kernel(
    x_ptr, w_ptr, value_ptr, syn_ptr, dx_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, q_lo, q_hi, C, scale,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BU: tl.constexpr,
    BV: tl.constexpr, UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """value[b] and dx_b = scale * d value_b / d x_b in one program per sample, each plane transformed once.

    Each plane's rectangle spectrum gives its band energy and, at once, its band synthesis S(m X'_c), stored in
    ``syn`` (fp32/fp64; dx itself when x has that dtype): the sample's coefficients k_b and rho_b are known only
    after its last plane. A second pass writes dx = s_b k_b (S(m X') - N rho_b x') (see ``_ratio_bwd_dft_kernel``).
    Memory: reads the sample three times (max, transform, combine; L2-resident after the first), writes and
    re-reads syn once, writes dx once.
    """
    b = tl.program_id(0).to(tl.int64)
    xb = x_ptr + b * (C * H * W)
    sb = syn_ptr + b * (C * H * W)
    db = dx_ptr + b * (C * H * W)
    ch, sh, cw, sw = _load_rect_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BU, BH, BW, BV, False)
    cht, sht, cwt, swt = _load_rect_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BU, BH, BW, BV, True)
    coef = _rect_coef(w_ptr, q_lo, q_hi, H, W, BU, BV, UR, NU, VB, HAS_WEIGHT, ACC)
    rh = tl.arange(0, BH)[:, None]
    rw = tl.arange(0, BW)[None, :]
    inside = (rh < H) & (rw < W)
    s = _sample_scale(xb, C, H, W, BH, BW, ACC)
    e_rect, e_all = _sample_band_energy(xb, C, s, coef, ch, sh, cw, sw, sb, cht, sht, cwt, swt, H, W, BH, BW, ACC,
                                        PREC, True)
    value = _sample_value(e_rect, e_all, BAND_CMP, COMPLEMENT)
    tl.store(value_ptr + b, value)
    k, rho, rest = _grad_coefs(tl.full((), scale, ACC), value, e_all, COMPLEMENT)
    if BAND_CMP:  # band = all - rectangle: S(m X) = N x - S(m_rect X)
        band_sign = -1.0
        x_coef = rest * (H * W)
    else:
        band_sign = 1.0
        x_coef = -rho * (H * W)
    tl.debug_barrier()  # syn, written above by other threads of this program, is read below
    for c in range(C):
        x = _load_sample_plane(xb, c, H, W, BH, BW, ACC) * s
        synth = tl.load(sb + c * (H * W) + rh * W + rw, mask=inside, other=0.0).to(ACC)
        dx = (k * (band_sign * synth + x_coef * x)) * s  # s last: 2 s overflows for a subnormal sample
        tl.store(db + c * (H * W) + rh * W + rw, dx.to(dx_ptr.dtype.element_ty), mask=inside)


# --------------------------------------------------------------------------- FFT path (large planes)
@triton.jit(do_not_specialize=["q_lo", "q_hi"])
def _ratio_spectrum_kernel(
    spec_ptr, w_ptr, value_ptr, stats_ptr, q_lo, q_hi,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HAS_WEIGHT: tl.constexpr, COMPLEMENT: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """value[b], stats[b] = [s_b, E_all(s_b x_b)] from the spectrum (B*C, H, W//2+1, 2), one sample per program.

    E_all is summed from the spectrum (Parseval's other side), so x is not read. Memory: reads the sample's
    spectrum twice (its max, then the sums); writes three numbers.
    """
    b = tl.program_id(0).to(tl.int64)
    V: tl.constexpr = W // 2 + 1
    HV: tl.constexpr = H * V
    base = spec_ptr + b * (C * HV * 2)
    peak = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, C * HV, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        ok = idx < C * HV
        re = tl.load(base + 2 * idx, mask=ok, other=0.0).to(ACC)
        im = tl.load(base + 2 * idx + 1, mask=ok, other=0.0).to(ACC)
        peak = tl.maximum(peak, tl.maximum(tl.abs(re), tl.abs(im)))
    s = _pow2_scale(tl.max(peak, axis=0), ACC)
    band = tl.zeros((BLOCK,), dtype=ACC)
    total = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, C * HV, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        ok = idx < C * HV
        k = idx % HV
        u = k // V
        v = k % V
        re = tl.load(base + 2 * idx, mask=ok, other=0.0).to(ACC) * s
        im = tl.load(base + 2 * idx + 1, mask=ok, other=0.0).to(ACC) * s
        if HAS_WEIGHT:
            m = tl.load(w_ptr + k, mask=ok, other=0.0).to(ACC)
        else:
            m = tl.where(_band(u, v, q_lo, q_hi, H, W), 1.0, 0.0).to(ACC)
        p = tl.where(ok, _hermitian_weight(v, W).to(ACC) * (re * re + im * im), 0.0)
        band += m * p
        total += p
    e_all = tl.sum(total, axis=0)
    value = _sample_value(tl.sum(band, axis=0), e_all, False, COMPLEMENT)
    tl.store(value_ptr + b, value)
    tl.store(stats_ptr + 2 * b, s)
    tl.store(stats_ptr + 2 * b + 1, e_all)


@triton.jit
def _ratio_grad_factor(u, v, k_b, rho, w_ptr, q_lo, q_hi, ok, H: tl.constexpr, W: tl.constexpr,
                       HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """k_b (m_uv - rho_b): the real factor of s X_uv in the gradient spectrum."""
    if HAS_WEIGHT:
        m = tl.load(w_ptr + u * (W // 2 + 1) + v, mask=ok, other=0.0).to(ACC)
    else:
        m = tl.where(_band(u, v, q_lo, q_hi, H, W), 1.0, 0.0).to(ACC)
    return k_b * (m - rho)


@triton.jit(do_not_specialize=["q_lo", "q_hi", "grad_stride"])
def _ratio_grad_spectrum_kernel(
    spec_ptr, grad_ptr, grad_stride, w_ptr, value_ptr, stats_ptr, out_ptr, q_lo, q_hi,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, HAS_WEIGHT: tl.constexpr, COMPLEMENT: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """G = s_b k_b (m - rho_b) X' with X' = s_b X for a block of bins of one plane (grid: planes x bin blocks),
    for irfft2; s_b applied last (see ``_grad_coefs``).

    Edge columns (v = 0 and, for even W, v = W/2) are symmetrised in u, G_u <- (G_u + conj(G_-u)) / 2, so a
    weight map that is not symmetric still gives the exact gradient through the c2r inverse. Memory: reads
    the spectrum (edge bins twice) and writes G once.
    """
    plane = tl.program_id(0).to(tl.int64)
    b = plane // C
    V: tl.constexpr = W // 2 + 1
    s, k, rho, rest = _ratio_grad_scalars(grad_ptr, grad_stride, value_ptr, stats_ptr, b, COMPLEMENT, ACC)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < H * V
    u = idx // V
    v = idx % V
    base = spec_ptr + plane * (H * V * 2)
    re = tl.load(base + 2 * idx, mask=ok, other=0.0).to(ACC) * s
    im = tl.load(base + 2 * idx + 1, mask=ok, other=0.0).to(ACC) * s
    f = _ratio_grad_factor(u, v, k, rho, w_ptr, q_lo, q_hi, ok, H, W, HAS_WEIGHT, ACC)
    gr = f * re
    gi = f * im
    if HAS_WEIGHT:
        edge = ok & _edge_column(v, W)
        um = (H - u) % H
        midx = um * V + v
        re_m = tl.load(base + 2 * midx, mask=edge, other=0.0).to(ACC) * s
        im_m = tl.load(base + 2 * midx + 1, mask=edge, other=0.0).to(ACC) * s
        f_m = _ratio_grad_factor(um, v, k, rho, w_ptr, q_lo, q_hi, edge, H, W, HAS_WEIGHT, ACC)
        gr = tl.where(edge, 0.5 * (gr + f_m * re_m), gr)
        gi = tl.where(edge, 0.5 * (gi - f_m * im_m), gi)
    obase = out_ptr + plane * (H * V * 2)
    tl.store(obase + 2 * idx, gr * s, mask=ok)
    tl.store(obase + 2 * idx + 1, gi * s, mask=ok)


# --------------------------------------------------------------------------- host side
def _isqrt(n: int) -> int:
    return math.isqrt(n) if n > 0 else 0


def band_rect(h: int, w: int, q_lo: int, q_hi: int, has_weight: bool) -> tuple[int, int, int, bool, int, int]:
    """The rectangle of bins the kernel transforms: ``(UR, NU, VB, band_cmp, mask_lo, mask_hi)``.

    Rows u with min(u, H-u) <= UR (NU of them; all H rows when they cover the plane), columns v < VB. A band
    with an upper limit uses the rectangle of the low band q <= q_hi and the mask [q_lo, q_hi]; a band without
    one uses its complement, the low band [0, q_lo - 1] (``band_cmp``). Weight maps take every bin.
    """
    v_all = w // 2 + 1
    if has_weight:
        return h, h, v_all, False, 0, Q_MAX
    band_cmp = q_hi >= Q_MAX
    mask_lo, mask_hi = (0, q_lo - 1) if band_cmp else (q_lo, q_hi)
    if mask_hi < 0:  # empty rectangle band (e.g. the all-pass band's complement): one zero-mask bin
        return 0, 1, 1, band_cmp, 0, -1
    ur = min(h // 2, _isqrt(mask_hi // (w * w)))
    vb = min(w // 2, _isqrt(mask_hi // (h * h))) + 1
    nu = h if 2 * ur + 1 >= h else 2 * ur + 1
    return (h if nu == h else ur), nu, vb, band_cmp, mask_lo, mask_hi


def ratio_path(h: int, w: int, rect: tuple[int, int], path: str = "auto") -> str:
    """``"dft"`` (band-limited matrix DFT), ``"packed"`` (the same, several samples per program with packed
    factors: :mod:`.triton_packed`), ``"gemm"`` (streamed in tiles: :mod:`.triton_large`) or ``"fft"`` for
    H x W planes whose rectangle has ``rect`` = (NU, VB).

    ``auto``: the DFT up to 32 x 32, and up to 64 x 64 while the rectangle fits 32 x 16 blocks (wider ones
    need more registers and shared memory than a multiprocessor has: ``scripts/triton_compile_check.py``);
    else the tiled GEMM path while the rectangle fits its accumulators, else the FFT. ``path`` (the launchers
    also read the environment's ``JAFR_TRITON_PATH``) forces one.
    """
    from jafr_kernels.kernels.triton_large import gemm_fits  # noqa: PLC0415 (that module imports this one)

    if path not in ("auto", "dft", "packed", "gemm", "fft"):
        raise ValueError(f"path must be 'auto', 'dft', 'packed', 'gemm' or 'fft', got {path!r}")
    if path == "auto":
        small = max(h, w) <= 32 or (max(h, w) <= MAX_RATIO_DFT_SIZE and _block(rect[0]) <= 32 and _block(rect[1]) <= 16)
        return "dft" if small else ("gemm" if gemm_fits(rect) else "fft")
    if path in ("dft", "packed") and max(h, w) > MAX_RATIO_DFT_SIZE:
        raise ValueError(f"path={path!r} serves planes up to {MAX_RATIO_DFT_SIZE}x{MAX_RATIO_DFT_SIZE}, got {h}x{w}")
    if path == "gemm" and not gemm_fits(rect):
        raise ValueError(f"path='gemm' serves band rectangles that fit its accumulators, got {rect} rows x columns")
    return path


def dft_meta(c: int, h: int, w: int, dtype: torch.dtype, q_lo: int, q_hi: int, has_weight: bool,
             prec: Optional[str] = None) -> dict:
    """Compile-time parameters of the DFT-path kernels for C planes of H x W in ``dtype`` (also used by
    ``scripts/triton_compile_check.py``), and the mask limits.

    Warps per program: 2 up to 32 x 32, 4 above. Each program's chain of small dependent products is latency
    bound, and fewer warps per program convert fewer layouts across warps: on an H100 the forward+backward at
    (4096, 3, 32, 32) took 175 us with 2 warps, 307 with 4, 678 with 8, and at (256, 3, 64, 64) 76 us with 4
    against 142 with 8 (``scripts/ratio_variants.py``; benchmarks/results/ratio-variants-*.md).
    """
    ur, nu, vb, band_cmp, mask_lo, mask_hi = band_rect(h, w, q_lo, q_hi, has_weight)
    bh, bw, bu, bv = _block(h), _block(w), _block(nu), _block(vb)
    acc = accumulate_dtype(dtype)
    consts = dict(C=c, H=h, W=w, BH=bh, BW=bw, BU=bu, BV=bv, UR=ur, NU=nu, VB=vb, HAS_WEIGHT=has_weight,
                  BAND_CMP=band_cmp, ACC=_tl_acc(acc), PREC=prec or dot_precision(acc, "tf32x3"),
                  num_warps=4 if max(bh, bw) > 32 else 2)
    return dict(consts=consts, limits=(mask_lo, mask_hi))


@functools.lru_cache(maxsize=256)
def _dft_plan(c: int, h: int, w: int, dtype: torch.dtype, device: torch.device, q_lo: int, q_hi: int,
              has_weight: bool, path: str, prec: str):
    """``(factors and mask limits, constexprs)`` of the DFT path for this call's geometry, or None for the FFT
    path: everything a launch needs that does not depend on the data, computed once per geometry."""
    rect = band_rect(h, w, q_lo, q_hi, has_weight)
    if ratio_path(h, w, rect[1:3], path) != "dft":
        return None
    meta = dft_meta(c, h, w, dtype, q_lo, q_hi, has_weight, prec)
    k = meta["consts"]
    acc = accumulate_dtype(dtype)
    ch, sh = _row_factors(h, k["UR"], k["NU"], k["BU"], k["BH"], device, acc)
    cw, sw = _dft_matrices(w, k["VB"], k["BW"], k["BV"], device, acc)
    return (ch, sh, cw, sw, *meta["limits"]), k


def _plan_for(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, path: str):
    _, c, h, w = x.shape
    acc = accumulate_dtype(x.dtype)
    return _dft_plan(c, h, w, x.dtype, x.device, int(q_lo), int(q_hi), weight is not None,
                     forced_path(path), dot_precision(acc, "tf32x3"))


def _packed(x: Tensor, path: str) -> bool:
    """Whether this call takes the ``"packed"`` small-plane path (``path`` or, for ``"auto"``, the environment's
    ``JAFR_TRITON_PATH`` names it); planes above 64 x 64 raise."""
    if forced_path(path) != "packed":
        return False
    ratio_path(*x.shape[-2:], (0, 0), "packed")  # raises for planes above 64 x 64
    return True


def _large():
    """The large-plane GEMM path's module (imported on first use: it imports this one)."""
    from jafr_kernels.kernels import triton_large  # noqa: PLC0415

    return triton_large


def _spectrum(x: Tensor, acc: torch.dtype) -> Tensor:
    return torch.view_as_real(torch.fft.rfft2(x if x.dtype == acc else x.to(acc)))


def ratio(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, *,
          path: str = "auto") -> tuple[Tensor, Tensor]:
    """Fused power-2 band ratio of each sample.

    Args:
        x: (B, C, H, W) float16/bfloat16/float32/float64.
        weight: (H, W//2+1) mask values, or None for the radial band ``q_lo <= q(u, v) <= q_hi``.
        complement: return ``1 - rho`` (0 for all-zero samples) instead of ``rho``.
        path: ``"auto"``, ``"dft"`` or ``"packed"`` (planes up to 64 x 64), ``"gemm"`` (narrow bands) or ``"fft"``.

    Returns:
        ``(value (B,), stats (B, 2))`` in float32 (float64 for float64 input); ``stats = [s_b, E_all(s_b x_b)]``
        is the state :func:`ratio_backward` needs. A sample holding NaN/Inf gets value NaN.
    """
    x = _planes(x)
    b, c, h, w = x.shape
    acc = accumulate_dtype(x.dtype)
    wt = _weight(weight, x, acc)
    if _packed(x, path):
        return triton_packed.ratio(x, wt, q_lo, q_hi, complement)
    value = torch.empty((b,), device=x.device, dtype=acc)
    stats = torch.empty((b, 2), device=x.device, dtype=acc)
    w_arg = wt if wt is not None else value  # never read without a weight map
    plan = _plan_for(x, wt, q_lo, q_hi, path)
    gemm = None if plan is not None else _large().plan_for(x, wt, q_lo, q_hi, path)
    if gemm is not None:
        return _large().ratio(x, wt, q_lo, q_hi, complement, gemm)
    if plan is not None:
        (ch, sh, cw, sw, lo, hi), consts = plan
        _ratio_dft_kernel[(b,)](x, w_arg, value, stats, ch, sh, cw, sw, lo, hi, COMPLEMENT=bool(complement), **consts)
    else:
        spec = _spectrum(x, acc)
        _ratio_spectrum_kernel[(b,)](spec, w_arg, value, stats, int(q_lo), int(q_hi), C=c, H=h, W=w,
                                     HAS_WEIGHT=wt is not None, COMPLEMENT=bool(complement), ACC=_tl_acc(x.dtype),
                                     BLOCK=1024, num_warps=4)
    return value, stats


def ratio_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool,
                   value: Tensor, stats: Tensor, *, path: str = "auto") -> Tensor:
    """Gradient of ``sum(grad * ratio(x, ...)[0])`` with respect to x (dtype and shape of x, contiguous).

    ``grad`` (B,) may be any 1-D view (an expanded scalar included: it is read through its stride).
    """
    x = _planes(x)
    b, c, h, w = x.shape
    acc = accumulate_dtype(x.dtype)
    if grad.shape != (b,):
        raise ValueError(f"grad must have shape (B,) = ({b},), got {tuple(grad.shape)}")
    if grad.dtype != acc:
        grad = grad.to(acc)
    wt = _weight(weight, x, acc)
    if _packed(x, path):
        return triton_packed.ratio_backward(grad, x, wt, q_lo, q_hi, complement, value, stats)
    w_arg = wt if wt is not None else value
    plan = _plan_for(x, wt, q_lo, q_hi, path)
    gemm = None if plan is not None else _large().plan_for(x, wt, q_lo, q_hi, path)
    if gemm is not None:
        return _large().ratio_backward(grad, x, wt, q_lo, q_hi, complement, value, stats, gemm)
    if plan is not None:
        dx = torch.empty_like(x)
        (ch, sh, cw, sw, lo, hi), consts = plan
        _ratio_bwd_dft_kernel[(b,)](grad, grad.stride(0), x, w_arg, value, stats, dx, ch, sh, cw, sw, lo, hi,
                                    COMPLEMENT=bool(complement), **consts)
        return dx
    spec = _spectrum(x, acc)
    gspec = torch.empty_like(spec)
    block = 1024
    _ratio_grad_spectrum_kernel[(b * c, triton.cdiv(h * (w // 2 + 1), block))](
        spec, grad, grad.stride(0), w_arg, value, stats, gspec, int(q_lo), int(q_hi), C=c, H=h, W=w,
        HAS_WEIGHT=wt is not None, COMPLEMENT=bool(complement), ACC=_tl_acc(x.dtype), BLOCK=block, num_warps=4)
    dx = torch.fft.irfft2(torch.view_as_complex(gspec), s=(h, w), norm="forward")
    return dx if dx.dtype == x.dtype else dx.to(x.dtype)


def ratio_and_grad(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, scale: float, *,
                   path: str = "auto") -> tuple[Tensor, Tensor]:
    """Value and gradient of the fused ratio in one call: ``(value (B,), dx)`` with ``dx = scale * d value / dx``.

    The gradient of ``scale * sum(value)`` without an autograd graph. DFT path (planes up to 64 x 64): one
    launch, each plane's band spectrum serving both. FFT path: :func:`ratio` then :func:`ratio_backward`
    (two launches around one rfft2 each, and the irfft2). Arguments as in :func:`ratio`.
    """
    x = _planes(x)
    b = x.shape[0]
    acc = accumulate_dtype(x.dtype)
    wt = _weight(weight, x, acc)
    if _packed(x, path):
        return triton_packed.ratio_and_grad(x, wt, q_lo, q_hi, complement, scale)
    plan = _plan_for(x, wt, q_lo, q_hi, path)
    if plan is None:
        value, stats = ratio(x, wt, q_lo, q_hi, complement, path=path)
        grad = torch.full((1,), scale, device=x.device, dtype=acc).expand(b)
        return value, ratio_backward(grad, x, wt, q_lo, q_hi, complement, value, stats, path=path)
    value = torch.empty((b,), device=x.device, dtype=acc)
    dx = torch.empty_like(x)
    syn = dx if x.dtype == acc else torch.empty(x.shape, device=x.device, dtype=acc)
    (ch, sh, cw, sw, lo, hi), consts = plan
    _ratio_and_grad_dft_kernel[(b,)](x, wt if wt is not None else value, value, syn, dx, ch, sh, cw, sw, lo, hi,
                                     scale=float(scale), COMPLEMENT=bool(complement), **consts)
    return value, dx
