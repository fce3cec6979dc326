"""Triton backend, small planes: the fused ratio with several samples per program and packed DFT factors
(the ``"packed"`` path; same maths and contract as the ``"dft"`` path of :mod:`.triton_ratio`).

The ``"dft"`` kernels transform one plane at a time in six (forward) and twelve (backward) products whose sides
are the 16-padded band rectangle (at 32 x 32 and cutoff 0.25, 9 x 5 bins in 16 x 16 blocks). Here a program
takes SAMPLES samples, and each transform is two products:

    T = [C_U; S_U] x                 (2BU, BH) @ (BH, SAMPLES*BW): the samples' planes side by side
    A = T' F,  F = [[C_V, S_V],      (SAMPLES*BU, 2BW) @ (2BW, BVP), T' holding [C_U x | S_U x] per sample
                    [-S_V, C_V]]

so ``A = [Re X | -Im X]`` of every sample's band rectangle: the cosine and sine columns share one operand and
one block (2 VB columns padded to a power of two: 16 at 32 x 32 where ``"dft"`` pads each to 16), and the
products' free sides grow with SAMPLES (64 and 128 at 32 x 32 with four samples). With ``coef`` the band's
h_v m(u, v) repeated over both halves, ``E_rect = sum coef A^2``, and the band synthesis ``S(coef X)`` of the
gradient is the adjoint of x -> A applied to ``coef A``: the same two products transposed,

    x_syn = [C_U; S_U]^T (coef A F^T)'

(``'`` the inverse rearrangement), exact by construction. Scale, band complement, value and gradient
formulas, precision and the value-and-gradient kernel's two passes are those of :mod:`.triton_ratio`.

Resources for sm_90 (``scripts/triton_compile_check.py``, cutoff 0.25): for radial bands no spills at 16, 28
and 32 with one or two samples per program in fp32 and fp64 (8 bytes in the bf16 value-and-gradient kernel at
32 x 32 with two; fp32 at 32 x 32, two samples: forward / backward 1840 / 1968 SASS instructions on 4
warps against the ``"dft"`` kernels' 1696 / 2104 on 2 warps per sample, matrix instructions 144 / 168 against
144 / 240); four samples at 32 x 32, 64 x 64 planes and weight maps (every bin) spill, where ``"dft"`` does
not. Which small-plane path is faster is a GPU measurement (the quick benchmark times both at
(4096, 3, 32, 32): ``configs.QUICK_PATH_CASES``); until one is recorded in benchmarks/results/ the automatic
choice stays ``"dft"`` and this path is taken only when asked for (``path="packed"``, ``JAFR_TRITON_PATH``).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from jafr_kernels.kernels.triton_common import (
    _bin_coef,
    _block,
    _dft_matrices,
    _grad_coefs,
    _planes,
    _pow2_scale,
    _ratio_grad_scalars,
    _row_factors,
    _sample_value,
    _tl_acc,
    dot_precision,
)
from jafr_kernels.reference import accumulate_dtype

__all__ = ["packed_meta", "plan_for", "ratio", "ratio_backward", "ratio_and_grad", "default_samples"]


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _load_factors(rows_ptr, cols_ptr, BU: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BVP: tl.constexpr,
                  TRANSPOSED: tl.constexpr):
    """[C_U; S_U] (2BU, BH) and F (2BW, BVP), or their transposes (BH, 2BU) and (BVP, 2BW)."""
    r2u = tl.arange(0, 2 * BU)
    rh = tl.arange(0, BH)
    r2w = tl.arange(0, 2 * BW)
    rv = tl.arange(0, BVP)
    if TRANSPOSED:
        rows = tl.load(rows_ptr + r2u[None, :] * BH + rh[:, None])
        cols = tl.load(cols_ptr + r2w[None, :] * BVP + rv[:, None])
    else:
        rows = tl.load(rows_ptr + r2u[:, None] * BH + rh[None, :])
        cols = tl.load(cols_ptr + r2w[:, None] * BVP + rv[None, :])
    return rows, cols


@triton.jit
def _tile_offsets(b0, B, C, c, H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                  SAMPLES: tl.constexpr):
    """Offsets and mask of plane c of samples b0 .. b0+SAMPLES-1 laid side by side as a (BH, SAMPLES*BW) tile."""
    rh = tl.arange(0, BH)[:, None]
    col = tl.arange(0, SAMPLES * BW)[None, :]
    b = b0 + col // BW
    w = col % BW
    return (b * C + c) * (H * W) + rh * W + w, (rh < H) & (w < W) & (b < B)


@triton.jit
def _per_sample(t, BH: tl.constexpr, BW: tl.constexpr, SAMPLES: tl.constexpr, MAX: tl.constexpr):
    """(SAMPLES,) sums (or maxima) of a (BH, SAMPLES*BW) tile over each sample's columns."""
    t = tl.reshape(t, (BH, SAMPLES, BW))
    if MAX:
        return tl.max(tl.max(t, axis=2), axis=0)
    return tl.sum(tl.sum(t, axis=2), axis=0)


