"""Triton helpers shared by the spectral kernels (:mod:`.triton_spectral`) and the fused ratio (:mod:`.triton_ratio`,
:mod:`.triton_large`): per-bin maths (Hermitian weight, radial band), the matrix DFT of one zero-padded plane and its
adjoint, the ratio's per-sample pieces (power-of-two scale, band rectangle, value, backward coefficients), and the
host-side helpers (block sizes, DFT factor tables, dtype and dot-precision choices, argument checks).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

# --------------------------------------------------------------------------- device helpers
@triton.jit
def _hermitian_weight(v, W: tl.constexpr):
    """h_v: 1 at v = 0 and (even W) v = W/2, else 2 (v < W//2 + 1 assumed)."""
    return tl.where(_edge_column(v, W), 1.0, 2.0)


@triton.jit
def _edge_column(v, W: tl.constexpr):
    """True for the self-conjugate columns: v = 0 and, for even W, v = W/2."""
    if W % 2 == 0:
        edge = (v == 0) | (v == W // 2)
    else:
        edge = v == 0
    return edge


@triton.jit
def _band(u, v, q_lo, q_hi, H: tl.constexpr, W: tl.constexpr):
    """True where q(u, v) = min(u, H-u)^2 W^2 + v^2 H^2 (int64) lies in [q_lo, q_hi]."""
    u64 = u.to(tl.int64)
    v64 = v.to(tl.int64)
    uf = tl.minimum(u64, H - u64)
    q = uf * uf * (W * W) + v64 * v64 * (H * H)
    return (q >= q_lo) & (q <= q_hi)


@triton.jit
def _plane_spectrum(x, ch, sh, cw, sw, PREC: tl.constexpr):
    """Real and imaginary parts of X = (C_H - i S_H) x (C_W - i S_W) for one zero-padded plane x (BH, BW)."""
    yr = tl.dot(x, cw, input_precision=PREC)  # Re(x (C_W - i S_W))
    ys = tl.dot(x, sw, input_precision=PREC)  # -Im(x (C_W - i S_W))
    xr = tl.dot(ch, yr, input_precision=PREC) - tl.dot(sh, ys, input_precision=PREC)
    xi = -(tl.dot(ch, ys, input_precision=PREC) + tl.dot(sh, yr, input_precision=PREC))
    return xr, xi


@triton.jit
def _plane_synthesis(gr, gi, ch, sh, cwt, swt, PREC: tl.constexpr):
    """``Re(sum_uv G_uv e^{+2 pi i (u h/H + v w/W)})`` (BH, BW) from G (BH, BV), each bin counted once.

    Z = (C_H + i S_H) G over rows (C_H, S_H are symmetric), then Re(Z (C_W^T + i S_W^T)).
    """
    zr = tl.dot(ch, gr, input_precision=PREC) - tl.dot(sh, gi, input_precision=PREC)
    zi = tl.dot(ch, gi, input_precision=PREC) + tl.dot(sh, gr, input_precision=PREC)
    return tl.dot(zr, cwt, input_precision=PREC) - tl.dot(zi, swt, input_precision=PREC)


# --------------------------------------------------------------------------- fused ratio (small and large planes)
@triton.jit
def _pow2_scale(m, ACC: tl.constexpr):
    """Exact power of two s with s * m in [1, 4) for finite m > 0 (2^127, or 2^1023 in fp64, for subnormal m);
    1 for m = 0; 0 for m = Inf/NaN (so the sample's sums become NaN and it is reported non-finite)."""
    if ACC == tl.float64:
        e = (m.to(tl.int64, bitcast=True) >> 52) & 0x7FF
        kb = tl.maximum(2046 - e, 1)
        s = tl.where(e == 0x7FF, 0.0, (kb << 52).to(tl.float64, bitcast=True))
    else:
        e = (m.to(tl.int32, bitcast=True) >> 23) & 0xFF
        kb = tl.maximum(254 - e, 1)
        s = tl.where(e == 0xFF, 0.0, (kb << 23).to(tl.float32, bitcast=True))
    return tl.where(m == 0, 1.0, s)


@triton.jit
def _rect_rows(BU: tl.constexpr, UR: tl.constexpr, NU: tl.constexpr, H: tl.constexpr):
    """Row frequencies u_i (BU,) of the transformed rows: 0..UR, then H-1 down to H-UR; valid for i < NU."""
    i = tl.arange(0, BU)
    return tl.where(i <= UR, i, H - (i - UR)), i < NU


@triton.jit
def _rect_coef(w_ptr, q_lo, q_hi, H: tl.constexpr, W: tl.constexpr, BU: tl.constexpr, BV: tl.constexpr,
               UR: tl.constexpr, NU: tl.constexpr, VB: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """(BU, BV) h_v * m(u_i, v) over the transformed rectangle, zero on the padding."""
    u, row_ok = _rect_rows(BU, UR, NU, H)
    v = tl.arange(0, BV)[None, :]
    return _bin_coef(w_ptr, u[:, None], v, row_ok[:, None] & (v < VB), q_lo, q_hi, H, W, HAS_WEIGHT, ACC)


@triton.jit
def _bin_coef(w_ptr, u, v, valid, q_lo, q_hi, H: tl.constexpr, W: tl.constexpr, HAS_WEIGHT: tl.constexpr,
              ACC: tl.constexpr):
    """h_v * m(u, v) at the bins (u, v) (broadcast together), zero where not ``valid``."""
    if HAS_WEIGHT:
        m = tl.load(w_ptr + u * (W // 2 + 1) + v, mask=valid, other=0.0).to(ACC)
    else:
        m = tl.where(valid & _band(u, v, q_lo, q_hi, H, W), 1.0, 0.0).to(ACC)
    return tl.where(valid, m * _hermitian_weight(v, W).to(ACC), 0.0)


@triton.jit
def _sample_value(e_part, e_all, BAND_CMP: tl.constexpr, COMPLEMENT: tl.constexpr):
    """value of a sample whose band energy is ``e_part`` (or ``e_all - e_part`` with BAND_CMP): rho or 1 - rho,
    each formed without cancellation; 0 for an all-zero sample, NaN if the sample is not finite."""
    zero = e_all == 0
    frac = tl.where(zero, 0.0, e_part / tl.where(zero, 1.0, e_all))
    if BAND_CMP != COMPLEMENT:
        value = tl.where(zero, 0.0, 1.0 - frac)
    else:
        value = frac
    finite = e_all < float("inf")  # False for +Inf and NaN
    return tl.where(finite, value, float("nan"))


@triton.jit
def _grad_coefs(g, value, e_all, COMPLEMENT: tl.constexpr):
    """(k_b, rho_b, 1 - rho_b) of a sample's gradient for upstream g: k_b = +-2 g / E_all(s_b x_b), 0 if E_all = 0.
    The caller multiplies the gradient by s_b last: for a subnormal sample s_b = 2^127 (2^1023 in fp64), and
    2 s_b overflows."""
    if COMPLEMENT:
        rho = 1.0 - value
        rest = value
        k = -2.0 * g
    else:
        rho = value
        rest = 1.0 - value
        k = 2.0 * g
    k = tl.where(e_all == 0, 0.0, k / tl.where(e_all == 0, 1.0, e_all))  # zero gradient for an all-zero sample
    return k, rho, rest


@triton.jit
def _ratio_grad_scalars(grad_ptr, grad_stride, value_ptr, stats_ptr, b, COMPLEMENT: tl.constexpr, ACC: tl.constexpr):
    """(s_b, k_b, rho_b, 1 - rho_b) of sample b for the backward, from grad, the forward's value and stats
    (see :func:`_grad_coefs`)."""
    s = tl.load(stats_ptr + 2 * b)
    e_all = tl.load(stats_ptr + 2 * b + 1)
    k, rho, rest = _grad_coefs(tl.load(grad_ptr + b * grad_stride).to(ACC), tl.load(value_ptr + b), e_all, COMPLEMENT)
    return s, k, rho, rest


# --------------------------------------------------------------------------- host helpers
def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forced_path(path: str) -> str:
    """The transform path a call asks for: ``path``, or for ``"auto"`` the environment's ``JAFR_TRITON_PATH``
    when it is set."""
    return os.environ.get("JAFR_TRITON_PATH", path) if path == "auto" else path


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype, default: str) -> str:
    """``tl.dot`` input precision for products in ``dtype``: always IEEE for fp64; for fp32 the environment's
    ``JAFR_TRITON_DOT`` (``ieee``, ``tf32x3``, ``bf16x3`` or ``tf32``) if set, else the kernel's ``default``.
    (``bf16x3``, three bf16 products, needs a Triton that offers it on the target; its error:
    ``scripts/large_plane_precision.py``.)"""
    if dtype == torch.float64:
        return "ieee"
    choice = os.environ.get("JAFR_TRITON_DOT") or default
    if choice not in ("ieee", "tf32x3", "bf16x3", "tf32"):
        raise ValueError(f"JAFR_TRITON_DOT must be 'ieee', 'tf32x3', 'bf16x3' or 'tf32', got {choice!r}")
    return choice


def _block(n: int) -> int:
    """Power-of-two block >= n and >= 16 (the smallest tl.dot operand side)."""
    return max(16, triton.next_power_of_2(n))


@functools.lru_cache(maxsize=64)
def _dft_matrices(n: int, cols: int, rows_block: int, cols_block: int, device: torch.device, dtype: torch.dtype):
    """cos/sin(2 pi (j k mod n) / n) for j < n, k < cols, zero-padded to (rows_block, cols_block).

    Built in float64 (the integer product is reduced mod n first, so large angles lose nothing), then cast.
    Row matrices: (n, n); column matrices: (W, W//2+1). Cached per (size, device, dtype).
    """
    j = torch.arange(n, dtype=torch.int64)[:, None]
    k = torch.arange(cols, dtype=torch.int64)[None, :]
    angle = (2.0 * math.pi / n) * ((j * k) % n).to(torch.float64)
    cos = torch.zeros(rows_block, cols_block, dtype=torch.float64)
    sin = torch.zeros(rows_block, cols_block, dtype=torch.float64)
    cos[:n, :cols] = torch.cos(angle)
    sin[:n, :cols] = torch.sin(angle)
    return cos.to(device=device, dtype=dtype).contiguous(), sin.to(device=device, dtype=dtype).contiguous()


@functools.lru_cache(maxsize=128)
def _row_factors(h: int, ur: int, nu: int, bu: int, bh: int, device: torch.device, dtype: torch.dtype):
    """cos/sin(2 pi u_i t / H) (BU, BH) for the transformed rows u_i (see ``_rect_rows``), zero-padded."""
    i = torch.arange(nu, dtype=torch.int64)
    u = torch.where(i <= ur, i, h - (i - ur))
    t = torch.arange(h, dtype=torch.int64)
    angle = (2.0 * math.pi / h) * ((u[:, None] * t[None, :]) % h).to(torch.float64)
    cos = torch.zeros(bu, bh, dtype=torch.float64)
    sin = torch.zeros(bu, bh, dtype=torch.float64)
    cos[:nu, :h] = torch.cos(angle)
    sin[:nu, :h] = torch.sin(angle)
    return cos.to(device=device, dtype=dtype).contiguous(), sin.to(device=device, dtype=dtype).contiguous()


def _planes(x: Tensor, name: str = "x") -> Tensor:
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")
    return x.contiguous()


def _weight(weight: Optional[Tensor], x: Tensor, acc: torch.dtype) -> Optional[Tensor]:
    if weight is None:
        return None
    h, w = x.shape[-2:]
    if tuple(weight.shape) != (h, w // 2 + 1):
        raise ValueError(f"weight must have shape (H, W//2+1) = {(h, w // 2 + 1)}, got {tuple(weight.shape)}")
    return weight.to(device=x.device, dtype=acc).contiguous()
