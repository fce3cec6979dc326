"""The pure-PyTorch reference: the specification every backend is tested against.

Everything here is written for clarity, not speed, with ``torch.fft`` and ordinary autograd. It works
in any floating dtype (float64 included) and is also the backend of last resort (``backend="reference"``).

Notation (x real, shape (B, C, H, W); X = rfft2(x) over (H, W), unnormalised; N = H*W):

* Hermitian weight ``h_v`` = 1 for v = 0 and for v = W/2 when W is even, else 2, so that
  ``sum_uv h_v |X_uv|^2 = N * sum x^2`` (Parseval) and half-spectrum energies equal full-spectrum ones.
* Normalised radius of bin (u, v): ``r = sqrt((fu/0.5)^2 + (fv/0.5)^2)``, ``fu = min(u, H-u)/H``,
  ``fv = v/W``; 0 at DC, 1 at one axis' Nyquist, sqrt(2) in the corner.
* Radial bands: low ``r <= c``, high ``r > c``, band ``c1 <= r < c2``. Bins are classified exactly: the
  comparison is done on the integer ``q = min(u,H-u)^2 W^2 + v^2 H^2 = r^2 H^2 W^2 / 4`` against integer
  limits (:class:`RadialBand`), so bins that sit exactly on a cutoff land on the same side on every backend.
* Spectral energy over a mask m with exponent p: ``E = sum_uv h_v m_uv |X_uv|^p``, per (b, c).
* Low-frequency ratio per sample: ``E_low(b) / E_all(b)`` summed over channels (0 for an all-zero sample).
* Ratio penalty: ``target="low"`` -> ``1 - ratio``; ``target="high"`` -> ``ratio``; all-zero samples give 0.
* Official formulation (Chan et al., IJCAI 2022, authors' code): ``M`` = mean over batch and channels of
  ``|X|`` cropped to K x K (K = H//2 + 1), ``p = linspace(max_pow, -max_pow, K) + 1e-5``,
  ``a_i = sum_j p_j log(M_ij + eps)``, ``c_j = sum_i p_i log(M_ij + eps)``, penalty ``-logsumexp(a, c)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "RadialBand",
    "hermitian_weight",
    "radial_mask",
    "spectral_energy",
    "low_freq_ratio",
    "freq_penalty",
    "mean_magnitude",
    "official_penalty",
    "official_from_magnitude",
]

Q_MAX = 2**62  # "no upper limit" for the integer squared radius


@dataclass(frozen=True)
class RadialBand:
    """A radial frequency band in normalised radius units (0 = DC, 1 = Nyquist of one axis).

    ``RadialBand.low(c)`` is ``r <= c``, ``RadialBand.high(c)`` is ``r > c``, ``RadialBand.between(c1, c2)``
    is ``c1 <= r < c2`` and ``RadialBand.all()`` keeps every bin. Kernels generate the mask from these
    limits and the bin indices, so no mask tensor is read.
    """

    kind: str  # "low" | "high" | "between" | "all"
    lo: float = 0.0
    hi: float = math.inf

    @classmethod
    def low(cls, cutoff: float) -> "RadialBand":
        return cls("low", 0.0, float(cutoff))

    @classmethod
    def high(cls, cutoff: float) -> "RadialBand":
        return cls("high", float(cutoff), math.inf)

    @classmethod
    def between(cls, lo: float, hi: float) -> "RadialBand":
        return cls("between", float(lo), float(hi))

    @classmethod
    def all(cls) -> "RadialBand":
        return cls("all")

    def q_limits(self, h: int, w: int) -> tuple[int, int]:
        """Inclusive integer limits ``(q_lo, q_hi)`` on ``q = min(u,H-u)^2 W^2 + v^2 H^2`` for an H x W plane.

        ``r <= c`` is ``q <= c^2 H^2 W^2 / 4``; the threshold is computed in float64 on the host once.
        """
        scale = (h * h * w * w) / 4.0

        def thr(c: float) -> float:
            return c * c * scale

        if self.kind == "all":
            return 0, Q_MAX
        if self.kind == "low":
            return 0, int(math.floor(thr(self.hi)))
        if self.kind == "high":
            return int(math.floor(thr(self.lo))) + 1, Q_MAX
        if self.kind == "between":
            q_hi = Q_MAX if math.isinf(self.hi) else int(math.ceil(thr(self.hi))) - 1
            return int(math.ceil(thr(self.lo))), q_hi
        raise ValueError(f"unknown band kind {self.kind!r}")


def squared_radius_index(h: int, w: int, device=None) -> torch.Tensor:
    """Integer ``q[u, v] = min(u, H-u)^2 W^2 + v^2 H^2`` (int64, shape (H, W//2+1)); ``r^2 = 4 q / (H W)^2``."""
    u = torch.arange(h, device=device, dtype=torch.int64)
    u = torch.minimum(u, h - u)
    v = torch.arange(w // 2 + 1, device=device, dtype=torch.int64)
    return (u * u * (w * w))[:, None] + (v * v * (h * h))[None, :]


def normalised_radius(h: int, w: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """``r[u, v] = sqrt((2 fu)^2 + (2 fv)^2)`` in rfft2 layout (H, W//2+1), for plots and analyses."""
    q = squared_radius_index(h, w, device).to(torch.float64)
    return (2.0 * q.sqrt() / (h * w)).to(dtype)


def hermitian_weight(w: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Weights (W//2+1,) that make half-spectrum sums equal full-spectrum sums: 1 at DC and (even W) Nyquist, else 2."""
    hw = torch.full((w // 2 + 1,), 2.0, device=device, dtype=dtype)
    hw[0] = 1.0
    if w % 2 == 0:
        hw[-1] = 1.0
    return hw


def band_mask(band: RadialBand, h: int, w: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """0/1 mask (H, W//2+1) of the bins inside ``band``."""
    q_lo, q_hi = band.q_limits(h, w)
    q = squared_radius_index(h, w, device)
    return ((q >= q_lo) & (q <= q_hi)).to(dtype)


def radial_mask(h: int, w: int, cutoff, *, band: str = "low", device=None, dtype=torch.float32) -> torch.Tensor:
    """Radial frequency mask in rfft2 layout, shape ``(h, w // 2 + 1)``.

    Args:
        h, w: plane size (any sizes >= 2, odd included).
        cutoff: normalised radius (1 = Nyquist of one axis). A float for ``band="low"`` (``r <= cutoff``)
            and ``band="high"`` (``r > cutoff``); a pair ``(lo, hi)`` for ``band="band"`` (``lo <= r < hi``).
        band: ``"low"``, ``"high"`` or ``"band"``.

    The mask is symmetric (m(u, v) = m(-u, -v)), so masked energies are real quadratic forms of x.
    """
    return band_mask(as_band(cutoff, band), h, w, device=device, dtype=dtype)


def as_band(cutoff, band: str = "low") -> RadialBand:
    """Turn the ``(cutoff, band)`` arguments of the public API into a :class:`RadialBand`."""
    if isinstance(cutoff, RadialBand):
        return cutoff
    if band == "low":
        return RadialBand.low(float(cutoff))
    if band == "high":
        return RadialBand.high(float(cutoff))
    if band == "band":
        lo, hi = cutoff
        return RadialBand.between(float(lo), float(hi))
    raise ValueError(f"band must be 'low', 'high' or 'band', got {band!r}")


def _mask_tensor(mask, h: int, w: int, device, dtype) -> torch.Tensor:
    if isinstance(mask, RadialBand):
        return band_mask(mask, h, w, device=device, dtype=dtype)
    return mask.to(device=device, dtype=dtype)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend computes in: float64 for float64 input, else float32 (fp16/bf16 are upcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def spectral_energy(x: torch.Tensor, mask, power: int = 2) -> torch.Tensor:
    """``E[b, c] = sum_uv h_v m_uv |X_uv|^p`` with X = rfft2(x[b, c]); ``mask`` a weight map or RadialBand."""
    x = x.to(accumulate_dtype(x.dtype))
    h, w = x.shape[-2:]
    m = _mask_tensor(mask, h, w, x.device, x.dtype) * hermitian_weight(w, x.device, x.dtype)
    spec = torch.fft.rfft2(x)
    if power == 2:
        mag_p = spec.real**2 + spec.imag**2
    else:
        mag_p = spec.abs() ** power
    return (mag_p * m).sum(dim=(-2, -1))


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 (with zero gradient) where den == 0; NaN stays NaN (a non-finite input is never hidden)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def low_freq_ratio(x: torch.Tensor, mask, power: int = 2) -> torch.Tensor:
    """Per-sample share of spectral energy inside ``mask``: ``sum_c E_mask / sum_c E_all`` (B,)."""
    e_low = spectral_energy(x, mask, power).sum(dim=1)
    e_all = spectral_energy(x, RadialBand.all(), power).sum(dim=1)
    return _safe_ratio(e_low, e_all)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def freq_penalty(jac: torch.Tensor, mask, target: str = "low", power: int = 2, reduction: str = "mean") -> torch.Tensor:
    """Energy-ratio penalty: share of energy outside the low band (target low) or inside it (target high)."""
    ratio = low_freq_ratio(jac, mask, power)
    nonzero = jac.flatten(1).ne(0).any(dim=1)
    per_sample = torch.where(nonzero, 1.0 - ratio, torch.zeros_like(ratio)) if target == "low" else ratio
    return _reduce(per_sample, reduction)


def mean_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Mean over batch and channels of ``|rfft2(x)|``, shape (H, W//2+1)."""
    x = x.to(accumulate_dtype(x.dtype))
    return torch.fft.rfft2(x).abs().mean(dim=(0, 1))


def official_penalty(jac: torch.Tensor, max_pow: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """The authors' regulariser as a loss: ``-logsumexp({sum_j p_j log M~_ij}_i U {sum_i p_i log M~_ij}_j)``.

    Square planes only (the exponent ramp has K = H//2 + 1 entries along both axes). Minimising it moves
    the batch-mean magnitude spectrum towards low frequencies for ``max_pow > 0``, high for ``max_pow < 0``.
    """
    return official_from_magnitude(mean_magnitude(jac), max_pow, eps)


def official_from_magnitude(m: torch.Tensor, max_pow: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """The official penalty from a mean magnitude spectrum ``m`` (H, H//2+1) of square planes (any backend's)."""
    k = m.shape[0] // 2 + 1
    log_m = torch.log(m[:k] + eps)
    p = torch.linspace(max_pow, -max_pow, k, dtype=m.dtype, device=m.device) + 1e-5
    rows = (log_m * p[None, :]).sum(dim=1)
    cols = (log_m * p[:, None]).sum(dim=0)
    return -torch.logsumexp(torch.cat([rows, cols]), dim=0)