@triton.jit
def _per_column(s, BW: tl.constexpr, SAMPLES: tl.constexpr):
    """(1, SAMPLES*BW): each sample's number repeated over its columns of a tile."""
    return tl.reshape(tl.broadcast_to(s[:, None], (SAMPLES, BW)), (1, SAMPLES * BW))


@triton.jit
def _spectrum(x, rows, cols, BU: tl.constexpr, BW: tl.constexpr, SAMPLES: tl.constexpr, PREC: tl.constexpr):
    """A = [Re X | -Im X] (SAMPLES*BU, BVP) of the tile x (BH, SAMPLES*BW)."""
    t = tl.dot(rows, x, input_precision=PREC)  # (2BU, SAMPLES*BW): [C_U x; S_U x]
    t = tl.reshape(tl.permute(tl.reshape(t, (2, BU, SAMPLES, BW)), (2, 1, 0, 3)), (SAMPLES * BU, 2 * BW))
    return tl.dot(t, cols, input_precision=PREC)


@triton.jit
def _synthesis(z, rows_t, cols_t, BU: tl.constexpr, BW: tl.constexpr, SAMPLES: tl.constexpr, PREC: tl.constexpr):
    """The adjoint of :func:`_spectrum`: a (BH, SAMPLES*BW) tile from z (SAMPLES*BU, BVP)."""
    t = tl.dot(z, cols_t, input_precision=PREC)  # (SAMPLES*BU, 2BW)
    t = tl.reshape(tl.permute(tl.reshape(t, (SAMPLES, BU, 2, BW)), (2, 1, 0, 3)), (2 * BU, SAMPLES * BW))
    return tl.dot(rows_t, t, input_precision=PREC)


@triton.jit
def _packed_coef(w_ptr, q_lo, q_hi, H: tl.constexpr, W: tl.constexpr, BU: tl.constexpr, BVP: tl.constexpr,
                 UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, SAMPLES: tl.constexpr,
                 HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """(SAMPLES*BU, BVP) h_v m(u, v) in A's layout: rows u_i (``_rect_rows``) per sample, columns v then v again."""
    i = tl.arange(0, SAMPLES * BU) % BU
    u = tl.where(i <= UR, i, H - (i - UR))[:, None]
    k = tl.arange(0, BVP)[None, :]
    v = tl.where(k < VB, k, k - VB)
    return _bin_coef(w_ptr, u, v, (i < NU)[:, None] & (k < 2 * VB), q_lo, q_hi, H, W, HAS_WEIGHT, ACC)


@triton.jit
def _samples_scale(x_ptr, b0, B, C, H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                   SAMPLES: tl.constexpr, ACC: tl.constexpr):
    """(SAMPLES,) power-of-two scales s_b (:func:`_pow2_scale` of each sample's max |x|)."""
    m = tl.zeros((SAMPLES,), dtype=ACC)
    for c in range(C):
        offs, ok = _tile_offsets(b0, B, C, c, H, W, BH, BW, SAMPLES)
        x = tl.abs(tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC))
        m = tl.maximum(m, _per_sample(x, BH, BW, SAMPLES, True))
    return _pow2_scale(m, ACC)


@triton.jit
def _samples_energy(x_ptr, syn_ptr, b0, B, C, s_col, coef, rows, cols, rows_t, cols_t, H: tl.constexpr,
                    W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BU: tl.constexpr, BVP: tl.constexpr,
                    SAMPLES: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, SYNTH: tl.constexpr):
    """(E_rect, E_all) (SAMPLES,) of x' = s x over the C planes; with SYNTH also each plane's synthesis
    S(coef X') into ``syn_ptr`` (x's layout) while its spectrum is live."""
    e_rect = tl.zeros((SAMPLES,), dtype=ACC)
    sumsq = tl.zeros((SAMPLES,), dtype=ACC)
    for c in range(C):
        offs, ok = _tile_offsets(b0, B, C, c, H, W, BH, BW, SAMPLES)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC) * s_col
        a = _spectrum(x, rows, cols, BU, BW, SAMPLES, PREC)
        e_rect += tl.sum(tl.sum(tl.reshape(coef * a * a, (SAMPLES, BU, BVP)), axis=2), axis=1)
        sumsq += _per_sample(x * x, BH, BW, SAMPLES, False)
        if SYNTH:
            synth = _synthesis(coef * a, rows_t, cols_t, BU, BW, SAMPLES, PREC)
            tl.store(syn_ptr + offs, synth.to(syn_ptr.dtype.element_ty), mask=ok)
    return e_rect, (H * W) * sumsq


