"""Triton backend: fused spectral-energy and mean-magnitude kernels, forward and backward.

Implements the backend interface of :mod:`jafr_kernels.backends` (``energy``, ``energy_backward``,
``mean_magnitude``, ``mean_magnitude_backward``); the formulas are those of :mod:`jafr_kernels.reference`
(X = rfft2(x) unnormalised, Hermitian weight ``h_v``, integer squared radius
``q(u, v) = min(u, H-u)^2 W^2 + v^2 H^2``).

Two paths, chosen per plane size (:func:`plane_path`):

* ``"dft"`` (chosen for H, W <= 32: MNIST 28², CIFAR 32², odd sizes; available up to 64): one kernel per block of
  (b, c) planes computes each plane's half spectrum as four small real matrix products with ``tl.dot``,
  ``X = (C_H - i S_H) x (C_W - i S_W)``, where C/S are cos/sin DFT matrices (rows: H x H; columns: W x (W//2+1)),
  zero-padded to power-of-two blocks and cached per (size, device, dtype). Masks and Hermitian weights are
  generated from indices in registers. The forward reads each plane once and writes one number per plane;
  the backward recomputes the spectrum and writes dx once. No (B, C, H, W//2+1) tensor is allocated.
* ``"fft"`` (larger planes): ``torch.fft.rfft2`` (cuFFT) followed by one fused Triton kernel over the
  spectrum (``view_as_real``); the backward builds the gradient spectrum in one kernel and inverts it with
  ``torch.fft.irfft2``.

Why the DFT path stops at 32 by default: IEEE fp32 ``tl.dot`` lowers to FMA loops that keep a whole K = 64
operand slice in registers. Compiled for sm_90 (ptxas; ``scripts/triton_compile_check.py``), the 64 x 64
kernels spill 18-22 KB of stack per thread and take minutes to compile, while the 32 x 32 forward kernels
fit in <= 255 registers without spills and the backward ones (8 warps) spill under 100 B. So planes above
32 go to the FFT path unless ``path="dft"`` is forced; forced 64-wide fp32 blocks use the 3-pass TF32 split
(``"tf32x3"``, tensor cores, fp32-level accuracy; still 0.3-1.7 KB of spills) instead of IEEE FMA, and
forced 64-wide fp64 blocks stay IEEE (slow to compile: for tests, not for speed).

Precision: x is upcast after the load (fp16/bf16 -> fp32; fp64 stays fp64) and everything accumulates in
fp32 (fp64 for fp64 input). ``tl.dot`` runs in IEEE fp32 (``input_precision="ieee"``; 3-pass TF32 for 64-wide
blocks) unless the environment sets ``JAFR_TRITON_DOT`` (``ieee``, ``tf32x3`` or ``tf32``, for every Triton
kernel of the package). With ``tf32`` the fp32 products use TF32 tensor cores, whose operands keep 10 mantissa
bits (unit roundoff u = 2^-11 ~ 4.9e-4). Each spectral coefficient goes through two chained products, each
operand rounded once, so |dX_uv| <~ 4u * sum|x| (~2e-3 times the largest possible coefficient); energies
(p = 2) then carry relative errors up to about 8u ~ 4e-3, typically ~1e-3, instead of ~1e-6 in IEEE mode.
TF32 never applies to fp64.

Everything is interpreter-safe: tensors live wherever the input lives, and under ``TRITON_INTERPRET=1``
the kernels run on CPU tensors (autotuning is bypassed there; bf16 is not supported by the interpreter).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from jafr_kernels.kernels.triton_common import (
    _band,
    _block,
    _dft_matrices,
    _edge_column,
    _hermitian_weight,
    _interpreted,
    _plane_spectrum,
    _plane_synthesis,
    _planes,
    _tl_acc,
    _weight,
    dot_precision,
    forced_path,
)
from jafr_kernels.reference import accumulate_dtype

__all__ = [
    "MAX_DFT_SIZE",
    "plane_path",
    "energy",
    "energy_backward",
    "mean_magnitude",
    "mean_magnitude_backward",
]

# Largest plane side the fused matrix-DFT path can serve (its blocks are at most 64 x 64 in registers) and
# the largest it is chosen for automatically (see the module docstring for why 32).
MAX_DFT_SIZE = 64
AUTO_DFT_SIZE = 32


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _load_dft_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BH: tl.constexpr, BW: tl.constexpr, BV: tl.constexpr):
    rh = tl.arange(0, BH)
    rw = tl.arange(0, BW)
    rv = tl.arange(0, BV)
    ch = tl.load(ch_ptr + rh[:, None] * BH + rh[None, :])
    sh = tl.load(sh_ptr + rh[:, None] * BH + rh[None, :])
    cw = tl.load(cw_ptr + rw[:, None] * BV + rv[None, :])
    sw = tl.load(sw_ptr + rw[:, None] * BV + rv[None, :])
    return ch, sh, cw, sw


@triton.jit
def _load_dft_matrices_t(cw_ptr, sw_ptr, BW: tl.constexpr, BV: tl.constexpr):
    """The column DFT matrices transposed, (BV, BW), for the synthesis."""
    rw = tl.arange(0, BW)
    rv = tl.arange(0, BV)
    cwt = tl.load(cw_ptr + rw[None, :] * BV + rv[:, None])
    swt = tl.load(sw_ptr + rw[None, :] * BV + rv[:, None])
    return cwt, swt


@triton.jit
def _mask_coef(w_ptr, q_lo, q_hi, H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
               HAS_WEIGHT: tl.constexpr, HERMITIAN: tl.constexpr, ACC: tl.constexpr):
    """(BH, BV) mask m_uv (times h_v if HERMITIAN), zero on the padding."""
    V: tl.constexpr = W // 2 + 1
    u = tl.arange(0, BH)[:, None]
    v = tl.arange(0, BV)[None, :]
    valid = (u < H) & (v < V)
    if HAS_WEIGHT:
        m = tl.load(w_ptr + u * V + v, mask=valid, other=0.0).to(ACC)
    else:
        m = tl.where(valid & _band(u, v, q_lo, q_hi, H, W), 1.0, 0.0).to(ACC)
    if HERMITIAN:
        m = m * _hermitian_weight(v, W).to(ACC)
    return tl.where(valid, m, 0.0)


@triton.jit
def _load_plane(x_ptr, plane, n_planes, H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                ACC: tl.constexpr):
    rh = tl.arange(0, BH)[:, None]
    rw = tl.arange(0, BW)[None, :]
    inside = (rh < H) & (rw < W) & (plane < n_planes)
    x = tl.load(x_ptr + plane.to(tl.int64) * (H * W) + rh * W + rw, mask=inside, other=0.0)
    return x.to(ACC)  # fp16/bf16 upcast after the load


# --------------------------------------------------------------------------- fused DFT path (small planes)
@triton.jit(do_not_specialize=["q_lo", "q_hi"])
def _energy_dft_kernel(
    x_ptr, w_ptr, out_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, n_planes, q_lo, q_hi,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BV: tl.constexpr,
    POWER: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, PLANES: tl.constexpr,
):
    """E[p] = sum_uv h_v m_uv |X_uv|^POWER for PLANES consecutive planes p of x (n_planes, H, W).

    Memory: reads each plane of x once, the four padded DFT matrices once per program (L2-resident) and the
    (H, W//2+1) weight map if given; writes one value per plane to out (n_planes,).
    """
    pid = tl.program_id(0)
    ch, sh, cw, sw = _load_dft_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BH, BW, BV)
    coef = _mask_coef(w_ptr, q_lo, q_hi, H, W, BH, BV, HAS_WEIGHT, True, ACC)
    for i in range(PLANES):
        plane = pid * PLANES + i
        x = _load_plane(x_ptr, plane, n_planes, H, W, BH, BW, ACC)
        xr, xi = _plane_spectrum(x, ch, sh, cw, sw, PREC)
        p2 = xr * xr + xi * xi
        if POWER == 2:
            term = p2
        else:
            term = tl.sqrt(p2)
        e = tl.sum(tl.sum(coef * term, axis=1), axis=0)
        tl.store(out_ptr + plane, e, mask=plane < n_planes)


@triton.jit(do_not_specialize=["q_lo", "q_hi"])
def _energy_bwd_dft_kernel(
    grad_ptr, x_ptr, w_ptr, dx_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, n_planes, q_lo, q_hi,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BV: tl.constexpr,
    POWER: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, PLANES: tl.constexpr,
):
    """dx[p] = grad[p] * Re(sum_uv h_v m_uv c_uv X_uv e^{+i...}) with c = 2 (POWER 2) or 1/|X| (POWER 1, 0 at X = 0).

    Memory: reads each plane of x once, grad (n_planes,), the DFT matrices and the weight map; writes dx
    (n_planes, H, W) once, in x's dtype. The spectrum lives only in registers.
    """
    pid = tl.program_id(0)
    ch, sh, cw, sw = _load_dft_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BH, BW, BV)
    cwt, swt = _load_dft_matrices_t(cw_ptr, sw_ptr, BW, BV)
    coef = _mask_coef(w_ptr, q_lo, q_hi, H, W, BH, BV, HAS_WEIGHT, True, ACC)
    rh = tl.arange(0, BH)[:, None]
    rw = tl.arange(0, BW)[None, :]
    for i in range(PLANES):
        plane = pid * PLANES + i
        x = _load_plane(x_ptr, plane, n_planes, H, W, BH, BW, ACC)
        g = tl.load(grad_ptr + plane, mask=plane < n_planes, other=0.0).to(ACC)
        xr, xi = _plane_spectrum(x, ch, sh, cw, sw, PREC)
        if POWER == 2:
            scale = coef * (2.0 * g)
        else:
            mag = tl.sqrt(xr * xr + xi * xi)
            scale = tl.where(mag > 0, coef * g / tl.where(mag > 0, mag, 1.0), 0.0)
        dx = _plane_synthesis(xr * scale, xi * scale, ch, sh, cwt, swt, PREC)
        inside = (rh < H) & (rw < W) & (plane < n_planes)
        ptrs = dx_ptr + plane.to(tl.int64) * (H * W) + rh * W + rw
        tl.store(ptrs, dx.to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _magnitude_dft_kernel(
    x_ptr, partial_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, n_planes,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):
    """partial[pid] = sum of |X| over planes pid, pid + G, pid + 2G, ... (G programs).

    Memory: reads each plane of x once and the DFT matrices; writes one (H, W//2+1) partial sum per
    program (G of them), which the launcher reduces. Deterministic (no atomics).
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    V: tl.constexpr = W // 2 + 1
    ch, sh, cw, sw = _load_dft_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BH, BW, BV)
    acc = tl.zeros((BH, BV), dtype=ACC)
    for start in range(0, n_planes, n_prog):
        plane = start + pid  # planes past the end load as zeros and add nothing
        x = _load_plane(x_ptr, plane, n_planes, H, W, BH, BW, ACC)
        xr, xi = _plane_spectrum(x, ch, sh, cw, sw, PREC)
        acc += tl.sqrt(xr * xr + xi * xi)
    u = tl.arange(0, BH)[:, None]
    v = tl.arange(0, BV)[None, :]
    tl.store(partial_ptr + pid.to(tl.int64) * (H * V) + u * V + v, acc, mask=(u < H) & (v < V))


@triton.jit
def _magnitude_bwd_dft_kernel(
    grad_ptr, x_ptr, dx_ptr, ch_ptr, sh_ptr, cw_ptr, sw_ptr, n_planes,
    H: tl.constexpr, W: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, PLANES: tl.constexpr,
):
    """dx[p] = Re(sum_uv grad_uv X_uv / |X_uv| e^{+i...}) (0 where X = 0), no Hermitian weight.

    grad arrives already divided by B*C (the mean's count).

    Memory: reads x once, grad (H, W//2+1) once per program and the DFT matrices; writes dx once.
    """
    pid = tl.program_id(0)
    V: tl.constexpr = W // 2 + 1
    ch, sh, cw, sw = _load_dft_matrices(ch_ptr, sh_ptr, cw_ptr, sw_ptr, BH, BW, BV)
    cwt, swt = _load_dft_matrices_t(cw_ptr, sw_ptr, BW, BV)
    u = tl.arange(0, BH)[:, None]
    v = tl.arange(0, BV)[None, :]
    gmap = tl.load(grad_ptr + u * V + v, mask=(u < H) & (v < V), other=0.0).to(ACC)
    rh = tl.arange(0, BH)[:, None]
    rw = tl.arange(0, BW)[None, :]
    for i in range(PLANES):
        plane = pid * PLANES + i
        x = _load_plane(x_ptr, plane, n_planes, H, W, BH, BW, ACC)
        xr, xi = _plane_spectrum(x, ch, sh, cw, sw, PREC)
        mag = tl.sqrt(xr * xr + xi * xi)
        scale = tl.where(mag > 0, gmap / tl.where(mag > 0, mag, 1.0), 0.0)
        dx = _plane_synthesis(xr * scale, xi * scale, ch, sh, cwt, swt, PREC)
        inside = (rh < H) & (rw < W) & (plane < n_planes)
        ptrs = dx_ptr + plane.to(tl.int64) * (H * W) + rh * W + rw
        tl.store(ptrs, dx.to(dx_ptr.dtype.element_ty), mask=inside)


# --------------------------------------------------------------------------- FFT path (large planes)
@triton.jit(do_not_specialize=["q_lo", "q_hi"])
def _energy_spectrum_kernel(
    spec_ptr, w_ptr, out_ptr, q_lo, q_hi,
    H: tl.constexpr, W: tl.constexpr, POWER: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """E[p] = sum_uv h_v m_uv |X_uv|^POWER from a spectrum (n_planes, H, W//2+1, 2) (real view of rfft2).

    One program per plane. Memory: reads the spectrum once (and the weight map); writes (n_planes,).
    """
    plane = tl.program_id(0).to(tl.int64)
    V: tl.constexpr = W // 2 + 1
    acc = tl.zeros((BLOCK,), dtype=ACC)
    base = spec_ptr + plane * (H * V * 2)
    for start in range(0, H * V, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        valid = idx < H * V
        u = idx // V
        v = idx % V
        re = tl.load(base + 2 * idx, mask=valid, other=0.0).to(ACC)
        im = tl.load(base + 2 * idx + 1, mask=valid, other=0.0).to(ACC)
        if HAS_WEIGHT:
            m = tl.load(w_ptr + idx, mask=valid, other=0.0).to(ACC)
        else:
            m = tl.where(_band(u, v, q_lo, q_hi, H, W), 1.0, 0.0).to(ACC)
        p2 = re * re + im * im
        if POWER == 2:
            term = p2
        else:
            term = tl.sqrt(p2)
        acc += tl.where(valid, m * _hermitian_weight(v, W).to(ACC) * term, 0.0)
    tl.store(out_ptr + plane, tl.sum(acc, axis=0))


@triton.jit
def _magnitude_spectrum_kernel(spec_ptr, out_ptr, n_planes, HV: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[bin] = sum_p |X[p, bin]| over a block of bins per program (spectrum as in the energy kernel).

    Memory: reads the spectrum once; writes the (H, W//2+1) sum once (the launcher divides). Deterministic.
    """
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < HV
    acc = tl.zeros((BLOCK,), dtype=ACC)
    base = spec_ptr
    for _ in range(0, n_planes):
        re = tl.load(base + 2 * idx, mask=valid, other=0.0).to(ACC)
        im = tl.load(base + 2 * idx + 1, mask=valid, other=0.0).to(ACC)
        acc += tl.sqrt(re * re + im * im)
        base += HV * 2  # pointer arithmetic: no int32 overflow in plane * HV
    tl.store(out_ptr + idx, acc, mask=valid)


@triton.jit
def _grad_coef(re, im, u, v, plane, grad_ptr, w_ptr, q_lo, q_hi, valid,
               H: tl.constexpr, W: tl.constexpr, IS_MAG: tl.constexpr, POWER: tl.constexpr,
               HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """Real factor c with G = c X for bin (u, v): the gradient spectrum before the c2r inverse.

    The c2r inverse counts interior columns twice (Hermitian extension), which supplies h_v; so the energy
    coefficient carries no h_v and the mean-magnitude one divides by h_v (its sum has none).
    """
    V: tl.constexpr = W // 2 + 1
    mag = tl.sqrt(re * re + im * im)
    inv_mag = tl.where(mag > 0, 1.0 / tl.where(mag > 0, mag, 1.0), 0.0)
    if IS_MAG:
        g = tl.load(grad_ptr + u * V + v, mask=valid, other=0.0).to(ACC)
        c = g * inv_mag / _hermitian_weight(v, W).to(ACC)
    else:
        g = tl.load(grad_ptr + plane).to(ACC)
        if HAS_WEIGHT:
            m = tl.load(w_ptr + u * V + v, mask=valid, other=0.0).to(ACC)
        else:
            m = tl.where(_band(u, v, q_lo, q_hi, H, W), 1.0, 0.0).to(ACC)
        if POWER == 2:
            c = 2.0 * g * m
        else:
            c = g * m * inv_mag
    return tl.where(valid, c, 0.0)


@triton.jit(do_not_specialize=["q_lo", "q_hi"])
def _grad_spectrum_kernel(
    spec_ptr, grad_ptr, w_ptr, out_ptr, q_lo, q_hi,
    H: tl.constexpr, W: tl.constexpr, IS_MAG: tl.constexpr, POWER: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """G = c X for a block of bins of one plane (grid: planes x bin blocks), ready for irfft2.

    Columns v = 0 and (even W) v = W/2 are symmetrised in u, G_u <- (G_u + conj(G_{-u})) / 2, so the c2r
    inverse (which assumes them Hermitian) returns exactly Re(sum_uv h_v G_uv e^{+i...}): the real part of
    that sum is unchanged by the symmetrisation. Needed for non-symmetric weight maps and for the
    mean-magnitude gradient map. Memory: reads the spectrum (edge bins twice) and writes G once.
    """
    plane = tl.program_id(0).to(tl.int64)
    V: tl.constexpr = W // 2 + 1
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < H * V
    u = idx // V
    v = idx % V
    base = spec_ptr + plane * (H * V * 2)
    re = tl.load(base + 2 * idx, mask=valid, other=0.0).to(ACC)
    im = tl.load(base + 2 * idx + 1, mask=valid, other=0.0).to(ACC)
    c = _grad_coef(re, im, u, v, plane, grad_ptr, w_ptr, q_lo, q_hi, valid, H, W, IS_MAG, POWER,
                   HAS_WEIGHT, ACC)
    gr = c * re
    gi = c * im
    edge = valid & _edge_column(v, W)
    um = (H - u) % H
    midx = um * V + v
    re_m = tl.load(base + 2 * midx, mask=edge, other=0.0).to(ACC)
    im_m = tl.load(base + 2 * midx + 1, mask=edge, other=0.0).to(ACC)
    c_m = _grad_coef(re_m, im_m, um, v, plane, grad_ptr, w_ptr, q_lo, q_hi, edge, H, W, IS_MAG,
                     POWER, HAS_WEIGHT, ACC)
    gr = tl.where(edge, 0.5 * (gr + c_m * re_m), gr)
    gi = tl.where(edge, 0.5 * (gi - c_m * im_m), gi)
    obase = out_ptr + plane * (H * V * 2)
    tl.store(obase + 2 * idx, gr, mask=valid)
    tl.store(obase + 2 * idx + 1, gi, mask=valid)


# --------------------------------------------------------------------------- autotuning
_DFT_CONFIGS = [
    triton.Config({"PLANES": p}, num_warps=w) for p, w in ((1, 4), (1, 8), (2, 8), (4, 8))
]
# The backward kernels hold two more (BV, BW) matrices: at 4 warps their 32-wide IEEE variants spill
# 5-7 KB per thread (scripts/triton_compile_check.py, sm_90), at 8 warps under 100 B.
_DFT_BWD_CONFIGS = [triton.Config({"PLANES": p}, num_warps=8) for p in (1, 2, 4)]
_SPECTRUM_CONFIGS = [
    triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((512, 4), (1024, 4), (2048, 8))
]
_energy_dft_tuned = triton.autotune(_DFT_CONFIGS, key=["H", "W", "POWER", "HAS_WEIGHT", "ACC"])(_energy_dft_kernel)
_energy_bwd_dft_tuned = triton.autotune(_DFT_BWD_CONFIGS, key=["H", "W", "POWER", "HAS_WEIGHT", "ACC"])(
    _energy_bwd_dft_kernel
)
_magnitude_bwd_dft_tuned = triton.autotune(_DFT_BWD_CONFIGS, key=["H", "W", "ACC"])(_magnitude_bwd_dft_kernel)
_energy_spectrum_tuned = triton.autotune(_SPECTRUM_CONFIGS, key=["H", "W", "POWER", "HAS_WEIGHT", "ACC"])(
    _energy_spectrum_kernel
)
_grad_spectrum_tuned = triton.autotune(_SPECTRUM_CONFIGS, key=["H", "W", "IS_MAG", "POWER", "HAS_WEIGHT", "ACC"])(
    _grad_spectrum_kernel
)

# Fixed meta-parameters under the interpreter (autotuning there would only multiply the run time).
_INTERPRETER_META = {"PLANES": 2, "BLOCK": 1024}


def _launch(tuned, raw, grid, *args, meta_names=(), **kwargs):
    """Launch the autotuned kernel, or under the interpreter the raw one with fixed meta-parameters."""
    if _interpreted():
        fixed = {k: _INTERPRETER_META[k] for k in meta_names}
        g = grid(fixed) if callable(grid) else grid
        return raw[g](*args, **kwargs, **fixed)
    return tuned[grid](*args, **kwargs)


# --------------------------------------------------------------------------- host helpers
def _dft_setup(h: int, w: int, device: torch.device, dtype: torch.dtype):
    bh, bw, bv = _block(h), _block(w), _block(w // 2 + 1)
    ch, sh = _dft_matrices(h, h, bh, bh, device, dtype)
    cw, sw = _dft_matrices(w, w // 2 + 1, bw, bv, device, dtype)
    return (ch, sh, cw, sw), dict(H=h, W=w, BH=bh, BW=bw, BV=bv, PREC=dot_precision(dtype, "tf32x3" if max(bh, bw) > AUTO_DFT_SIZE else "ieee"))


def plane_path(h: int, w: int, path: str = "auto") -> str:
    """``"dft"`` (fused matrix DFT) for planes up to 32 x 32, else ``"fft"``; ``path`` (or the environment's
    ``JAFR_TRITON_PATH``) forces one (dft: <= 64)."""
    path = forced_path(path)
    if path in ("gemm", "packed"):  # the band ratio's own paths (triton_large, triton_packed); these kernels
        path = "auto"  # choose their own
    if path == "auto":
        return "dft" if max(h, w) <= AUTO_DFT_SIZE else "fft"
    if path == "dft" and max(h, w) > MAX_DFT_SIZE:
        raise ValueError(f"path='dft' serves planes up to {MAX_DFT_SIZE}x{MAX_DFT_SIZE}, got {h}x{w}")
    if path not in ("dft", "fft"):
        raise ValueError(f"path must be 'auto', 'dft' or 'fft', got {path!r}")
    return path


def _spectrum(x: Tensor, acc: torch.dtype) -> Tensor:
    """rfft2 of x in the accumulation dtype as a real view (n_planes, H, W//2+1, 2)."""
    h, w = x.shape[-2:]
    spec = torch.fft.rfft2(x.to(acc))
    return torch.view_as_real(spec).reshape(-1, h, w // 2 + 1, 2).contiguous()


def _synthesise(g: Tensor, shape, dtype: torch.dtype) -> Tensor:
    """Unnormalised c2r inverse of a gradient spectrum (n_planes, H, V, 2) to planes of ``shape``."""
    h, w = shape[-2:]
    gc = torch.view_as_complex(g)
    return torch.fft.irfft2(gc, s=(h, w), norm="forward").reshape(shape).to(dtype)


def gradient_spectrum(spec: Tensor, grad: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int,
                      power: Optional[int], w: int) -> Tensor:
    """The FFT path's gradient spectrum G (n_planes, H, W//2+1, 2), ready for the c2r inverse.

    ``power`` 1 or 2: energy gradient, ``grad`` (n_planes,) per plane, ``weight`` or band as in :func:`energy`;
    ``power=None``: mean-magnitude gradient, ``grad`` the (H, W//2+1) map already divided by B*C.
    Columns 0 and (even W) W/2 come out Hermitian in u (see ``_grad_spectrum_kernel``).
    """
    n, h, v, _ = spec.shape
    is_mag = power is None
    has_w = weight is not None
    g = grad.contiguous()
    out = torch.empty_like(spec)
    grid = lambda meta: (n, triton.cdiv(h * v, meta["BLOCK"]))  # noqa: E731
    _launch(_grad_spectrum_tuned, _grad_spectrum_kernel, grid, spec, g, weight if has_w else g, out, int(q_lo),
            int(q_hi), meta_names=("BLOCK",), H=h, W=w, IS_MAG=is_mag, POWER=1 if is_mag else int(power),
            HAS_WEIGHT=has_w, ACC=_tl_acc(spec.dtype))
    return out


# --------------------------------------------------------------------------- backend interface
def energy(x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, power: int, *, path: str = "auto") -> Tensor:
    """Masked spectral energies ``E[b, c] = sum_uv h_v m_uv |X_uv|^power``.

    Args:
        x: (B, C, H, W) float16/bfloat16/float32/float64.
        weight: (H, W//2+1) mask values, or None for the radial band ``q_lo <= q(u, v) <= q_hi`` (int64
            limits; ``q_hi = 2**62`` means no upper limit).
        power: 1 or 2.
        path: ``"auto"``, ``"dft"`` (planes up to 64x64) or ``"fft"``; for tests and benchmarks.

    Returns:
        (B, C) float32 (float64 for float64 input).
    """
    x = _planes(x)
    b, c, h, w = x.shape
    acc = accumulate_dtype(x.dtype)
    out = torch.empty((b, c), device=x.device, dtype=acc)
    n = b * c
    if n == 0:
        return out
    wt = _weight(weight, x, acc)
    has_w = wt is not None
    w_arg = wt if has_w else out  # never read when HAS_WEIGHT is False
    common = dict(POWER=int(power), HAS_WEIGHT=has_w, ACC=_tl_acc(x.dtype))
    if plane_path(h, w, path) == "dft":
        mats, sizes = _dft_setup(h, w, x.device, acc)
        grid = lambda meta: (triton.cdiv(n, meta["PLANES"]),)  # noqa: E731
        _launch(_energy_dft_tuned, _energy_dft_kernel, grid, x, w_arg, out, *mats, n, int(q_lo), int(q_hi),
                meta_names=("PLANES",), **sizes, **common)
    else:
        spec = _spectrum(x, acc)
        _launch(_energy_spectrum_tuned, _energy_spectrum_kernel, (n,), spec, w_arg, out, int(q_lo), int(q_hi),
                meta_names=("BLOCK",), H=h, W=w, **common)
    return out


def energy_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], q_lo: int, q_hi: int, power: int, *,
                    path: str = "auto") -> Tensor:
    """Gradient of ``sum(grad * energy(x, ...))`` with respect to x.

    Args:
        grad: (B, C) upstream gradient. x, weight, q_lo, q_hi, power, path: as in :func:`energy`.

    Returns:
        dx (B, C, H, W), dtype of x: ``grad * Re(sum_uv h_v m_uv c_uv X_uv e^{+2 pi i (u h/H + v w/W)})`` with
        ``c = 2`` (power 2) or ``1/|X|`` (power 1; 0 where X = 0).
    """
    x = _planes(x)
    b, c, h, w = x.shape
    acc = accumulate_dtype(x.dtype)
    n = b * c
    if grad.shape != (b, c):
        raise ValueError(f"grad must have shape (B, C) = {(b, c)}, got {tuple(grad.shape)}")
    if n == 0:
        return torch.empty_like(x)
    g = grad.to(device=x.device, dtype=acc).contiguous()
    wt = _weight(weight, x, acc)
    has_w = wt is not None
    w_arg = wt if has_w else g
    common = dict(POWER=int(power), HAS_WEIGHT=has_w, ACC=_tl_acc(x.dtype))
    if plane_path(h, w, path) == "dft":
        dx = torch.empty_like(x)
        mats, sizes = _dft_setup(h, w, x.device, acc)
        grid = lambda meta: (triton.cdiv(n, meta["PLANES"]),)  # noqa: E731
        _launch(_energy_bwd_dft_tuned, _energy_bwd_dft_kernel, grid, g, x, w_arg, dx, *mats, n, int(q_lo),
                int(q_hi), meta_names=("PLANES",), **sizes, **common)
        return dx
    gspec = gradient_spectrum(_spectrum(x, acc), g, wt, q_lo, q_hi, power, w)
    return _synthesise(gspec, x.shape, x.dtype)


def _magnitude_programs(n: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1, min(n, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(n, 4))


def mean_magnitude(x: Tensor, *, path: str = "auto") -> Tensor:
    """Mean over batch and channels of ``|rfft2(x)|``.

    Args:
        x: (B, C, H, W) float16/bfloat16/float32/float64.
        path: see :func:`energy`.

    Returns:
        (H, W//2+1) float32 (float64 for float64 input); no Hermitian weight.
    """
    x = _planes(x)
    b, c, h, w = x.shape
    acc = accumulate_dtype(x.dtype)
    n = b * c
    v = w // 2 + 1
    if plane_path(h, w, path) == "dft":
        mats, sizes = _dft_setup(h, w, x.device, acc)
        n_prog = _magnitude_programs(n, x.device)
        partial = torch.empty((n_prog, h, v), device=x.device, dtype=acc)
        _magnitude_dft_kernel[(n_prog,)](x, partial, *mats, n, **sizes, ACC=_tl_acc(x.dtype), num_warps=4)
        return partial.sum(dim=0) / n
    spec = _spectrum(x, acc)
    out = torch.empty((h, v), device=x.device, dtype=acc)
    block = 256
    _magnitude_spectrum_kernel[(triton.cdiv(h * v, block),)](spec, out, n, HV=h * v, ACC=_tl_acc(x.dtype), BLOCK=block)
    return out / n


def mean_magnitude_backward(grad: Tensor, x: Tensor, *, path: str = "auto") -> Tensor:
    """Gradient of ``sum(grad * mean_magnitude(x))`` with respect to x.

    Args:
        grad: (H, W//2+1) upstream gradient. x, path: as in :func:`mean_magnitude`.

    Returns:
        dx (B, C, H, W), dtype of x: ``Re(sum_uv grad_uv / (B C) * X_uv / |X_uv| e^{+i...})`` (0 where X = 0),
        each half-spectrum bin counted once.
    """
    x = _planes(x)
    b, c, h, w = x.shape
    acc = accumulate_dtype(x.dtype)
    n = b * c
    v = w // 2 + 1
    if grad.shape != (h, v):
        raise ValueError(f"grad must have shape (H, W//2+1) = {(h, v)}, got {tuple(grad.shape)}")
    if n == 0:
        return torch.empty_like(x)
    g = (grad.to(device=x.device, dtype=acc) / n).contiguous()  # the mean's 1/(B*C), in the accumulation dtype
    if plane_path(h, w, path) == "dft":
        dx = torch.empty_like(x)
        mats, sizes = _dft_setup(h, w, x.device, acc)
        grid = lambda meta: (triton.cdiv(n, meta["PLANES"]),)  # noqa: E731
        _launch(_magnitude_bwd_dft_tuned, _magnitude_bwd_dft_kernel, grid, g, x, dx, *mats, n,
                meta_names=("PLANES",), ACC=_tl_acc(x.dtype), **sizes)
        return dx
    gspec = gradient_spectrum(_spectrum(x, acc), g, None, 0, 0, None, w)
    return _synthesise(gspec, x.shape, x.dtype)