@triton.jit
def _band_terms(rho, rest, BAND_CMP: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """(sign of the rectangle's synthesis, coefficient of x') in S(m X') - N rho x' (band = all - rectangle with
    BAND_CMP: S(m X) = N x - S(m_rect X))."""
    if BAND_CMP:
        return -1.0, rest * (H * W)
    return 1.0, -rho * (H * W)


# --------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=["q_lo", "q_hi", "B", "C"])
def _ratio_packed_kernel(
    x_ptr, w_ptr, value_ptr, stats_ptr, rows_ptr, cols_ptr, q_lo, q_hi, B, C,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BU: tl.constexpr, BVP: tl.constexpr,
    UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, SAMPLES: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """value[b], stats[b] = [s_b, E_all(s_b x_b)] for SAMPLES samples per program."""
    b0 = tl.program_id(0).to(tl.int64) * SAMPLES
    rows, cols = _load_factors(rows_ptr, cols_ptr, BU, BH, BW, BVP, False)
    coef = _packed_coef(w_ptr, q_lo, q_hi, H, W, BU, BVP, UR, NU, VB, SAMPLES, HAS_WEIGHT, ACC)
    s = _samples_scale(x_ptr, b0, B, C, H, W, BH, BW, SAMPLES, ACC)
    # no synthesis: syn and the transposed factors are placeholders, never touched
    e_rect, e_all = _samples_energy(x_ptr, value_ptr, b0, B, C, _per_column(s, BW, SAMPLES), coef, rows, cols, rows,
                                    cols, H, W, BH, BW, BU, BVP, SAMPLES, ACC, PREC, False)
    b = b0 + tl.arange(0, SAMPLES)
    ok = b < B
    tl.store(value_ptr + b, _sample_value(e_rect, e_all, BAND_CMP, COMPLEMENT), mask=ok)
    tl.store(stats_ptr + 2 * b, s, mask=ok)
    tl.store(stats_ptr + 2 * b + 1, e_all, mask=ok)


@triton.jit(do_not_specialize=["q_lo", "q_hi", "grad_stride", "B", "C"])
def _ratio_bwd_packed_kernel(
    grad_ptr, grad_stride, x_ptr, w_ptr, value_ptr, stats_ptr, dx_ptr, rows_ptr, cols_ptr, q_lo, q_hi, B, C,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BU: tl.constexpr, BVP: tl.constexpr,
    UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, SAMPLES: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """dx_b = s_b k_b (S(m X'_b) - N rho_b x'_b), x' = s_b x_b, for SAMPLES samples per program."""
    b0 = tl.program_id(0).to(tl.int64) * SAMPLES
    b = tl.minimum(b0 + tl.arange(0, SAMPLES), B - 1)  # a short last program re-reads a valid sample
    s, k, rho, rest = _ratio_grad_scalars(grad_ptr, grad_stride, value_ptr, stats_ptr, b, COMPLEMENT, ACC)
    band_sign, x_coef = _band_terms(rho, rest, BAND_CMP, H, W)
    rows, cols = _load_factors(rows_ptr, cols_ptr, BU, BH, BW, BVP, False)
    rows_t, cols_t = _load_factors(rows_ptr, cols_ptr, BU, BH, BW, BVP, True)
    coef = _packed_coef(w_ptr, q_lo, q_hi, H, W, BU, BVP, UR, NU, VB, SAMPLES, HAS_WEIGHT, ACC) * band_sign
    s_col = _per_column(s, BW, SAMPLES)
    k_col = _per_column(k, BW, SAMPLES)
    x_col = _per_column(x_coef, BW, SAMPLES)
    for c in range(C):
        offs, ok = _tile_offsets(b0, B, C, c, H, W, BH, BW, SAMPLES)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC) * s_col
        synth = _synthesis(coef * _spectrum(x, rows, cols, BU, BW, SAMPLES, PREC), rows_t, cols_t, BU, BW, SAMPLES,
                           PREC)
        dx = (k_col * (synth + x_col * x)) * s_col  # s last: 2 s overflows for a subnormal sample
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["q_lo", "q_hi", "B", "C"])
def _ratio_and_grad_packed_kernel(
    x_ptr, w_ptr, value_ptr, syn_ptr, dx_ptr, rows_ptr, cols_ptr, q_lo, q_hi, B, C, scale,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BU: tl.constexpr, BVP: tl.constexpr,
    UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, SAMPLES: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """value[b] and dx_b = scale * d value_b / d x_b, SAMPLES samples per program, each plane transformed once:
    its synthesis goes to ``syn`` while its spectrum is live, and a second pass combines (as
    ``_ratio_and_grad_dft_kernel``)."""
    b0 = tl.program_id(0).to(tl.int64) * SAMPLES
    rows, cols = _load_factors(rows_ptr, cols_ptr, BU, BH, BW, BVP, False)
    rows_t, cols_t = _load_factors(rows_ptr, cols_ptr, BU, BH, BW, BVP, True)
    coef = _packed_coef(w_ptr, q_lo, q_hi, H, W, BU, BVP, UR, NU, VB, SAMPLES, HAS_WEIGHT, ACC)
    s = _samples_scale(x_ptr, b0, B, C, H, W, BH, BW, SAMPLES, ACC)
    s_col = _per_column(s, BW, SAMPLES)
    e_rect, e_all = _samples_energy(x_ptr, syn_ptr, b0, B, C, s_col, coef, rows, cols, rows_t, cols_t, H, W, BH, BW,
                                    BU, BVP, SAMPLES, ACC, PREC, True)
    value = _sample_value(e_rect, e_all, BAND_CMP, COMPLEMENT)
    b = b0 + tl.arange(0, SAMPLES)
    tl.store(value_ptr + b, value, mask=b < B)
    k, rho, rest = _grad_coefs(tl.full((SAMPLES,), scale, ACC), value, e_all, COMPLEMENT)
    band_sign, x_coef = _band_terms(rho, rest, BAND_CMP, H, W)
    k_col = _per_column(k, BW, SAMPLES)
    x_col = _per_column(x_coef, BW, SAMPLES)
    tl.debug_barrier()  # syn, written above by other threads of this program, is read below
    for c in range(C):
        offs, ok = _tile_offsets(b0, B, C, c, H, W, BH, BW, SAMPLES)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC) * s_col
        synth = tl.load(syn_ptr + offs, mask=ok, other=0.0).to(ACC)
        dx = (k_col * (band_sign * synth + x_col * x)) * s_col
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- host side
def default_samples(h: int, w: int) -> int:
    """Samples per program: planes side by side up to 64 padded columns (2 at 32 x 32, 1 at 64 x 64); four at
    32 x 32 spill in the backward (``scripts/triton_compile_check.py``)."""
    return max(1, 64 // _block(w))


def _warps(values: int) -> int:
    """Warps per program: one per 512 values of a tile (2 to 8), so no kernel spills at 32 x 32
    (``scripts/triton_compile_check.py``)."""
    return max(2, min(8, values // 512))


def packed_meta(h: int, w: int, dtype: torch.dtype, q_lo: int, q_hi: int, has_weight: bool,
                samples: Optional[int] = None, prec: Optional[str] = None) -> dict:
    """Compile-time parameters of the path's kernels (also used by ``scripts/triton_compile_check.py`` and
    ``scripts/ratio_variants.py``) and the mask limits. ``samples`` defaults to :func:`default_samples`."""
    from jafr_kernels.kernels.triton_ratio import band_rect  # noqa: PLC0415 (that module imports this one)

    ur, nu, vb, band_cmp, mask_lo, mask_hi = band_rect(h, w, q_lo, q_hi, has_weight)
    samples = samples or default_samples(h, w)
    if samples & (samples - 1):
        raise ValueError(f"samples per program must be a power of two, got {samples}")
    bh, bw = _block(h), _block(w)
    acc = accumulate_dtype(dtype)
    consts = dict(H=h, W=w, BH=bh, BW=bw, BU=_block(nu), BVP=_block(2 * vb), UR=ur, NU=nu, VB=vb, SAMPLES=samples,
                  HAS_WEIGHT=has_weight, BAND_CMP=band_cmp, ACC=_tl_acc(acc),
                  PREC=prec or dot_precision(acc, "tf32x3"), num_warps=_warps(samples * bh * bw))
    return dict(consts=consts, limits=(mask_lo, mask_hi))


def _factors(h: int, w: int, ur: int, nu: int, vb: int, bu: int, bh: int, bw: int, bvp: int, device: torch.device,
             dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """[C_U; S_U] (2BU, BH) and F = [[C_V, S_V], [-S_V, C_V]] (2BW, BVP), zero-padded."""
    ch, sh = _row_factors(h, ur, nu, bu, bh, device, dtype)
    cw, sw = _dft_matrices(w, vb, bw, _block(vb), device, dtype)
    cw, sw = cw[:, :vb], sw[:, :vb]
    cols = torch.zeros(2 * bw, bvp, device=device, dtype=dtype)
    cols[:bw, :vb], cols[:bw, vb:2 * vb] = cw, sw
    cols[bw:, :vb], cols[bw:, vb:2 * vb] = -sw, cw
    return torch.cat([ch, sh]).contiguous(), cols


def plan_for(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, samples: Optional[int] = None):
    """``((rows, cols, mask_lo, mask_hi), constexprs)`` of this call's geometry (do not modify: cached);
    ``samples`` defaults to the environment's ``JAFR_TRITON_SAMPLES``, else :func:`default_samples`."""
    _, _, h, w = x.shape
    samples = samples or int(os.environ.get("JAFR_TRITON_SAMPLES", 0)) or None
    return _plan(h, w, x.dtype, x.device, int(q_lo), int(q_hi), weight is not None, samples,
                 dot_precision(accumulate_dtype(x.dtype), "tf32x3"))


@functools.lru_cache(maxsize=256)
def _plan(h: int, w: int, dtype: torch.dtype, device: torch.device, q_lo: int, q_hi: int, has_weight: bool,
          samples: Optional[int], prec: str):
    """Everything a launch needs that does not depend on the data, computed once per geometry."""
    meta = packed_meta(h, w, dtype, q_lo, q_hi, has_weight, samples, prec)
    k = meta["consts"]
    rows, cols = _factors(h, w, k["UR"], k["NU"], k["VB"], k["BU"], k["BH"], k["BW"], k["BVP"], device,
                          accumulate_dtype(dtype))
    return (rows, cols, *meta["limits"]), k


def _grid(b: int, consts: dict) -> tuple[int]:
    return (triton.cdiv(b, consts["SAMPLES"]),)


def ratio(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool,
          samples: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Fused power-2 band ratio (contract of :func:`.triton_ratio.ratio`; ``weight`` in the accumulation dtype)."""
    x = _planes(x)
    b, c = x.shape[:2]
    acc = accumulate_dtype(x.dtype)
    value = torch.empty((b,), device=x.device, dtype=acc)
    stats = torch.empty((b, 2), device=x.device, dtype=acc)
    (rows, cols, lo, hi), consts = plan_for(x, weight, q_lo, q_hi, samples)
    _ratio_packed_kernel[_grid(b, consts)](x, weight if weight is not None else value, value, stats, rows, cols, lo,
                                           hi, b, c, COMPLEMENT=bool(complement), **consts)
    return value, stats


def ratio_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool,
                   value: Tensor, stats: Tensor, samples: Optional[int] = None) -> Tensor:
    """Gradient of ``sum(grad * value)`` (contract of :func:`.triton_ratio.ratio_backward`; ``grad`` (B,) in the
    accumulation dtype, any stride)."""
    x = _planes(x)
    b, c = x.shape[:2]
    dx = torch.empty_like(x)
    (rows, cols, lo, hi), consts = plan_for(x, weight, q_lo, q_hi, samples)
    _ratio_bwd_packed_kernel[_grid(b, consts)](grad, grad.stride(0), x, weight if weight is not None else value, value,
                                               stats, dx, rows, cols, lo, hi, b, c, COMPLEMENT=bool(complement),
                                               **consts)
    return dx


def ratio_and_grad(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, complement: bool, scale: float,
                   samples: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Value and ``scale *`` gradient in one launch (contract of :func:`.triton_ratio.ratio_and_grad`)."""
    x = _planes(x)
    b, c = x.shape[:2]
    acc = accumulate_dtype(x.dtype)
    value = torch.empty((b,), device=x.device, dtype=acc)
    dx = torch.empty_like(x)
    syn = dx if x.dtype == acc else torch.empty(x.shape, device=x.device, dtype=acc)
    (rows, cols, lo, hi), consts = plan_for(x, weight, q_lo, q_hi, samples)
    _ratio_and_grad_packed_kernel[_grid(b, consts)](x, weight if weight is not None else value, value, syn, dx, rows,
                                                    cols, lo, hi, b, c, scale=float(scale),
                                                    COMPLEMENT=bool(complement), **consts)
    return value, dx
